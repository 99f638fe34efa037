"""Host runtime: backends against onnxruntime, the register protocol, errors, CLI, board copy."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from m3c import M3CError
from m3c.cli import main as cli_main
from m3c.ir.sessions import ort_session
from m3c.runtime import Accelerator
from m3c.runtime.drivers import AP_START, SimulatedDevice
from m3c.runtime.pictures import read_picture, write_png

FLOAT_TOLERANCE = 1e-4
FIXED_RELATIVE_RMSE = 0.02  # the code-generation issue's fixed-vs-float bound


def _oracle(model_path: Path, project: Path):
    """onnxruntime on the original model, returning task outputs and the encoder output."""
    proto = onnx.load(str(model_path))
    manifest = json.loads((project / "project.json").read_text())
    boundary = manifest["features_tensor"]
    proto.graph.output.append(onnx.helper.make_tensor_value_info(boundary, 1, None))
    session = ort_session(proto)
    names = [o.name for o in session.get_outputs()]

    def run(image: np.ndarray, task: int) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"image": image}
        if len(manifest["tasks"]) > 1:
            feeds["task"] = np.array(task, dtype=np.int64)
        outputs = dict(zip(names, session.run(None, feeds), strict=True))
        return outputs[boundary], outputs[manifest["tasks"][task]]

    return run


def _image(project: Path, seed: int) -> np.ndarray:
    shape = json.loads((project / "project.json").read_text())["image_shape"]
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _relative_rmse(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.sqrt(np.mean((got - want) ** 2)) / np.sqrt(np.mean(want ** 2)))


@pytest.mark.parametrize("preset, gate, precision", [
    ("micro-nyud", "multi", "float"), ("micro-pascal", "task", "float"),
    ("micro-nyud", "multi", "fixed"), ("micro-pascal", "task", "fixed")])
def test_csim_backend_in_any_task_order(compiled, preset, gate, precision):
    """Float: onnxruntime within 1e-4. Fixed: the reference backend bit for bit, onnxruntime
    within the fixed-point bound."""
    model_path, project = compiled(preset, gate, precision)
    oracle = _oracle(model_path, project)
    with Accelerator.open(project, backend="csim") as accelerator, \
            Accelerator.open(project, backend="reference") as reference:
        tasks = accelerator.tasks
        order = np.random.default_rng(3).permutation(np.repeat(np.arange(len(tasks)), 2))
        for step, task in enumerate(order):
            image = _image(project, step)
            accelerator.switch_task(tasks[task])
            output = accelerator.run(image)
            features, want = oracle(image, int(task))
            if precision == "float":
                assert np.abs(accelerator.features(image) - features).max() <= FLOAT_TOLERANCE
                assert np.abs(output - want).max() <= FLOAT_TOLERANCE
            else:
                np.testing.assert_array_equal(accelerator.features(image),
                                              reference.features(image, int(task)))
                assert _relative_rmse(output, want) <= FIXED_RELATIVE_RMSE
        driver = accelerator.engine.driver
        # Weights went to DDR once; each run writes one image; task switches are register writes.
        assert driver.buffer_writes["weights"] == 1
        assert driver.buffer_writes["image"] == 2 * len(order)
        task_offset = _argument(project, "task")["offset"]
        task_writes = [v for offset, v in driver.device.writes if offset == task_offset]
        changes = [int(t) for i, t in enumerate(order) if i == 0 or order[i - 1] != t]
        assert task_writes == changes


def test_run_batch_equals_single_runs(compiled):
    _, project = compiled("micro-nyud", "multi")
    images = np.stack([_image(project, s)[0] for s in range(3)])
    with Accelerator.open(project, backend="csim") as accelerator:
        batch = accelerator.run_batch(images, task="depth")
        single = [accelerator.run(image[None], task="depth") for image in images]
    np.testing.assert_array_equal(batch, np.concatenate(single))


def _argument(project: Path, name: str) -> dict:
    registers = json.loads((project / "hls" / "register_map.json").read_text())
    return next(a for a in registers["arguments"] if a["name"] == name)


def test_register_map_follows_vitis_hls_rules(compiled):
    _, project = compiled("micro-nyud", "multi")
    registers = json.loads((project / "hls" / "register_map.json").read_text())
    assert registers["control"] == {"AP_CTRL": 0x00, "GIE": 0x04, "IER": 0x08, "ISR": 0x0C}
    # UG1399: pointers (64-bit, offset=slave) take 3 words, 32-bit scalars 2, from 0x10 on,
    # in the order of kernel.h's declaration.
    header = (project / "hls" / "src" / "kernel.h").read_text()
    declared = header[header.index("m3c_kernel("):header.index(");")]
    offset = 0x10
    for argument, text in zip(registers["arguments"], declared.split(","), strict=True):
        assert text.strip().endswith(argument["name"])
        assert argument["offset"] == offset
        offset += 12 if "*" in text else 8
    assert json.loads((project / "host" / "register_map.json").read_text()) == registers


class FakeBuffer(np.ndarray):
    """What pynq.allocate returns: an ndarray with a physical address and cache calls."""

    def flush(self) -> None:
        self.flushes = getattr(self, "flushes", 0) + 1

    def invalidate(self) -> None:
        """Nothing cached in the simulation."""

    def freebuffer(self) -> None:
        self.sim.release(self.physical_address)


class FakePynq:
    """pynq's Overlay/allocate over a SimulatedDevice running the C-simulated kernel."""

    def __init__(self, device: SimulatedDevice) -> None:
        self.device = device
        self.loaded: list[str] = []

    def Overlay(self, bitstream: str):  # noqa: N802  (pynq's name)
        self.loaded.append(bitstream)
        device = self.device

        class IP:
            def write(self, offset: int, value: int) -> None:
                device.write(offset, value)

            def read(self, offset: int) -> int:
                return device.read(offset)

        class Overlay:
            ip_dict = {"m3c_kernel_0": {"type": "m3c:m3c:m3c_kernel:1.0"}}
            m3c_kernel_0 = IP()

        return Overlay()

    def allocate(self, shape, dtype):
        address, array = self.device.allocate(shape[0], dtype)
        buffer = array.view(FakeBuffer)
        buffer.physical_address, buffer.sim = address, self.device
        return buffer


