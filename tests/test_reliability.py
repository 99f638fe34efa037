"""Reliability: every class of failure from issue 15 ends in one short error (exit 2) or a true
verdict; outputs appear whole or not at all; projects build with g++ alone."""

from __future__ import annotations

import errno
import importlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_fuzz import run_cli

from m3c.check.metrics import max_error
from m3c.check.verify import StageRow, worst_error
from m3c.check.verify_project import ProjectRow, project_passed
from m3c.cli import expected_error
from m3c.errors import M3CError, OnnxRuntimeError
from m3c.project.atomic import output_lock
from m3c.project.fidelity import Fidelity


@pytest.fixture(autouse=True)
def _logs(tmp_path, monkeypatch):
    monkeypatch.setenv("M3C_LOG_DIR", str(tmp_path / "logs"))


def refused(argv: list[str], *words: str) -> str:
    """Run m3c; it must exit 2 with one or two short lines naming `words`."""
    code, stdout, stderr = run_cli(["--quiet", *argv])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, (code, stdout, stderr)
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    # argparse prints its usage before the one error line
    message = [line for line in lines if not line.startswith(("usage:", " "))
               or line.startswith("  remedy")]
    assert 1 <= len(message) <= 2 and all(len(line) < 400 for line in message), stderr
    for word in words:
        assert word.lower() in stderr.lower(), (word, stderr)
    return stderr


@pytest.fixture
def micro(export_model):
    _, path = export_model("micro-nyud", "multi")
    return path


def _mutated(path: Path, tmp_path: Path, edit) -> Path:
    model = onnx.load(str(path))
    result = edit(model)
    out = tmp_path / "mutated.onnx"
    out.write_bytes(result if isinstance(result, bytes) else model.SerializeToString())
    return out


# --- 1. the error boundary -----------------------------------------------------------------

