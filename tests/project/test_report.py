"""The project report: written at compile time, rewritten by `m3c report`, deterministic."""

from __future__ import annotations

import json
import shutil

import pytest

from m3c.cli import main
from m3c.project.compile import compile_model


@pytest.fixture(scope="module")
def project(export_model, tmp_path_factory):
    _, path = export_model("micro-nyud")
    return compile_model(path, out=tmp_path_factory.mktemp("report") / "build")


def _report(project) -> dict:
    return json.loads((project / "report" / "report.json").read_text())


def test_compile_writes_the_report(project):
    folder = project / "report"
    for name in ("report.json", "report.md", "latency_per_layer.png", "moe_timeline.png",
                 "resources.png"):
        assert (folder / name).is_file(), name
    report = _report(project)
    manifest = json.loads((project / "project.json").read_text())
    assert [report["tiles"]["tile_in"], report["tiles"]["tile_out"]] == manifest["tiles"]
    for block in ("row_tile", "query_tile"):
        assert report["tiles"][block] == manifest[block]
    assert report["routing"].startswith("balanced")
    assert f"{report['latency']['ms']:.3f} ms" in (folder / "report.md").read_text()


def test_flops_match_the_closed_form_of_the_architecture(project):
    config = json.loads((project / "project.json").read_text())["config"]
    d, heads_patch = config["embed_dim"], config["patch_size"]
    h, w = config["image_size"]
    patches = (h // heads_patch) * (w // heads_patch)
    n = patches + 1
    macs = patches * 3 * heads_patch**2 * d
    for block in range(config["depth"]):
        macs += n * d * 3 * d + 2 * n * n * d + n * d * d  # qkv, scores and mix, proj
        if block in config["moe_blocks"]:
            hidden = int(d * config["moe_mlp_ratio"])
            macs += n * d * config["num_experts"] + 2 * n * config["top_k"] * d * hidden
        else:
            macs += 2 * n * d * int(d * config["mlp_ratio"])
    flops = _report(project)["flops"]
    assert flops["single_task"] == 2 * macs
    assert flops["all_tasks"] == len(config["tasks"]) * flops["single_task"]


def test_latency_parts_and_blocks_add_up(project):
    latency = _report(project)["latency"]
    assert sum(v["cycles"] for v in latency["parts"].values()) == latency["cycles"]
    assert sum(v["cycles"] for v in latency["blocks"].values()) == latency["cycles"]
    depth = json.loads((project / "project.json").read_text())["config"]["depth"]
    assert set(latency["blocks"]) == {"embed", *map(str, range(depth))}


def test_energy_scales_with_board_power(project, tmp_path):
    copy = shutil.copytree(project, tmp_path / "copy")
    assert main(["--quiet", "report", str(copy), "--power", "20", "--no-plots"]) == 0
    doubled, base = _report(copy)["energy"], _report(project)["energy"]
    assert doubled["joules_per_inference"] == pytest.approx(2 * base["joules_per_inference"])
    seconds = _report(copy)["latency"]["ms"] / 1e3
    assert doubled["joules_per_inference"] == pytest.approx(20 * seconds)


def test_report_command_reproduces_the_compile_time_report(project, tmp_path):
    copy = shutil.copytree(project, tmp_path / "copy")
    assert main(["--quiet", "report", str(copy)]) == 0
    for name in ("report.json", "report.md", "latency_per_layer.png", "resources.png"):
        assert (copy / "report" / name).read_bytes() == (project / "report" / name).read_bytes()


def test_report_refuses_what_is_not_a_project(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such project directory" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "project.json").write_text("{}")
    assert main(["report", str(tmp_path / "half")]) == 2
    assert "kernel.json" in capsys.readouterr().err