def test_pynq_backend_register_writes_match_register_map(compiled):
    from m3c.runtime.accelerator import CSimKernelFunction
    from m3c.runtime.project import Project

    _, project = compiled("micro-nyud", "multi", "fixed")
    registers = json.loads((project / "hls" / "register_map.json").read_text())
    kernel = CSimKernelFunction(Project.load(project))
    device = SimulatedDevice(registers, kernel, next_address=0x8_1234_0000)  # above 4 GiB
    pynq = FakePynq(device)
    image = _image(project, 5)
    with Accelerator.open(project, backend="pynq", pynq=pynq) as accelerator:
        buffers = accelerator.engine.buffers
        setup = list(device.writes)
        outputs = [accelerator.run(image, task) for task in ("depth", "depth", "semseg")]
        assert device.memory  # buffers live while open
    assert not device.memory  # ... and are freed on close
    assert pynq.loaded == [str(project / "overlay" / "m3c.bit")]
    expected = []
    for argument in registers["arguments"]:
        if argument["kind"] == "pointer":
            name = {"act_in": "arena", "act_out": "arena"}.get(argument["name"],
                                                              argument["name"])
            address = buffers[name].address
            expected += [(argument["words"][0], address & 0xFFFFFFFF),
                         (argument["words"][1], address >> 32)]
    assert setup == expected
    task = _argument(project, "task")["offset"]
    assert device.writes[len(setup):] == [(task, 1), (0, AP_START), (0, AP_START),
                                          (task, 0), (0, AP_START)]
    assert buffers["weights"].handle.flushes == 1
    assert buffers["weights"].dtype == "int16"  # ap_fixed<16,..> words, as the kernel reads
    with Accelerator.open(project, backend="reference") as reference:
        for output, task in zip(outputs, ("depth", "depth", "semseg"), strict=True):
            np.testing.assert_array_equal(output, reference.run(image, task))


def test_kernel_that_never_finishes_times_out_cleanly(compiled):
    _, project = compiled("micro-nyud", "multi")
    from m3c.runtime.accelerator import CSimKernelFunction
    from m3c.runtime.drivers import SimulatedDriver
    from m3c.runtime.project import Project
    from m3c.runtime.session import KernelSession

    loaded = Project.load(project)
    device = SimulatedDevice(loaded.register_map, CSimKernelFunction(loaded), hang=True)
    accelerator = Accelerator(loaded, KernelSession(loaded, SimulatedDriver(device), 0.05),
                              "csim")
    with pytest.raises(M3CError, match="did not finish within 0.05 s"):
        accelerator.run(_image(project, 0), "semseg")
    with pytest.raises(M3CError, match="still busy"):
        accelerator.run(_image(project, 0), "semseg")
    assert device.starts == 1  # a wedged kernel is not started again
    accelerator.close()
    assert not device.memory
    with pytest.raises(M3CError, match="closed"):
        accelerator.run(_image(project, 0), "semseg")


