"""The project report: written at compile time, rewritten by `m3c report`, deterministic."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest

from m3c.cli import main
from m3c.project.compile import compile_model
from m3c.project.report import timeline_bars, timeline_overlaps


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


def _closed_form_macs(config: dict) -> int:
    """The encoder's MACs for one image, from the architecture alone."""
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
    return macs


def test_flops_match_the_closed_form_of_the_architecture(project):
    config = json.loads((project / "project.json").read_text())["config"]
    flops = _report(project)["flops"]
    assert flops["single_task"] == 2 * _closed_form_macs(config)
    # a router per task: all tasks run the encoder once each
    assert flops["all_tasks"] == len(config["tasks"]) * flops["single_task"]


@pytest.mark.parametrize("gate, encoder_runs", [("single", 1), ("multi", 2), ("task", 2)])
def test_all_tasks_figures_count_one_encoder_run_for_a_shared_router(compiled, gate,
                                                                     encoder_runs):
    """All tasks of one image: the encoder once for a shared router (the heads run on the
    host), once per task for per-task routing."""
    project = compiled("micro-nyud", gate)[1]
    config = json.loads((project / "project.json").read_text())["config"]
    report = _report(project)
    one_encoder = 2 * _closed_form_macs(config)
    assert report["flops"]["encoder_runs"] == encoder_runs
    assert report["flops"]["all_tasks"] == encoder_runs * one_encoder
    energy, latency = report["energy"], report["latency"]
    assert energy["joules_all_tasks"] == pytest.approx(
        encoder_runs * latency["ms"] / 1e3 * energy["board_power_w"])
    assert latency["all_tasks_ms"] == pytest.approx(encoder_runs * latency["ms"])
    text = (project / "report" / "report.md").read_text()
    assert f"All 2 tasks: {latency['all_tasks_ms']:.3f} ms" in text
    assert ("one encoder run feeds every head" in text) is (encoder_runs == 1)


def _busy(intervals: list[tuple[int, int]], end: int) -> np.ndarray:
    busy = np.zeros(end, bool)
    for start, stop in intervals:
        busy[start:stop] = True
    return busy


def _check_timeline_plot_data(timeline: dict, clock_mhz: float) -> None:
    """The plot's bars against the schedule: a load row and a compute row with a bar per
    expert at the schedule's cycles, and the shaded overlap exactly where the schedule has a
    load and a compute at once (cycle by cycle), cross-expert prefetch included."""
    steps = timeline["steps"]
    bars = timeline_bars(timeline, clock_mhz)
    for row in ("load", "compute"):
        drawn = [(b.expert, round(b.start_us * clock_mhz), round(b.end_us * clock_mhz))
                 for b in bars if b.row == row]
        assert drawn == [(s["expert"], s[f"{row}_start"], s[f"{row}_end"]) for s in steps]
    loads = {b.expert: b for b in bars if b.row == "load"}
    computes = {b.expert: b for b in bars if b.row == "compute"}
    for before, after in itertools.pairwise(steps):
        prefetched = after["load_start"] < before["compute_end"]
        assert (loads[after["expert"]].start_us < computes[before["expert"]].end_us) \
            is prefetched
    end = max(max(s["load_end"], s["compute_end"]) for s in steps)
    both = (_busy([(s["load_start"], s["load_end"]) for s in steps], end)
            & _busy([(s["compute_start"], s["compute_end"]) for s in steps], end))
    shaded = _busy([(round(a * clock_mhz), round(b * clock_mhz))
                    for a, b in timeline_overlaps(bars)], end)
    np.testing.assert_array_equal(shaded, both)


def test_moe_timeline_plot_shows_loads_and_compute_on_their_own_rows(project):
    report = _report(project)
    timeline = report["moe_timeline"]
    assert len(timeline["steps"]) == json.loads(
        (project / "project.json").read_text())["moe_layers"][0]["experts"]
    _check_timeline_plot_data(timeline, report["clock_mhz"])
    assert timeline_overlaps(timeline_bars(timeline, report["clock_mhz"]))
    assert (project / "report" / "moe_timeline.png").stat().st_size > 0


def test_timeline_plot_shows_a_next_expert_s_load_under_the_current_compute():
    """A prefetching schedule (expert e+1's load issued while e computes, one buffer slot
    each): its overlap spans cross experts."""
    steps = [{"expert": 0, "tokens": 5, "load_start": 0, "load_end": 300,
              "compute_start": 300, "compute_end": 700},
             {"expert": 2, "tokens": 3, "load_start": 300, "load_end": 600,
              "compute_start": 700, "compute_end": 900},
             {"expert": 3, "tokens": 4, "load_start": 700, "load_end": 1000,
              "compute_start": 1000, "compute_end": 1300}]
    timeline = {"layer": "moe0", "steps": steps}
    _check_timeline_plot_data(timeline, 300.0)
    np.testing.assert_allclose(timeline_overlaps(timeline_bars(timeline, 300.0)),
                               [(1.0, 2.0), (700 / 300, 3.0)])


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
    for name in ("report.json", "report.md", "latency_per_layer.png", "moe_timeline.png",
                 "resources.png"):
        assert (copy / "report" / name).read_bytes() == (project / "report" / name).read_bytes()


def test_report_refuses_what_is_not_a_project(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such project directory" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "project.json").write_text("{}")
    assert main(["report", str(tmp_path / "half")]) == 2
    assert "kernel.json" in capsys.readouterr().err