def test_unexpected_exception_is_one_line_naming_a_traceback_file(micro, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in a pass")

    monkeypatch.setattr("m3c.api.lower", broken)
    code, _, stderr = run_cli(["lower", str(micro), "-o", str(tmp_path / "l.onnx")])
    assert code == 1 and len(stderr.strip().splitlines()) == 1, stderr
    assert "Traceback" not in stderr
    saved = Path(stderr.split("traceback in ")[1].split(";")[0])
    assert "RuntimeError: a bug in a pass" in saved.read_text()
    assert "Traceback" in saved.read_text()
    code, _, stderr = run_cli(["--debug", "lower", str(micro), "-o", str(tmp_path / "l.onnx")])
    assert code == 1 and "Traceback (most recent call last)" in stderr


def test_long_messages_are_cut_to_their_gist_and_written_to_a_file(micro, tmp_path,
                                                                   monkeypatch):
    table = "\n".join(f"unit{i:03d}  {i * 37:>8} DSP  overflows" for i in range(200))

    def overflowing(*args, **kwargs):
        raise M3CError(f"the design does not fit zcu104:\n{table}", remedy="raise --budget")

    monkeypatch.setattr("m3c.api.lower", overflowing)
    stderr = refused(["lower", str(micro), "-o", str(tmp_path / "l.onnx")], "does not fit",
                     "full text in", "--budget")
    assert len(stderr) < 600
    saved = Path(stderr.split("full text in ")[1].split(")")[0])
    assert "unit199" in saved.read_text()


def test_long_steps_report_progress_in_plain_lines_unless_quiet(micro, tmp_path):
    """Piped (as here), progress is plain lines, a tenth of the work at a time; --quiet
    silences it (issue 26, item 9)."""
    code, _, stderr = run_cli(["lower", str(micro), "-o", str(tmp_path / "a.onnx")])
    assert code == 0 and re.search(r"^lowering: (\d+)/\1$", stderr, re.M), stderr
    assert "\r" not in stderr and len(stderr.splitlines()) <= 12
    code, _, stderr = run_cli(["--quiet", "lower", str(micro), "-o", str(tmp_path / "b.onnx")])
    assert code == 0 and stderr == ""


def test_a_short_overflow_table_is_printed_whole(micro, tmp_path, monkeypatch):
    """A headline and a few rows (a --tiles overflow) are printed, not cut to a file."""
    table = "\n".join(f"{kind:<7} {9999:>8} used > {1000:>8} available" for kind in
                      ("dsp", "lut", "bram18", "uram"))

    def overflowing(*args, **kwargs):
        raise M3CError(f"array 64x64 does not fit zcu104:\n{table}", remedy="smaller --tiles")

    monkeypatch.setattr("m3c.api.lower", overflowing)
    stderr = refused(["lower", str(micro), "-o", str(tmp_path / "l.onnx")], "does not fit",
                     "smaller --tiles")
    assert "uram" in stderr and stderr.count("9999 used") == 4
    assert "full text in" not in stderr


def test_full_disk_while_lowering_is_a_short_error_and_leaves_nothing(micro, tmp_path,
                                                                      monkeypatch):
    def full(self, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("m3c.ir.graph.Graph.save", full)
    out = tmp_path / "out"
    out.mkdir()
    refused(["lower", str(micro), "-o", str(out / "l.onnx")], "no space left")
    assert list(out.iterdir()) == []


def test_onnxruntime_errors_are_expected_failures(micro):
    from m3c.ir.sessions import ort_session

    session = ort_session(onnx.load(str(micro)))
    with pytest.raises(Exception) as caught:  # noqa: B017 - onnxruntime's own classes
        session.run(None, {"image": np.zeros((1, 3, 48, 64), np.float32),
                           "task": np.zeros(1, np.int64)})
    assert isinstance(expected_error(caught.value), OnnxRuntimeError)


# --- 2. model files: validation up front ----------------------------------------------------

def _metadata(model, key):
    return next(prop for prop in model.metadata_props if prop.key == key)


def _invalid_utf8(model):
    data = bytearray(model.SerializeToString())
    value = _metadata(model, "m3c.tasks").value.encode()
    data[data.find(value) + 2] = 0xFF
    return bytes(data)


def _task_shape_one(model):
    task = next(v for v in model.graph.input if v.name == "task")
    task.type.tensor_type.shape.dim.add().dim_value = 1


def _tasks_not_json(model):
    _metadata(model, "m3c.tasks").value = '["semseg", '


def _tasks_not_outputs(model):
    _metadata(model, "m3c.tasks").value = '["semseg", "normals"]'


def _huge_image(model):
    image = next(v for v in model.graph.input if v.name == "image")
    image.type.tensor_type.shape.dim[2].dim_value = 2**31


def _no_opset(model):
    model.ClearField("opset_import")


def _two_producers(model):
    model.graph.node[5].output[0] = model.graph.node[4].output[0]


def _dtype_mismatch(model):
    init = next(i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT
                and i.dims)
    init.data_type = TensorProto.DOUBLE


def _untyped_task(model):
    next(v for v in model.graph.input if v.name == "task").ClearField("type")


def _weight_as_input(model):
    init = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type,
                                                           list(init.dims)))
    del model.graph.initializer[0]


def _nan_weight(model):
    index = next(i for i, init in enumerate(model.graph.initializer)
                 if init.data_type == TensorProto.FLOAT and init.dims)
    values = numpy_helper.to_array(model.graph.initializer[index]).copy()
    values.flat[0] = np.nan
    model.graph.initializer[index].CopyFrom(numpy_helper.from_array(
        values, model.graph.initializer[index].name))