def test_bad_inputs_raise_and_leave_the_accelerator_usable(compiled):
    _, project = compiled("micro-nyud", "multi")
    image = _image(project, 1)
    with Accelerator.open(project, backend="csim") as accelerator:
        device = accelerator.engine.driver.device
        before = accelerator.run(image, "depth")
        writes = len(device.writes)
        for bad, match in [(image[:, :, :-1], "shape"), (image.astype(np.float64), "dtype"),
                           (image.tolist(), "dtype"), (image * np.nan, "NaN")]:
            with pytest.raises(M3CError, match=match):
                accelerator.run(bad, "depth")
        for task in ("normals", 2, -1, True):
            with pytest.raises(M3CError, match=r"(?s)unknown task .*use one of semseg, depth"):
                accelerator.switch_task(task)
        assert accelerator.task == "semseg" and len(device.writes) == writes
        np.testing.assert_array_equal(accelerator.run(image, "depth"), before)


@pytest.mark.parametrize("remove, match", [
    ("project.json", "project.json is missing"),
    ("hls/register_map.json", "register_map.json is missing"),
    ("weights/weights*.bin", r"weights/weights\.bin is missing"),
    ("host/heads/depth.onnx", "task heads missing .*depth"),
])
def test_missing_project_files(compiled, tmp_path, remove, match):
    _, project = compiled("micro-nyud", "multi")
    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    for path in copy.glob(remove):
        path.unlink()
    if remove == "project.json":
        (copy / "host" / "project.json").unlink()
    elif remove == "hls/register_map.json":
        (copy / "host" / "register_map.json").unlink()
    with pytest.raises(M3CError, match=match):
        Accelerator.open(copy, backend="csim")
    with pytest.raises(M3CError, match="does not exist"):
        Accelerator.open(tmp_path / "nowhere", backend="csim")


def _png_with_filters(pixels: np.ndarray) -> bytes:
    """An RGB PNG whose scanlines cycle through all five filters (encoded per the spec)."""
    height, width, bpp = pixels.shape
    rows = pixels.reshape(height, -1).astype(np.int64)
    lines = []
    for y in range(height):
        up = rows[y - 1] if y else np.zeros_like(rows[0])
        left = np.concatenate([np.zeros(bpp, np.int64), rows[y][:-bpp]])
        corner = np.concatenate([np.zeros(bpp, np.int64), up[:-bpp]])
        p = left + up - corner
        pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - corner)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, corner))
        predictors = [0, left, up, (left + up) // 2, paeth]
        kind = y % 5
        lines.append(bytes([kind]) + ((rows[y] - predictors[kind]) % 256).astype(
            np.uint8).tobytes())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"".join(lines))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body[:10])
            + chunk(b"IDAT", body[10:]) + chunk(b"IEND", b""))


def test_pictures_read_every_png_filter_and_round_trip(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (11, 7, 3), dtype=np.uint8)
    (tmp_path / "filters.png").write_bytes(_png_with_filters(pixels))
    np.testing.assert_array_equal(read_picture(tmp_path / "filters.png"), pixels)
    write_png(tmp_path / "grey.png", pixels[:, :, 0])
    np.testing.assert_array_equal(read_picture(tmp_path / "grey.png")[:, :, 0], pixels[:, :, 0])
    (tmp_path / "bad.png").write_bytes(b"GIF89a")
    with pytest.raises(M3CError, match="cannot read"):
        read_picture(tmp_path / "bad.png")


def test_preprocessing_matches_torch_resize_and_training_normalisation():
    torch = pytest.importorskip("torch")
    from m3c.frontend.models import data
    from m3c.runtime.preprocess import IMAGE_MEAN, IMAGE_STD, preprocess, resize_bilinear

    assert (IMAGE_MEAN, IMAGE_STD) == (data.IMAGE_MEAN, data.IMAGE_STD)
    image = np.random.default_rng(1).random((3, 37, 53)).astype(np.float32)
    for size in [(48, 64), (20, 30), (37, 53)]:
        want = torch.nn.functional.interpolate(torch.from_numpy(image[None]), size=size,
                                               mode="bilinear", align_corners=False)[0]
        np.testing.assert_allclose(resize_bilinear(image, *size), want.numpy(), atol=1e-5)
    picture = (image.transpose(1, 2, 0) * 255).round().astype(np.uint8)
    tensor = preprocess(picture, (1, 3, 37, 53), {})
    np.testing.assert_allclose(tensor[0] * IMAGE_STD + IMAGE_MEAN, picture.transpose(2, 0, 1)
                               / 255.0, atol=1e-6)


