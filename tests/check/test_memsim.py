"""Memory-system simulation on real routing: captured queues and the three designs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from m3c.check.images import synthetic_images
from m3c.check.memsim import (
    LayerRouting,
    capture_routing,
    expert_bytes,
    onchip_bytes,
    simulate,
    simulate_cache,
    simulate_expert_major,
)
from m3c.cli import main
from m3c.frontend.models.config import preset
from m3c.hw.configs import calls_for_config
from m3c.hw.design import Design, Precision
from m3c.hw.target import load_target
from m3c.project.compile import compile_model

ZCU104 = load_target("zcu104")


@pytest.fixture(scope="module")
def project(export_model, tmp_path_factory):
    _, path = export_model("micro-nyud", num_experts=6, top_k=2)
    return compile_model(path, out=tmp_path_factory.mktemp("memsim") / "build")


@pytest.fixture(scope="module")
def runs(project):
    manifest = json.loads((project / "project.json").read_text())
    images = synthetic_images(manifest, 3, seed=5).images
    return capture_routing(project, list(images), range(len(manifest["tasks"])))


@pytest.fixture(scope="module")
def kernel(project):
    return json.loads((project / "kernel.json").read_text())


def test_captured_routing_gives_each_token_its_top_k(runs, kernel):
    route = next(c for c in kernel["calls"] if c["op"] == "route")
    assert len(runs) == 3 * 2  # images x tasks
    for run in runs:
        assert [r.layer for r in run] == [c["layer"] for c in kernel["calls"]
                                          if c["op"] == "experts"]
        for layer in run:
            assert len(layer.token_experts) == route["tokens"]
            for chosen in layer.token_experts:
                assert len(set(chosen)) == len(chosen) == route["top_k"]
            assert sum(layer.queue_lengths) == route["tokens"] * route["top_k"]


def test_routing_depends_on_the_input(runs):
    assert len({tuple(map(tuple, run[0].token_experts)) for run in runs}) > 1


def _design(kernel) -> Design:
    return Design(ZCU104, kernel["capacities"], (8, 8), Precision())


def test_expert_major_loads_each_used_expert_once(runs, kernel):
    design = _design(kernel)
    results = simulate(kernel["calls"], design, runs)
    used = np.mean([sum(1 for n in layer.queue_lengths if n) for run in runs for layer in run])
    layers = len(runs[0])
    em, cache, naive = (results[k] for k in ("expert_major", "cache", "naive"))
    assert em["loads"] == pytest.approx(used * layers)
    assert cache["loads"] >= em["loads"] and cache["stall_cycles"] >= em["stall_cycles"]
    assert cache["ddr_bytes"] >= em["ddr_bytes"]
    assert naive["onchip_bytes"]["weights"] > em["onchip_bytes"]["weights"]
    # expert-major holds two weight panels of the array; the cache two whole experts
    assert em["onchip_bytes"]["weights"] < cache["onchip_bytes"]["weights"]
    assert cache["onchip_bytes"]["other"] == em["onchip_bytes"]["other"]
    assert cache["cycles"] >= em["cycles"]


def test_cache_holding_every_expert_loads_each_once(runs, kernel):
    call = next(c for c in kernel["calls"] if c["op"] == "experts")
    design = _design(kernel)
    for layer in runs[0]:
        used = sum(1 for n in layer.queue_lengths if n)
        assert simulate_cache(call, design, layer, slots=call["experts"]).loads == used
        assert simulate_cache(call, design, layer, slots=1).loads >= used


def test_slow_loads_stall_the_cache_more_than_expert_major(kernel):
    call = {**next(c for c in kernel["calls"] if c["op"] == "experts"), "tokens": 8}
    # Token t needs experts (t, t+1) mod 3: with two LRU slots the first token loads two,
    # every later one finds t but not t+1 (evicted by t-1's visit to t-1).
    routing = LayerRouting("moe0", call["experts"], [[t % 3, (t + 1) % 3] for t in range(8)])
    design = _design(kernel)
    cache = simulate_cache(call, design, routing)
    expert_major = simulate_expert_major(call, design, routing)
    assert cache.loads == 2 + 7 and expert_major.loads == 3
    assert cache.stall_cycles > expert_major.stall_cycles


@pytest.mark.parametrize("precision", [Precision(), Precision(16, 16, 32, 16, False)])
def test_onchip_weights_constant_in_experts_for_expert_major_linear_for_naive(precision):
    expert_major, naive = [], []
    for experts in (4, 8, 16, 32, 64):
        config = json.loads(preset("small-nyud", num_experts=experts).to_json())
        calls, capacities = calls_for_config(config)
        design = Design(ZCU104, capacities, (8, 8), precision)
        expert_major.append(onchip_bytes(design, "expert_major")["weights"])
        naive.append(onchip_bytes(design, "naive")["weights"])
    assert len(set(expert_major)) == 1
    call = next(c for c in calls if c["op"] == "experts")
    per_expert = expert_bytes(call, precision.weight)
    assert naive == [e * per_expert for e in (4, 8, 16, 32, 64)]


def test_simulate_command_writes_the_simulation(project, capsys):
    assert main(["simulate", str(project), "--images", "2"]) == 0
    printed = capsys.readouterr().out
    assert "expert_major" in printed and "cache" in printed
    simulation = json.loads((project / "report" / "simulation.json").read_text())
    assert simulation["inputs"] == 4 and len(simulation["routing"]) == 4
    report = json.loads((project / "report" / "report.json").read_text())
    assert report["routing"].startswith("real")
    assert "Memory-system simulation" in (project / "report" / "report.md").read_text()


@pytest.mark.parametrize("args", [["--images", "0"], ["--slots", "0"],
                                  ["--images", "missing.npy"]])
def test_simulate_refuses_bad_input(project, capsys, args):
    assert main(["simulate", str(project), *args]) == 2
    assert "error" in capsys.readouterr().err


def test_simulate_refuses_a_missing_project(tmp_path, capsys):
    assert main(["simulate", str(tmp_path / "nowhere")]) == 2
    assert "no such project" in capsys.readouterr().err