MODEL_CASES = {
    "invalid_utf8": (_invalid_utf8, ["UTF-8"]),
    "task_shape_1": (_task_shape_one, ["task", "scalar"]),
    "tasks_not_json": (_tasks_not_json, ["m3c.tasks", "JSON"]),
    "tasks_not_outputs": (_tasks_not_outputs, ["m3c.tasks", "normals"]),
    "image_2_31": (_huge_image, ["DDR"]),
    "no_opset": (_no_opset, ["opset"]),
    "two_producers": (_two_producers, ["produced twice"]),
    "dtype_mismatch": (_dtype_mismatch, ["initializer", "decode"]),
    "untyped_task": (_untyped_task, ["task", "type"]),
    "weight_as_input": (_weight_as_input, ["neither 'image' nor 'task'"]),
    "nan_weight": (_nan_weight, ["NaN"]),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
@pytest.mark.parametrize("command", ["lower", "verify", "compile"])
def test_bad_models_are_refused_by_every_command(case, command, micro, tmp_path):
    edit, words = MODEL_CASES[case]
    path = _mutated(micro, tmp_path, edit)
    argv = {"lower": ["lower", str(path), "-o", str(tmp_path / "l.onnx")],
            "verify": ["verify", str(path)],
            "compile": ["compile", str(path), "-o", str(tmp_path / "build")]}[command]
    refused(argv, *words)
    assert not (tmp_path / "build").exists() and not (tmp_path / "l.onnx").exists()


def test_model_without_moe_layers_compiles(export_model, tmp_path):
    _, path = export_model("micro-nyud", "multi", depth=1)  # block 0 only: dense
    code, _, stderr = run_cli(["compile", str(path), "-o", str(tmp_path / "build")])
    assert code == 0, stderr
    calls = json.loads((tmp_path / "build" / "kernel.json").read_text())["calls"]
    assert "experts" not in {call["op"] for call in calls}


# --- 3. m3c run -----------------------------------------------------------------------------

def _png(path: Path, width: int, height: int, colour: int, rows: bytes,
         palette: bytes | None = None) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    body = chunk(b"IHDR", header) + (chunk(b"PLTE", palette) if palette else b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def project(compiled):
    return compiled("micro-nyud", "multi")[1]


def _copy(project: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("build"))
    return copy


def test_run_refuses_bad_images(project, tmp_path):
    picture = _png(tmp_path / "picture.png", 2, 1, 3, b"\x00\x00\x01", b"\x00" * 6)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(picture.read_bytes()[:30])
    refused(["run", str(project), "--image", str(truncated)], "truncated.png", "cannot read")
    empty = _png(tmp_path / "empty.png", 0, 0, 2, b"")
    refused(["run", str(project), "--image", str(empty)], "empty.png", "cannot read")
    np.save(tmp_path / "object.npy", np.array([{"a": 1}], dtype=object))
    refused(["run", str(project), "--image", str(tmp_path / "object.npy")], "object")
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    refused(["run", str(project), "--image", str(tmp_path / "broken.npy")], "broken.npy")


def test_run_refuses_bad_outputs_and_arguments(project, tmp_path):
    picture = tmp_path / "picture.npy"
    np.save(picture, np.full((8, 8, 3), 128, np.uint8))
    (tmp_path / "file").write_text("not a folder")
    refused(["run", str(project), "--image", str(picture), "-o", str(tmp_path / "file")],
            "not a directory")
    refused(["run", str(project), "--image", str(picture), "--timeout", "-1"], "timeout")
    refused(["run", str(project), "--image", str(picture), "--task", ""], "task")


def test_run_refuses_broken_projects(project, tmp_path):
    picture = tmp_path / "picture.npy"
    np.save(picture, np.full((8, 8, 3), 128, np.uint8))
    copy = _copy(project, tmp_path)
    shutil.rmtree(copy / "hls" / "src")
    refused(["run", str(copy), "--image", str(picture)], "hls/src")
    shutil.rmtree(copy)
    copy = _copy(project, tmp_path)
    head = copy / "host" / "heads" / "semseg.onnx"
    head.write_bytes(head.read_bytes()[:100])
    refused(["run", str(copy), "--image", str(picture), "--task", "semseg",
             "-o", str(tmp_path / "maps")])


def test_run_writes_maps_atomically_on_a_full_disk(project, tmp_path, monkeypatch):
    picture = tmp_path / "picture.npy"
    np.save(picture, np.full((8, 8, 3), 128, np.uint8))

    def full(path, pixels):
        Path(path).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("m3c.runtime.app.write_png", full)
    maps = tmp_path / "maps"
    refused(["run", str(project), "--image", str(picture), "-o", str(maps),
             "--backend", "reference"], "no space left")
    assert not any(path.suffix == ".png" or path.name.startswith(".")
                   for path in maps.iterdir()), list(maps.iterdir())


# --- 4. project files: report, simulate, verify DIR ------------------------------------------

CORRUPTIONS = {
    "truncated": lambda text: text[: len(text) // 2],
    "wrong_type": lambda text: json.dumps(list(json.loads(text))),
    "missing_keys": lambda text: json.dumps({k: v for k, v in json.loads(text).items()
                                             if k not in ("tasks", "calls")}),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("name", ["project.json", "kernel.json"])
@pytest.mark.parametrize("command", ["report", "simulate", "verify"])
def test_corrupt_project_files_are_refused(command, name, corruption, project, tmp_path):
    copy = _copy(project, tmp_path)
    path = copy / name
    path.write_text(CORRUPTIONS[corruption](path.read_text()))
    argv = [command, str(copy)] + (["--images", "1"] if command == "simulate" else [])
    refused(argv, name)


def test_report_and_simulate_refuse_a_read_only_project(project, tmp_path, monkeypatch):
    copy = _copy(project, tmp_path)
    # Tests may run as root, whom chmod does not stop: make the permission check say no.
    monkeypatch.setattr("m3c.commands.report_cmd.os.access", lambda path, mode: False)
    before = (copy / "report" / "report.json").read_bytes()
    refused(["report", str(copy)], "read-only")
    refused(["simulate", str(copy), "--images", "1"], "read-only")
    assert (copy / "report" / "report.json").read_bytes() == before


def test_report_rejects_bad_power(project):
    for power in ("-1", "nan", "inf", "0"):
        refused(["report", str(project), "--power", power], "--power")


def test_report_replaces_report_folder_whole(project, tmp_path):
    copy = _copy(project, tmp_path)
    (copy / "report" / "stale.txt").write_text("from an older report")
    code, _, stderr = run_cli(["--quiet", "report", str(copy), "--power", "5"])
    assert code == 0, stderr
    report = json.loads((copy / "report" / "report.json").read_text())
    assert report["energy"]["board_power_w"] == 5.0
    assert not (copy / "report" / "stale.txt").exists()
    assert not [p for p in copy.iterdir() if p.name.startswith(".")]


# --- 5. compile arguments and lower outputs -------------------------------------------------

def test_compile_refuses_bad_calibration_and_precision_configs(micro, tmp_path):
    out = str(tmp_path / "build")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3, 48, 64), np.float32))
    refused(["compile", str(micro), "-o", out, "--calib", str(tmp_path / "empty.npy")],
            "no numeric images")
    np.savez(tmp_path / "images.npz", a=np.zeros((1, 3, 48, 64), np.float32))
    refused(["compile", str(micro), "-o", out, "--calib", str(tmp_path / "images.npz")], ".npz")
    np.save(tmp_path / "nan.npy", np.full((1, 3, 48, 64), np.nan, np.float32))
    refused(["compile", str(micro), "-o", out, "--calib", str(tmp_path / "nan.npy")], "NaN")
    (tmp_path / "types.yaml").write_text("types: [data]\n")
    refused(["compile", str(micro), "-o", out, "--precision-config",
             str(tmp_path / "types.yaml")], "'types'")
    (tmp_path / "layers.yaml").write_text("layers: ['*']\n")
    refused(["compile", str(micro), "-o", out, "--precision-config",
             str(tmp_path / "layers.yaml")], "'layers'")
    assert not (tmp_path / "build").exists()


def test_lower_output_paths(micro, tmp_path):
    folder = tmp_path / "existing"
    folder.mkdir()
    refused(["lower", str(micro), "-o", str(folder)], "is a directory")
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "existing"]
    (tmp_path / "stages").write_text("a file")
    refused(["lower", str(micro), "-o", str(tmp_path / "l.onnx"), "--save-stages",
             str(tmp_path / "stages")], "not a directory")
    stages = tmp_path / "stage_dir"
    for _ in range(2):  # a folder of earlier stages is replaced, not added to
        code, _, stderr = run_cli(["--quiet", "lower", str(micro), "-o", str(tmp_path / "l.onnx"),
                                   "--save-stages", str(stages)])
        assert code == 0, stderr
    assert (tmp_path / "l.onnx").is_file() and any(stages.glob("00_*.onnx"))
    assert not [p for p in tmp_path.iterdir() if ".m3c-" in p.name]


