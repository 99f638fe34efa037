"""A router shared by all tasks: the kernel runs once per image and every head reads its
features (`--all-tasks`, `Accelerator.run_tasks`); per-task routing keeps a run per task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from m3c.cli import main as cli_main
from m3c.ir.sessions import ort_session
from m3c.runtime import Accelerator, AcceleratorError
from m3c.runtime.accelerator import ReferenceEngine
from m3c.runtime.project import encoder_shared_by_tasks

FLOAT_TOLERANCE = 1e-4
GATES = ("single", "multi", "task")


@pytest.fixture
def kernel_runs(monkeypatch) -> list[int]:
    """The task id of every run of the reference backend's kernel, in order."""
    tasks: list[int] = []
    run = ReferenceEngine.run

    def counted(self, image: np.ndarray, task: int) -> np.ndarray:
        tasks.append(task)
        return run(self, image, task)

    monkeypatch.setattr(ReferenceEngine, "run", counted)
    return tasks


def _image(project: Path) -> np.ndarray:
    shape = json.loads((project / "project.json").read_text())["image_shape"]
    return np.random.default_rng(7).standard_normal(shape).astype(np.float32)


def _onnxruntime_outputs(model_path: Path, image: np.ndarray, task: int) -> dict:
    """The original model's task outputs: the oracle of every kernel-and-head path."""
    session = ort_session(onnx.load(str(model_path)))
    outputs = session.run(None, {"image": image, "task": np.array(task, dtype=np.int64)})
    return dict(zip([o.name for o in session.get_outputs()], outputs, strict=True))


@pytest.mark.parametrize("gate", GATES)
def test_shared_encoder_is_what_the_kernel_s_router_tables_say(compiled, gate):
    """The manifest's verdict against the kernel itself: only a router table or bias with a
    row per task makes the kernel read its `task` argument."""
    _, project = compiled("micro-nyud", gate)
    manifest = json.loads((project / "project.json").read_text())
    routes = [c for c in json.loads((project / "kernel.json").read_text())["calls"]
              if c["op"] == "route"]
    assert routes
    reads_task = any(c["weight_rows"] > 1 or c["bias_rows"] > 1 for c in routes)
    assert encoder_shared_by_tasks(manifest) is (not reads_task)
    assert encoder_shared_by_tasks(manifest) is (gate == "single")


@pytest.mark.parametrize("gate, runs", [("single", 1), ("multi", 2), ("task", 2)])
def test_all_tasks_runs_the_kernel_once_per_image_when_the_router_is_shared(
        compiled, kernel_runs, tmp_path, capsys, gate, runs):
    model_path, project = compiled("micro-nyud", gate)
    image = _image(project)
    np.save(tmp_path / "image.npy", image)
    assert cli_main(["run", str(project), "--image", str(tmp_path / "image.npy"),
                     "--all-tasks", "--backend", "reference", "-o", str(tmp_path / "maps")]) == 0
    assert len(kernel_runs) == runs
    printed = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in printed.splitlines()[1:3]}
    assert set(rows) == {"semseg", "depth"}
    assert (rows["depth"][1] == "shared") is (gate == "single")
    assert ("the encoder ran once and fed all 2 heads" in printed) is (gate == "single")
    assert ("x 2 kernel runs" in printed) is (gate != "single")
    for index, task in enumerate(("semseg", "depth")):
        want = _onnxruntime_outputs(model_path, image, index)[task][0]
        got = np.load(tmp_path / "maps" / f"{task}.npy")
        if task == "semseg":
            np.testing.assert_array_equal(got, want.argmax(0))
        else:
            assert np.abs(got - want[0]).max() <= FLOAT_TOLERANCE


@pytest.mark.parametrize("gate", GATES)
def test_run_tasks_equals_one_run_per_task(compiled, kernel_runs, gate):
    _, project = compiled("micro-nyud", gate)
    image = _image(project)
    with Accelerator.open(project, backend="reference") as accelerator:
        together = accelerator.run_tasks(image)
        runs_together = len(kernel_runs)
        one_by_one = {task: accelerator.run(image, task) for task in accelerator.tasks}
    assert runs_together == (1 if gate == "single" else 2)
    assert list(together) == accelerator.tasks
    for task, run in together.items():
        np.testing.assert_array_equal(run.output, one_by_one[task])
        assert run.head_s > 0
    reused = [task for task, run in together.items() if run.kernel_s is None]
    assert reused == (["depth"] if gate == "single" else [])


def test_run_tasks_refuses_an_unknown_task_before_running(compiled, kernel_runs):
    _, project = compiled("micro-nyud", "single")
    with Accelerator.open(project, backend="reference") as accelerator, \
            pytest.raises(AcceleratorError, match="unknown task 'normals'"):
        accelerator.run_tasks(_image(project), ["depth", "normals"])
    assert kernel_runs == []
