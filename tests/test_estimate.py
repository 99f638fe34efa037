"""Resource and cycle models, and the design-space exploration: properties, not fixed numbers."""

from __future__ import annotations

import json
import math

import pytest

from m3c.cli import main
from m3c.codegen import INT, SIGNATURES
from m3c.compile import compile_model
from m3c.dse import TILE_CHOICES, check_budget, choose_design, parse_tiles
from m3c.estimate import (
    BRAM18_SHAPES,
    URAM_DEPTH,
    URAM_WIDTH,
    Design,
    EstimateError,
    Precision,
    bram18_blocks,
    calls_for_config,
    check_fit,
    estimate_calls,
    expert_compute_cycles,
    expert_load_cycles,
    expert_schedule,
    overflows,
    total_cycles,
    total_resources,
    unit_resources,
    uram_blocks,
)
from m3c.models.config import preset
from m3c.target import load_target

FIXED16 = Precision(data=16, weight=16, acc=32, prob=16, floating=False)
ZCU104 = load_target("zcu104")


@pytest.fixture(scope="module", params=["multi", "task"])
def micro_project(request, export_model, tmp_path_factory):
    _, path = export_model("micro-nyud", request.param)
    return compile_model(path, out=tmp_path_factory.mktemp("estimate") / "build")


def _config(name: str, **overrides) -> dict:
    return json.loads(preset(name, **overrides).to_json())


def _scalar_args(call: dict) -> dict:
    kinds = dict(SIGNATURES[call["op"]])
    return {k: v for k, v in call.items() if kinds.get(k) == INT or k == "activation"}


def test_call_list_from_config_matches_codegen(micro_project):
    kernel = json.loads((micro_project / "kernel.json").read_text())
    manifest = json.loads((micro_project / "project.json").read_text())
    calls, capacities = calls_for_config(manifest["config"])
    assert capacities == kernel["capacities"]
    assert [c["op"] for c in calls] == [c["op"] for c in kernel["calls"]]
    assert [_scalar_args(c) for c in calls] == [_scalar_args(c) for c in kernel["calls"]]


def _design(name: str, tiles, precision=FIXED16, **overrides) -> tuple[list, Design]:
    calls, capacities = calls_for_config(_config(name, **overrides))
    return calls, Design(ZCU104, capacities, tiles, precision)


def _linear_cycles(calls, design) -> int:
    return sum(e.cycles for e in estimate_calls(calls, design) if e.op == "linear")


@pytest.mark.parametrize("name", ["micro-nyud", "tiny-cityscapes", "small-nyud"])
@pytest.mark.parametrize("precision", [FIXED16, Precision()])
def test_doubling_tiles_is_faster_and_bigger(name, precision):
    for ti in (4, 8, 16):
        for to in (4, 8, 16):
            calls, base = _design(name, (ti, to), precision)
            used = total_resources(unit_resources(base))
            for bigger in ((2 * ti, to), (ti, 2 * to)):
                _, grown = _design(name, bigger, precision)
                grown_used = total_resources(unit_resources(grown))
                assert _linear_cycles(calls, grown) <= _linear_cycles(calls, base)
                for kind in ("dsp", "lut", "ff", "bram18"):
                    assert getattr(grown_used, kind) >= getattr(used, kind), (bigger, kind)
            # Doubling the output tile halves the number of passes over the tokens.
            _, wide = _design(name, (ti, 2 * to), precision)
            assert _linear_cycles(calls, wide) < _linear_cycles(calls, base)


def test_fixed_point_is_cheaper_and_faster_than_float():
    calls, fixed = _design("tiny-cityscapes", (8, 8), FIXED16)
    _, floating = _design("tiny-cityscapes", (8, 8), Precision())
    assert total_resources(unit_resources(fixed)).dsp < total_resources(
        unit_resources(floating)).dsp
    fixed_cycles = sum(e.cycles for e in estimate_calls(calls, fixed))
    assert fixed_cycles < sum(e.cycles for e in estimate_calls(calls, floating))


@pytest.mark.parametrize("depth", [1, 100, 512, 513, 1201, 4096, 20000, 294912])
@pytest.mark.parametrize("width", [1, 9, 16, 32, 40, 72])
def test_memory_blocks_hold_the_bank(depth, width):
    blocks = bram18_blocks(depth, width)
    assert blocks * 18 * 1024 >= depth * width
    # no shape would need fewer blocks (each shape checked on its own)
    assert blocks == min(math.ceil(width / w) * math.ceil(depth / d) for d, w in BRAM18_SHAPES)
    urams = uram_blocks(depth, width)
    assert urams * URAM_DEPTH * URAM_WIDTH >= depth * width


def test_design_that_does_not_fit_is_refused_with_a_table():
    _, design = _design("tiny-cityscapes", (256, 256), Precision())
    with pytest.raises(EstimateError) as error:
        check_fit(design)
    assert "dsp" in str(error.value) and "available" in str(error.value)