def test_cli_run_all_tasks_writes_maps(compiled, tmp_path, capsys):
    model_path, project = compiled("micro-nyud", "multi")
    picture = np.random.default_rng(2).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    write_png(tmp_path / "scene.png", picture)
    out = tmp_path / "maps"
    assert cli_main(["run", str(project), "--image", str(tmp_path / "scene.png"),
                     "--all-tasks", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    with Accelerator.open(project, backend="csim") as accelerator:
        image = accelerator.prepare(picture)
    oracle = _oracle(model_path, project)
    for index, task in enumerate(("semseg", "depth")):
        assert task in printed
        want = oracle(image, index)[1][0]
        got = np.load(out / f"{task}.npy")
        if task == "semseg":
            np.testing.assert_array_equal(got, want.argmax(0))
            assert read_picture(out / f"{task}.png").shape == (*got.shape, 3)
        else:
            assert np.abs(got - want[0]).max() <= FLOAT_TOLERANCE
            assert read_picture(out / f"{task}.png").shape == (*got.shape, 1)


@pytest.mark.parametrize("arguments, message", [
    (["--task", "normals"], "unknown task 'normals'"),
    (["--image", "missing.png"], "missing.png does not exist"),
    (["--backend", "pynq"], "needs the pynq package"),
])
def test_cli_run_errors_exit_2(compiled, tmp_path, capsys, arguments, message):
    _, project = compiled("micro-nyud", "multi")
    image = ["--image", str(project / "data" / "input_task0.bin")]
    argv = ["run", str(project), *image, "-o", str(tmp_path), *arguments]
    assert cli_main(argv) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_board_copy_imports_with_numpy_alone_and_runs(compiled, tmp_path):
    _, project = compiled("micro-nyud", "multi")
    host = project / "host"
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import m3c_runtime; "
             "bad = [m for m in ('m3c', 'onnx', 'onnxruntime', 'torch', 'pynq') "
             "if m in sys.modules]; assert not bad, bad; "
             "assert m3c_runtime.AcceleratorError.__module__ == 'm3c_runtime.errors'")
    subprocess.run([sys.executable, "-c", probe, str(host)], check=True)
    result = subprocess.run(
        [sys.executable, str(host / "run_on_board.py"), "--backend", "csim", "--all-tasks",
         "--image", str(project / "data" / "input_task1.bin"), "-o", str(tmp_path)],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    want = np.load(project / "data" / "expected_depth.npy")[0, 0]
    assert np.abs(np.load(tmp_path / "depth.npy") - want).max() <= FLOAT_TOLERANCE
    result = subprocess.run([sys.executable, str(host / "run_on_board.py"), "--image", "x.png"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "needs the pynq package" in result.stderr
    for precision in ("float", "fixed"):
        host = compiled("micro-nyud", "multi", precision)[1] / "host"
        result = subprocess.run([sys.executable, str(host / "run_on_board.py"), "--self-test",
                                 "--backend", "csim"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:-1]}
        assert set(rows) == {"semseg", "depth"}
        assert all(row[-1] == "PASS" for row in rows.values())
        limit = 0.0 if precision == "fixed" else FLOAT_TOLERANCE
        assert max(float(row[2]) for row in rows.values()) <= limit


@pytest.mark.board
def test_on_the_board(compiled):
    pytest.importorskip("pynq")
    model_path, project = compiled("micro-nyud", "multi")
    oracle = _oracle(model_path, project)
    with Accelerator.open(project, backend="pynq") as accelerator:
        for index, task in enumerate(accelerator.tasks):
            image = _image(project, index)
            assert np.abs(accelerator.run(image, task) - oracle(image, index)[1]).max() < 1e-2


def test_pictures_of_other_formats_and_depths_read_as_8_bit(tmp_path):
    """JPEG and 16-bit PNG, as cameras and image tools write them (issue 26)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    deep = rng.integers(0, 65536, (5, 6), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(read_picture(tmp_path / "deep.png")[..., 0], deep >> 8)
    flat = np.full((8, 8, 3), 200, np.uint8)
    Image.fromarray(flat).save(tmp_path / "flat.jpg", quality=95)
    assert np.abs(read_picture(tmp_path / "flat.jpg").astype(int) - 200).max() <= 2
