"""`Accelerator`: open a compiled project on a backend, switch tasks, run images.

Backends: `pynq` (the ZCU104 through PYNQ), `csim` (the C-simulated kernel behind a simulated
register file and DDR: the pynq backend's code path, here) and `reference` (the kernel's call
sequence in numpy, in the project's hardware types).
"""

from __future__ import annotations

import ctypes
import importlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .ddr import decode, encode
from .drivers import PynqDriver, SimulatedDevice, SimulatedDriver
from .errors import AcceleratorError
from .heads import Heads
from .preprocess import check_image, preprocess
from .project import Project
from .session import KernelSession


class CSimKernelFunction:
    """The C-simulated kernel called on the simulated DDR's words (through its C ABI)."""

    def __init__(self, project: Project) -> None:
        from m3c.project import csim  # needs the m3c compiler and g++: not on the board

        if not (project.root / "hls" / "src" / "kernel.cpp").is_file():
            raise AcceleratorError(f"{project.root}/hls/src/kernel.cpp is missing: the csim "
                                   "backend compiles the project's kernel sources",
                                   remedy="recompile the project, or use --backend reference")
        self.project = project
        self.lib = ctypes.CDLL(str(csim.build(project.root)))
        self.lib.m3c_run.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int]
        lanes = self.lib.m3c_weight_words() * int(project.manifest["ddr"]["port_lanes"])
        if lanes != project.elements["weights"]:
            raise AcceleratorError(f"{project.root}: kernel reads {lanes} weight lanes, "
                                   f"project.json says {project.elements['weights']}",
                                   remedy="recompile the project")

    def __call__(self, buffers: dict[str, np.ndarray], task: int) -> None:
        # m3c_run takes the weight words as DDR holds them, image and features as floats.
        weights = np.ascontiguousarray(buffers["weights"])
        image = decode(buffers["image"], self.project.data_word)
        features = np.zeros(int(np.prod(self.project.features_shape)), np.float32)
        status = self.lib.m3c_run(weights.ctypes.data, image.ctypes.data, features.ctypes.data,
                                  int(task))
        if status == 3:
            raise AcceleratorError("the C-simulated kernel deadlocked in a dataflow region",
                                   remedy="see the stream named on stderr")
        if status != 0:
            raise AcceleratorError(f"the C-simulated kernel refused task {task}")
        buffers["features"][:] = self.project.lanes_from_features(
            encode(features, self.project.data_word))


class ReferenceEngine:
    """The numpy emulator of the kernel (runtime/emulator.py)."""

    def __init__(self, project: Project) -> None:
        from .emulator import KernelEmulator

        self.emulator = KernelEmulator.from_project(project.root)

    def run(self, image: np.ndarray, task: int) -> np.ndarray:
        return np.asarray(self.emulator.run(image, task), np.float32).ravel()

    def close(self) -> None:
        """Nothing to release: the emulator holds only numpy arrays."""


def _csim_engine(project: Project, timeout: float, options: dict[str, Any]) -> KernelSession:
    del options
    device = SimulatedDevice(project.register_map, CSimKernelFunction(project))
    return KernelSession(project, SimulatedDriver(device), timeout)


def _pynq_engine(project: Project, timeout: float, options: dict[str, Any]) -> KernelSession:
    """Options: `bitstream` (default overlay/m3c.bit), `ip_name`, `pynq` (a stand-in module)."""
    pynq = options.get("pynq") or _import_pynq()
    bitstream = options.get("bitstream") or str(project.root / "overlay" / "m3c.bit")
    ip_name = options.get("ip_name") or project.register_map["kernel"] + "_0"
    return KernelSession(project, PynqDriver(pynq, bitstream, ip_name), timeout)


def _reference_engine(project: Project, timeout: float, options: dict[str, Any]):
    del timeout, options
    return ReferenceEngine(project)


ENGINES = {"csim": _csim_engine, "reference": _reference_engine, "pynq": _pynq_engine}
BACKENDS = tuple(ENGINES)


