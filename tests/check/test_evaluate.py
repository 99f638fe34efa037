"""`m3c evaluate`: whole image sets through a compiled project, locally or on Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from m3c.check import batches
from m3c.check.batches import _confusion
from m3c.check.evaluate import _miou, evaluate
from m3c.check.evaluation_report import evaluation_panels, saturation_note, write_evaluation
from m3c.check.images import load_images
from m3c.check.pools import pack_project, unpack_project
from m3c.errors import EvaluationError
from m3c.runtime.emulator import KernelEmulator


def _manifest(project):
    return json.loads((project / "project.json").read_text())


def _figures(evaluation: dict) -> dict:
    """Everything but the timings: what must not depend on how the work was spread."""
    return {key: value for key, value in evaluation.items() if key != "timing"}


@pytest.fixture(scope="module")
def fixed_project(compiled):
    return compiled("micro-nyud", "multi", "fixed")[1]


@pytest.fixture(scope="module")
def scenes(fixed_project):
    return load_images(None, _manifest(fixed_project), synthetic=6)


def test_miou_counts_only_classes_that_occur():
    prediction = np.array([[0, 1, 1], [2, 2, 0]])
    label = np.array([[0, 1, 2], [2, 2, 0]])
    confusion = _confusion(prediction, label, classes=4)
    # class 0: 2/2, class 1: 1/2 (one false positive), class 2: 2/3, class 3 absent
    assert _miou(confusion) == pytest.approx((1 + 0.5 + 2 / 3) / 3)


def test_reference_backend_agrees_with_itself(fixed_project, scenes):
    evaluation = evaluate([fixed_project], scenes, backend="reference", workers=1)
    tasks = evaluation["projects"][0]["tasks"]
    assert tasks["semseg"]["pixel_agreement"] == 1.0
    assert tasks["semseg"]["miou"] == tasks["semseg"]["miou_float"]
    assert tasks["depth"]["relative_rmse"] == 0.0
    assert tasks["depth"]["rmse"] == tasks["depth"]["rmse_float"] > 0


def test_emulation_equals_csim_and_stays_close_to_float(fixed_project, scenes):
    emulated = evaluate([fixed_project], scenes, backend="emulate", workers=1)
    simulated = evaluate([fixed_project], scenes, backend="csim", workers=1)
    project = emulated["projects"][0]
    assert project["tasks"] == simulated["projects"][0]["tasks"]  # bit-exact kernels
    assert project["per_image"] == simulated["projects"][0]["per_image"]
    assert 0.9 <= project["tasks"]["semseg"]["pixel_agreement"] <= 1.0
    assert 0 < project["tasks"]["depth"]["relative_rmse"] < 0.05
    assert len(project["tasks"]["depth"]["worst_images"]) == 5
    assert len(project["per_image"]) == len(scenes.images)


def test_same_figures_whatever_the_workers_and_batches(fixed_project, scenes):
    one = evaluate([fixed_project], scenes, workers=1, batch_images=4)
    two = evaluate([fixed_project], scenes, workers=2, batch_images=1)
    assert two["timing"]["processes"] == 2
    assert _figures(one) == _figures(two)


def test_a_shared_router_runs_the_kernel_once_per_image(compiled, monkeypatch, tmp_path):
    """One emulated kernel run per image feeds both heads; the figures equal those of one run
    per task (the oracle: the path task-routed models take), saturation counted once (images
    far beyond the calibration range make some saturate)."""
    project = compiled("micro-nyud", "single", "fixed")[1]
    scenes = load_images(None, _manifest(project), synthetic=3)
    np.save(tmp_path / "loud.npy", scenes.images * 200)
    images = load_images(tmp_path / "loud.npy", _manifest(project))
    runs: list[int] = []
    run = KernelEmulator.run

    def counted(self, image, task, observer=None):
        runs.append(task)
        return run(self, image, task, observer)

    monkeypatch.setattr(KernelEmulator, "run", counted)
    shared = evaluate([project], images, backend="emulate", workers=1)
    assert runs == [0, 0, 0]
    monkeypatch.setattr(batches, "encoder_shared_by_tasks", lambda manifest: False)
    monkeypatch.setattr(batches, "_RUNNERS", {})
    per_task = evaluate([project], images, backend="emulate", workers=1)
    assert runs[3:] == [0, 1] * 3
    ours, theirs = shared["projects"][0], per_task["projects"][0]
    assert ours["saturation"]
    assert {layer: 2 * count for layer, count in ours["saturation"].items()} \
        == theirs["saturation"]
    assert 2 * ours["results"] == theirs["results"]  # results counted once per image too
    assert {**ours, "saturation": None, "results": None} == \
        {**theirs, "saturation": None, "results": None}


def _worker_killer():
    """A progress callback that SIGKILLs the worker of the first finished batch, and the list
    of the pids it killed."""
    killed = []

    def kill_once(done, total, result):
        del done, total
        if not killed:
            killed.append(result["pid"])
            os.kill(result["pid"], signal.SIGKILL)

    return killed, kill_once


def test_a_killed_worker_s_batch_runs_again(fixed_project, scenes):
    killed, kill_once = _worker_killer()
    baseline = evaluate([fixed_project], scenes, workers=1)
    survived = evaluate([fixed_project], scenes, workers=2, batch_images=1, progress=kill_once)
    assert killed and killed[0] != os.getpid()
    assert _figures(survived) == _figures(baseline)


def test_several_projects_in_one_run(compiled, fixed_project, scenes):
    float_project = compiled("micro-nyud", "multi", "float")[1]
    evaluation = evaluate([fixed_project, float_project], scenes, workers=2)
    fixed, floating = evaluation["projects"]
    assert (fixed["precision"], floating["precision"]) == ("fixed", "float")
    assert floating["tasks"]["depth"]["relative_rmse"] < fixed["tasks"]["depth"]["relative_rmse"]
    assert floating["saturation"] == {}


def test_outputs_and_bad_inputs(fixed_project, scenes, tmp_path):
    evaluation = evaluate([fixed_project], scenes, workers=1)
    written = write_evaluation(tmp_path / "out", evaluation)
    assert [path.name for path in written] == ["evaluation.json", "evaluation.md",
                                               "evaluation_0.png"]
    assert "| semseg |" in written[1].read_text()
    with pytest.raises(EvaluationError, match="no images"):
        load_images(None, _manifest(fixed_project))
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 3, 2, 2), np.float32))
    with pytest.raises(EvaluationError, match=r"images of shape \[0, 3, 2, 2\]"):
        load_images(empty, _manifest(fixed_project))
    with pytest.raises(EvaluationError, match="not a compiled m3c project"):
        evaluate([tmp_path], scenes)


def test_evaluation_plot_keeps_agreement_and_rmse_apart_and_saturation_when_any(
        fixed_project, scenes, tmp_path):
    """The data behind the plot: agreement (%) and relative RMSE (%) on their own panels, per
    image as evaluated; the saturation panel only when a layer saturated (images scaled far
    beyond the calibration range make the embedding saturate), else a note."""
    quiet = evaluate([fixed_project], scenes, workers=1)["projects"][0]
    assert quiet["saturation"] == {}
    panels = evaluation_panels(quiet)
    assert [(p.title, p.xlabel) for p in panels] == [
        ("class maps: agreement with float", "pixels agreeing (%)"),
        ("dense maps: error against float", "relative RMSE (%)")]
    for panel, task in zip(panels, ("semseg", "depth"), strict=True):
        assert list(panel.series) == [task]
        assert panel.series[task] == pytest.approx(
            [100 * image[task] for image in quiet["per_image"]])
    assert panels[0].x_range[1] == 100.0
    assert saturation_note(quiet) == "no result saturated in any layer"
    np.save(tmp_path / "loud.npy", scenes.images * 200)
    loud = evaluate([fixed_project], load_images(tmp_path / "loud.npy",
                                                 _manifest(fixed_project)), workers=1)
    saturated = loud["projects"][0]
    assert saturated["saturation"]
    assert evaluation_panels(saturated)[-1].series == {
        layer: [count] for layer, count in saturated["saturation"].items()}
    assert saturation_note(saturated) is None
    written = write_evaluation(tmp_path / "out", loud)
    assert written[-1].name == "evaluation_0.png" and written[-1].stat().st_size > 0


def test_npy_batch_and_labels_folder(fixed_project, scenes, tmp_path):
    np.save(tmp_path / "images.npy", scenes.images)
    (tmp_path / "labels").mkdir()
    for task, labels in scenes.labels.items():
        np.save(tmp_path / "labels" / f"{task}.npy", labels)
    loaded = load_images(tmp_path / "images.npy", _manifest(fixed_project), tmp_path / "labels")
    from_files = evaluate([fixed_project], loaded, workers=1)
    direct = evaluate([fixed_project], scenes, workers=1)
    for task, figures in direct["projects"][0]["tasks"].items():
        named = from_files["projects"][0]["tasks"][task]
        assert named.pop("worst_images")[0]["image"].startswith("images[")
        figures.pop("worst_images")
        assert named == figures


def test_project_travels_as_bytes(fixed_project):
    packed = pack_project(fixed_project)
    assert packed == pack_project(fixed_project)  # same bytes: one object per project
    folder = unpack_project(packed)
    assert (folder / "kernel.json").read_bytes() == (fixed_project / "kernel.json").read_bytes()
    assert (folder / "intermediate/00_import.onnx").is_file()


def test_cli_evaluate(fixed_project, tmp_path):
    result = subprocess.run([sys.executable, "-m", "m3c", "evaluate", str(fixed_project),
                             "--synthetic", "3", "--workers", "1", "-o", str(tmp_path),
                             "--no-plots"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "pixel agreement" in result.stdout and "evaluating batches: 1/1" in result.stderr
    assert json.loads((tmp_path / "evaluation.json").read_text())["images"] == 3
    clash = subprocess.run([sys.executable, "-m", "m3c", "evaluate", str(fixed_project),
                            "--synthetic", "3", "--workers", "2", "--ray", "local"],
                           capture_output=True, text=True)
    assert clash.returncode == 2 and "exclude each other" in clash.stderr


def test_ray_cluster_survives_a_killed_worker(fixed_project, scenes):
    ray = pytest.importorskip("ray")
    killed, kill_once = _worker_killer()
    baseline = evaluate([fixed_project], scenes, workers=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        survived = evaluate([fixed_project], scenes, ray="auto", batch_images=1,
                            progress=kill_once)
    finally:
        ray.shutdown()
    assert killed and _figures(survived) == _figures(baseline)


def test_labels_at_another_resolution_than_the_heads_output_are_compared_at_theirs():
    """A head upsampling for another patch size outputs 4x4 maps for 2x2 labels: the maps are
    sampled at the labels' pixel centres, not refused with an internal error."""
    from m3c.check.batches import _task_record

    logits = np.zeros((1, 3, 4, 4), np.float32)
    logits[0, 1, :2, :] = logits[0, 2, 2:, :] = 1.0  # class 1 on top, class 2 below
    record = _task_record("semseg", logits, logits, np.array([[1, 1], [2, 0]]))
    confusion = np.array(record["confusion"])
    assert confusion[1, 1] == 2 and confusion[2, 2] == 1 and confusion[0, 2] == 1
    depth = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    record = _task_record("depth", depth, depth, np.zeros((1, 2, 2)))
    assert record["label_elements"] == 4  # pixels 5, 7, 13, 15 sampled
    assert record["squared_error"] == 5.0 ** 2 + 7.0 ** 2 + 13.0 ** 2 + 15.0 ** 2