# --- 6. verify cannot pass by accident ------------------------------------------------------

def test_non_finite_and_empty_comparisons_fail():
    assert max_error(np.full(4, np.nan), np.zeros(4), "x") == np.inf
    assert max_error(np.zeros(4), np.array([0, 0, np.inf, 0]), "x") == np.inf
    assert max_error(np.ones(3), np.zeros(3), "x") == 1.0
    assert worst_error([]) == np.inf
    assert worst_error([StageRow(0, "import", {}, {"a": np.nan})]) != 0.0
    close = Fidelity("a", True, 1.0, 0.0, 0, 100)
    row = ProjectRow("a", "fixed", 0.0, float("nan"), 0.0, close)
    assert not row.passed and not project_passed([row]) and not project_passed([])
    assert project_passed([ProjectRow("a", "fixed", 0.0, 0.0, 1.0, close)])
    drifted = Fidelity("a", False, float("nan"), 0.0, 0, 100)  # a NaN output
    assert not project_passed([ProjectRow("a", "fixed", 0.0, 0.0, 0.0, drifted)])


def test_verify_fails_when_every_output_is_nan(micro, monkeypatch):
    from m3c.ir.graph import Graph

    real = Graph.run_output
    monkeypatch.setattr(Graph, "run_output",
                        lambda self, feeds, name: np.full_like(real(self, feeds, name), np.nan))
    code, stdout, stderr = run_cli(["verify", str(micro), "--images", "1"])
    assert code == 1 and "vs tolerance 1e-04: FAIL" in stdout, stdout + stderr