@pytest.mark.parametrize("budget", [0.5, 0.8, 1.0])
def test_exploration_fits_the_budget_and_beats_other_fitting_tiles(budget):
    calls, capacities = calls_for_config(_config("tiny-cityscapes"))
    choice = choose_design(calls, capacities, ZCU104, FIXED16, budget)
    assert not overflows(choice.resources, ZCU104, budget)
    for pair in [(t, t) for t in TILE_CHOICES[:8]] + [(4, 32), (32, 4)]:
        design = Design(ZCU104, capacities, pair, FIXED16)
        if not overflows(total_resources(unit_resources(design, budget)), ZCU104, budget):
            assert choice.cycles <= sum(e.cycles for e in estimate_calls(calls, design))


def test_memoised_cycles_equal_a_fresh_estimate_at_every_design_point():
    calls, capacities = calls_for_config(_config("tiny-cityscapes"))
    memo: dict = {}
    for tiles in [(8, 8), (8, 16), (16, 8)]:
        for query_block in (1, 4):
            for token_block in (1, 2, 8):
                design = Design(ZCU104, capacities, tiles, FIXED16, query_block, token_block)
                fresh = sum(e.cycles for e in estimate_calls(calls, design))
                assert total_cycles(calls, design, memo=memo) == fresh


def test_token_blocks_share_each_weight_word_among_an_experts_tokens():
    calls, capacities = calls_for_config(_config("tiny-cityscapes"))
    call = next(c for c in calls if c["op"] == "expert_ffn")
    single, blocked = (Design(ZCU104, capacities, (8, 8), FIXED16, 1, block) for block in (1, 8))
    # a block of 8 costs less than two tokens alone: its weight words are read once
    assert expert_compute_cycles(call, blocked, 40) < expert_compute_cycles(call, single, 10)
    assert expert_compute_cycles(call, blocked, 41) > expert_compute_cycles(call, blocked, 40)
    dsp = [unit_resources(d)["expert_ffn"].dsp for d in (single, blocked)]
    assert dsp[1] - dsp[0] == 2 * (8 - 1) * 8  # both matrix loops: 7 more tokens x TILE_OUT


def test_smaller_budget_never_gives_a_faster_design():
    calls, capacities = calls_for_config(_config("tiny-cityscapes"))
    cycles = [choose_design(calls, capacities, ZCU104, FIXED16, b).cycles
              for b in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)]
    assert cycles == sorted(cycles, reverse=True)


def test_expert_loop_overlaps_loads_with_compute():
    _, design = _design("tiny-cityscapes", (8, 8))
    calls, _ = calls_for_config(_config("tiny-cityscapes"))
    call = next(c for c in calls if c["op"] == "expert_ffn")
    queues = [0, 5, 1, 40, 3, 0, 2, 7] + [1] * (call["experts"] - 8)
    steps = expert_schedule(call, design, queues)
    assert [s.expert for s in steps] == [e for e, n in enumerate(queues) if n]
    load = expert_load_cycles(call, design)
    computes = [expert_compute_cycles(call, design, n) for n in queues if n]
    span = steps[-1].compute_end - steps[0].load_start
    assert span >= max(sum(computes), load * len(steps))
    assert span < sum(computes) + load * len(steps)
    for before, after in zip(steps, steps[1:], strict=False):
        assert after.load_start == before.compute_start  # prefetch issued with the compute
        assert after.compute_start == max(before.compute_end, after.load_end)


def test_bad_tiles_and_budgets_are_refused():
    for text in ("0x4", "4", "axb", "4x-1"):
        with pytest.raises(EstimateError):
            parse_tiles(text)
    assert parse_tiles("32x16") == (32, 16)
    for budget in (0, -0.5, 1.01):
        with pytest.raises(EstimateError):
            check_budget(budget)


def test_compile_uses_forced_tiles(export_model, tmp_path):
    _, path = export_model("micro-nyud")
    project = compile_model(path, out=tmp_path / "build", tiles=(8, 4))
    assert json.loads((project / "project.json").read_text())["tiles"] == [8, 4]
    header = (project / "hls" / "src" / "m3c_ops.h").read_text()
    assert "TILE_IN = 8;" in header and "TILE_OUT = 4;" in header


@pytest.mark.parametrize("extra", [["--tiles", "256x256"], ["--tiles", "0x8"],
                                   ["--budget", "1.5"]])
def test_cli_refuses_impossible_designs(export_model, tmp_path, capsys, extra):
    _, path = export_model("micro-nyud")
    out = tmp_path / "build"
    assert main(["compile", str(path), "-o", str(out), *extra]) == 2
    assert "error" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("types, expected", [
    (None, Precision()),
    ({"data": "float", "weight": "float", "acc": "float", "prob": "float"}, Precision()),
    ({"data": "ap_fixed<16,6>", "weight": "ap_fixed<16,2>", "acc": "ap_fixed<40,16>",
      "prob": "ap_ufixed<16,1>"}, Precision(16, 16, 40, 16, False)),
    ({"data": {"width": 16}, "weight": {"width": 8}, "acc": {"width": 32},
      "prob": {"width": 16}}, Precision(16, 8, 32, 16, False)),
])
def test_precision_from_project_types(types, expected):
    assert Precision.from_types(types) == expected


def test_unknown_type_is_refused():
    with pytest.raises(EstimateError):
        Precision.from_types({"data": "posit<16>"})