def _import_pynq():
    try:
        return importlib.import_module("pynq")
    except ImportError as error:
        raise AcceleratorError("the pynq backend needs the pynq package (on the board)",
                               remedy="run on a PYNQ image, or use --backend csim") from error


@dataclass(frozen=True)
class TaskRun:
    """One task's output for an image and what it cost on this host."""

    output: np.ndarray  # the head's [1,C,H,W]
    kernel_s: float | None  # None: the features of an earlier task's kernel run were reused
    head_s: float


class Accelerator:
    """A compiled M3ViT encoder on one backend, with its task heads on the host."""

    def __init__(self, project: Project, engine, backend: str) -> None:
        self.project, self.engine, self.backend = project, engine, backend
        self.heads = Heads(project.root / "host" / "heads", project.tasks)
        self.task = project.tasks[0]
        self.timing: dict[str, float] = {}

    @classmethod
    def open(cls, project_dir: str | Path, backend: str = "csim", *, timeout: float = 10.0,
             **options: Any) -> Accelerator:
        """Load the project, allocate buffers and write the weights (once)."""
        if backend not in BACKENDS:
            raise AcceleratorError(f"unknown backend {backend!r}",
                                   remedy="use " + ", ".join(BACKENDS))
        project = Project.load(project_dir)
        engine = ENGINES[backend](project, timeout, options)
        try:
            return cls(project, engine, backend)
        except BaseException:
            engine.close()
            raise

    @property
    def tasks(self) -> list[str]:
        return list(self.project.tasks)

    def switch_task(self, task: int | str) -> None:
        """Select the task of later runs: only the kernel's `task` scalar changes."""
        self.task = self.project.tasks[self.project.task_index(task)]

    def prepare(self, picture: np.ndarray) -> np.ndarray:
        """uint8 [H,W,3] pixels -> the normalised float32 input at the compiled size."""
        return preprocess(picture, self.project.image_shape, self.project.manifest["config"])

    def features(self, image: np.ndarray, task: int | str | None = None) -> np.ndarray:
        """The encoder output (features_shape) of a float32 image for a task."""
        index = self.project.task_index(self.task if task is None else task)
        image = check_image(image, self.project.image_shape,
                            f"{self.project.root} task {self.project.tasks[index]}")
        start = time.perf_counter()
        features = self.engine.run(image, index)
        self.timing["kernel_s"] = time.perf_counter() - start
        return features.reshape(self.project.features_shape)

    def run(self, image: np.ndarray, task: int | str | None = None) -> np.ndarray:
        """The task's output [1,C,H,W] (logits or values) for a float32 image."""
        name = self.project.tasks[self.project.task_index(self.task if task is None else task)]
        return self._head(name, self.features(image, name))

    def run_tasks(self, image: np.ndarray,
                  tasks: Sequence[int | str] | None = None) -> dict[str, TaskRun]:
        """Several tasks (default: all) on one float32 image, by task name. With a router
        shared by all tasks the features are the same for each, so the kernel runs once and
        every head reads its features; with per-task routing it runs once per task (switching
        costs one register write)."""
        names = [self.project.tasks[self.project.task_index(task)]
                 for task in (self.tasks if tasks is None else tasks)]
        runs: dict[str, TaskRun] = {}
        features = None
        for name in names:
            kernel_s = None
            if features is None or not self.project.shared_encoder:
                features = self.features(image, name)
                kernel_s = self.timing["kernel_s"]
            output = self._head(name, features)
            runs[name] = TaskRun(output, kernel_s, self.timing["head_s"])
        return runs

    def _head(self, task: str, features: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        output = self.heads.run(task, features)
        self.timing["head_s"] = time.perf_counter() - start
        return output

    def run_batch(self, images, task: int | str | None = None) -> np.ndarray:
        """Several images ([N,C,H,W] or a list of [C,H,W]) one after another, outputs stacked."""
        outputs = [self.run(image, task) for image in images]
        if not outputs:
            raise AcceleratorError("run_batch got no images", remedy="pass [N,C,H,W] with N>=1")
        return np.concatenate(outputs)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Accelerator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
