"""C-simulation with g++ alone: the generated kernel as a testbench binary or a shared library.

The Xilinx ap_types headers (Apache-2.0) are the project's copy in hls/ap_types, taken from the
hls4ml wheel at compile time; they are included with -isystem so their warnings stay out of the
way. hls::stream comes from m3c's own
header in the project's hls/csim/, searched first (the wheel carries one too). Builds are
cached by a hash of the sources and flags, so loading the same project twice compiles once.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from m3c.errors import CodegenError

CXXFLAGS = ["-std=c++14", "-O3", "-pthread", "-Wall", "-Wextra", "-fPIC"]
# Several projects' kernels live in one Python process: keep each library's symbols (and the
# static buffers of its inline units, which g++ would otherwise make process-wide "unique")
# to itself; only the C API is exported.
SHARED_FLAGS = ["-shared", "-fvisibility=hidden", "-fvisibility-inlines-hidden",
                "-fno-gnu-unique"]
KERNEL_SOURCES = ["hls/src/kernel.cpp", "hls/src/csim_api.cpp"]
CSIM_INCLUDE = "hls/csim"
AP_TYPES_DIR = "hls/ap_types"  # the project's own copy of the headers (m3c.project.compile)


def ap_types_dir() -> Path:
    """The ap_types headers shipped inside the hls4ml wheel (found without importing it)."""
    spec = importlib.util.find_spec("hls4ml")
    if spec is None or not spec.submodule_search_locations:
        raise CodegenError("the Xilinx ap_types headers are missing",
                           remedy="pip install hls4ml (they ship inside its wheel)")
    path = Path(next(iter(spec.submodule_search_locations))) / "templates" / "vivado" / "ap_types"
    if not (path / "ap_fixed.h").is_file():
        raise CodegenError(f"no ap_fixed.h under {path}", remedy="reinstall hls4ml")
    return path


def ap_types_license() -> Path:
    """The Apache-2.0 license text that covers the ap_types headers (the hls4ml wheel's)."""
    import importlib.metadata

    try:
        files = importlib.metadata.distribution("hls4ml").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name == "LICENSE" and ".dist-info" in str(entry):
            return Path(entry.locate())
    raise CodegenError("the hls4ml wheel's license file is missing",
                       remedy="reinstall hls4ml (its ap_types headers ship with it)")


def project_ap_types(project: Path) -> Path:
    """The project's own ap_types copy; the wheel's for projects compiled before it had one."""
    own = project / AP_TYPES_DIR
    return own if (own / "ap_fixed.h").is_file() else ap_types_dir()


def cache_dir() -> Path:
    root = os.environ.get("M3C_CACHE_DIR") or Path.home() / ".cache" / "m3c"
    path = Path(root) / "csim"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _compiler() -> str:
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise CodegenError("g++ not found", remedy="install g++ (apt-get install g++)")
    return compiler


def compile_command(project: Path, sources: list[str], output: Path, shared: bool) -> list[str]:
    return [_compiler(), *CXXFLAGS, *(SHARED_FLAGS if shared else []),
            "-I", str(project / CSIM_INCLUDE), "-isystem", str(project_ap_types(project)),
            "-I", str(project / "hls/src"),
            *[str(project / s) for s in sources], "-o", str(output)]


def _digest(project: Path, sources: list[str], shared: bool, flags: list[str]) -> str:
    digest = hashlib.sha256(" ".join(CXXFLAGS + SHARED_FLAGS + [str(shared)] + flags).encode())
    headers = sorted((project / "hls/src").iterdir()) + sorted((project / CSIM_INCLUDE).iterdir())
    for path in headers + [project / s for s in sources]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def build(project: str | os.PathLike, sources: list[str] | None = None,
          shared: bool = True, traced: bool = False) -> Path:
    """Compile (or reuse) the kernel; returns the shared library or executable."""
    project = Path(project)
    sources = sources or KERNEL_SOURCES
    flags = ["-DM3C_TRACE"] if traced else []
    digest = _digest(project, sources, shared, flags)
    target = cache_dir() / f"m3c-{digest}{'.so' if shared else ''}"
    if target.exists():
        return target
    partial = target.with_name(target.name + f".{os.getpid()}.partial")
    command = compile_command(project, sources, partial, shared)
    result = subprocess.run(command[:1] + flags + command[1:], capture_output=True, text=True)
    if result.returncode != 0:
        raise CodegenError(f"g++ failed on {project}:\n{result.stderr[-2000:]}")
    os.replace(partial, target)
    return target


class CSimKernel:
    """The C-simulated accelerator: the DDR weight words as the board holds them; images and
    features in float."""

    def __init__(self, library: Path, weights: np.ndarray) -> None:
        self.library_path = library
        self._lib = ctypes.CDLL(str(library))
        self._lib.m3c_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                      ctypes.c_int]
        self.weights = np.ascontiguousarray(weights).view(np.uint8)
        words = self._lib.m3c_weight_words()
        if self.weights.size % words or self.weights.size // words not in (16, 32, 64):
            raise CodegenError(f"weights.bin holds {self.weights.size} bytes, the kernel reads "
                               f"{words} words", remedy="recompile the project")
        self.feature_elements = self._lib.m3c_feature_elements()
        self.image_elements = self._lib.m3c_image_elements()
        self.traced = hasattr(self._lib, "m3c_trace_record")

    def run(self, image: np.ndarray, task: int) -> np.ndarray:
        image = np.ascontiguousarray(image, np.float32)
        if image.size != self.image_elements:
            raise CodegenError(f"image has {image.size} values, kernel expects "
                               f"{self.image_elements}")
        features = np.zeros(self.feature_elements, np.float32)
        status = self._lib.m3c_run(self.weights.ctypes.data, image.ctypes.data,
                                   features.ctypes.data, int(task))
        if status == 3:
            raise CodegenError("the C-simulated kernel deadlocked in a dataflow region (its "
                               "FIFOs are bounded at their declared depths)",
                               remedy="see the stream named on stderr; deepen it")
        if status != 0:
            raise CodegenError(f"kernel refused task {task}")
        return features

    def trace(self, calls: int) -> list[dict]:
        """Per kernel.json call since the last reset: DDR beats per bundle, array cycles (a
        library built with `traced=True`)."""
        record = (ctypes.c_longlong * 4)()
        rows = []
        for call in range(calls):
            if self._lib.m3c_trace_record(call, record) != 0:
                record = (ctypes.c_longlong * 4)()
            rows.append({"ddr_beats": {"gmem_w": record[0], "gmem_in": record[1],
                                       "gmem_out": record[2]}, "array_cycles": record[3]})
        return rows

    def reset_trace(self) -> None:
        self._lib.m3c_trace_reset()


def load(project: str | os.PathLike, traced: bool = False) -> CSimKernel:
    """Build (cached) and load a compiled project's kernel for calls from Python; `traced`
    builds it with the C-simulation trace (m3c_trace.h)."""
    project = Path(project)
    weights = np.fromfile(project / "weights" / "weights.bin", dtype=np.uint8)
    return CSimKernel(build(project, traced=traced), weights)