def test_verify_needs_at_least_one_image(micro):
    refused(["verify", str(micro), "--images", "0"], "--images")
    refused(["verify", str(micro), "--images", "-3"], "--images")


def test_verify_project_checks_the_weights_the_hardware_reads(project, tmp_path):
    code, stdout, stderr = run_cli(["verify", str(project)])
    assert code == 0 and "PASS" in stdout, stderr
    assert "weights/weights.bin" in stdout and "data/features_task0.bin" in stdout
    copy = _copy(project, tmp_path)
    weights = copy / "weights" / "weights.bin"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 64])
    refused(["verify", str(copy)], "weights.bin", "truncated")
    changed = bytearray(data)
    changed[len(data) // 2] ^= 0x40
    weights.write_bytes(bytes(changed))
    refused(["verify", str(copy)], "weights.bin", "differs")


# --- 7. atomic compile outputs, locks and kills -----------------------------------------------

def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_concurrent_compile_into_one_output_is_refused(micro, tmp_path):
    out = tmp_path / "build"
    with output_lock(out.absolute()):
        refused(["compile", str(micro), "-o", str(out)], "another m3c run")
    assert not out.exists()


def test_full_disk_during_compile_leaves_no_project(micro, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "weights.bin")

    monkeypatch.setattr(importlib.import_module("m3c.project.compile"), "write_weights", full)
    refused(["compile", str(micro), "-o", str(tmp_path / "build")], "no space left")
    assert not (tmp_path / "build").exists() and _hidden(tmp_path) == []


def test_empty_mount_point_as_output_is_refused(micro, tmp_path, monkeypatch):
    (tmp_path / "mnt").mkdir()
    monkeypatch.setattr("m3c.project.atomic.os.path.ismount", lambda path: Path(path).name == "mnt")
    refused(["compile", str(micro), "-o", str(tmp_path / "mnt")], "mount point")


def _compile_process(model: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "m3c", "--quiet", "compile", str(model),
                             "-o", str(out), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("kill_when", ["lock", "staging", "late"])
def test_compile_killed_then_compiled_again_leaves_one_whole_project(micro, tmp_path,
                                                                    kill_when):
    out = tmp_path / "build"
    process = _compile_process(micro, out)
    wanted = {"lock": ".build.m3c-lock", "staging": ".build.m3c-stage-",
              "late": "report"}[kill_when]
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        names = [p.name for p in tmp_path.iterdir()]
        staged = list(tmp_path.glob(".build.m3c-stage-*/*"))
        if kill_when == "late":
            if any(p.name == wanted for p in staged):
                break
        elif any(name.startswith(wanted) for name in names):
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL  # killed mid-compile, not after it
    assert not out.exists() and _hidden(tmp_path)  # nothing at -o, leftovers beside it
    again = _compile_process(micro, out)
    _, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert _hidden(tmp_path) == [] and (out / "project.json").is_file()
    assert (out / "hls" / "ap_types" / "ap_fixed.h").is_file()


def test_sigterm_during_compile_removes_its_staging(micro, tmp_path):
    process = _compile_process(micro, tmp_path / "build")
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if list(tmp_path.glob(".build.m3c-stage-*")):
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in stderr, stderr
    assert _hidden(tmp_path) == [] and not (tmp_path / "build").exists()


def test_force_killed_mid_replace_restores_or_replaces_never_half(micro, tmp_path):
    out = tmp_path / "build"
    code, _, stderr = run_cli(["--quiet", "compile", str(micro), "-o", str(out)])
    assert code == 0, stderr
    files = sorted(p.relative_to(out) for p in out.rglob("*"))
    # What a --force run killed between its two renames leaves: the old project set aside
    # under the run's pid, the new one still staged, nothing at -o.
    os.rename(out, tmp_path / ".build.m3c-old-999999")
    (tmp_path / ".build.m3c-stage-999999").mkdir()
    (tmp_path / ".build.m3c-stage-999999" / "project.json").write_text("{")
    refused(["compile", str(micro), "-o", str(out)], "--force")  # the old one is back
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == files
    assert _hidden(tmp_path) == []
    code, _, stderr = run_cli(["--quiet", "compile", str(micro), "-o", str(out), "--force"])
    assert code == 0, stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == files
    assert _hidden(tmp_path) == []


# --- 8. self-contained projects -------------------------------------------------------------

@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None,
                    reason="needs g++ and make")
@pytest.mark.parametrize("precision", ["float", "fixed"])
def test_make_csim_works_from_a_plain_shell(compiled, tmp_path, precision):
    copy = _copy(compiled("micro-nyud", "multi", precision)[1], tmp_path)
    headers = copy / "hls" / "ap_types"
    assert "Apache License" in (headers / "LICENSE").read_text()
    assert not (headers / "hls_stream.h").exists()  # ours, in hls/csim, is the one used
    assert "python" not in (copy / "Makefile").read_text().lower()
    # A plain shell: the system PATH, no venv, no PYTHONPATH.
    environment = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(["make", "-s", "-C", str(copy), "csim"], env=environment,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASS") == 2
    # the ap_types print run-time warnings (e.g. mixed-width `|=`) the kernel must not cause
    assert "WARNING" not in result.stdout + result.stderr
