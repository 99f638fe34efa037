"""TVM as an independent second oracle (and the CPU baseline a user might otherwise pick).

onnxruntime checks every stage in `m3c verify`; if onnxruntime itself mis-executed an op, every
stage would agree with the wrong answer. TVM imports the same ONNX through its own frontend
(Relax), compiles it with LLVM and runs it in its own VM, so it shares no kernels with
onnxruntime: where the two agree, a bug in either is unlikely to hide one of ours.

Needs the `tvm` extra (`pip install 'm3c[tvm]'`, apache-tvm 0.27.0.post1). Two pitfalls of
that frontend shape this module: it dispatches on the op type alone, ignoring the node's domain
(an `m3c::Attention` went to Microsoft's Attention converter and died on an assertion), so only
graphs whose every node is in a standard domain are handed to it; and targets are given in the
JSON form, which this release accepts where some string spellings fail.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import numpy as np
import onnx

from m3c.errors import M3CError

# The ONNX domains whose ops the frontend converts by type; anything else is refused up front.
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
INSTALL_REMEDY = "install the extra: pip install 'm3c[tvm]' (apache-tvm 0.27.0.post1)"


class TVMOracleError(M3CError):
    """TVM is missing, or cannot import, build or run a graph."""


def available() -> bool:
    """Whether the `tvm` extra is installed (without importing it: that takes seconds)."""
    return importlib.util.find_spec("tvm") is not None


def _tvm() -> ModuleType:
    if not available():
        raise TVMOracleError("TVM is not installed", remedy=INSTALL_REMEDY)
    import tvm
    import tvm.relax  # noqa: F401  (registers the Relax VM and build pipeline)

    return tvm


def check_standard_domains(model: onnx.ModelProto, label: str = "the model") -> None:
    """Refuse a graph with any node outside the standard ONNX domains, naming the first."""
    for node in model.graph.node:
        if node.domain not in STANDARD_DOMAINS:
            raise TVMOracleError(
                f"{label}: node {node.name or '(unnamed)'!r} is {node.domain}::{node.op_type}, "
                "not a standard ONNX op, so TVM cannot be its oracle",
                remedy="give TVM the original exported model or a host head graph; m3c ops "
                       "are checked against onnxruntime only")


def host_target():
    """The LLVM target for this machine's CPU, in the JSON form TVM 0.27 accepts."""
    tvm = _tvm()
    from tvm.target import codegen

    return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})


def set_threads(threads: int) -> None:
    """Size TVM's runtime thread pool, which runs the compiled code's parallel loops (it
    otherwise sizes itself from the machine)."""
    config = _tvm().get_global_func("runtime.config_threadpool")
    config(1, threads)  # mode 1: big cores first, which on a homogeneous CPU means any


def second_oracle(model: onnx.ModelProto, label: str, required: bool
                  ) -> tuple[TVMModel | None, str | None]:
    """TVM's compiled `model`, or (None, why in one line) when TVM cannot read or build it:
    a second oracle that cannot read a model is no disagreement, so onnxruntime's verdict
    stands, unless the user asked for TVM alone (`required`: the error is raised)."""
    try:
        return TVMModel(model, label=label), None
    except TVMOracleError as error:
        if required:
            raise
        return None, f"TVM was not used for {label}: {error.message.splitlines()[0]}"


class TVMModel:
    """A standard-domain ONNX model compiled by TVM's default Relax pipeline for the CPU."""

    def __init__(self, model: onnx.ModelProto, label: str = "the model") -> None:
        check_standard_domains(model, label)
        tvm = _tvm()
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        initializers = {init.name for init in model.graph.initializer}
        self.input_names = [v.name for v in model.graph.input if v.name not in initializers]
        self.output_names = [v.name for v in model.graph.output]
        self.label = label
        try:
            module = from_onnx(model, keep_params_in_input=False)
        except Exception as error:  # any converter failure: name the graph and what TVM said
            raise TVMOracleError(f"TVM's ONNX frontend cannot import {label}: "
                                 f"{_first_line(error)}",
                                 remedy="run verify with --oracle ort") from error
        try:
            executable = tvm.compile(module, target=host_target())
        except Exception as error:
            raise TVMOracleError(f"TVM cannot build {label}: {_first_line(error)}",
                                 remedy="run verify with --oracle ort") from error
        self._device = tvm.cpu()
        self._machine = relax.VirtualMachine(executable, self._device)
        self._tensor = tvm.runtime.tensor

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of the model for `feeds` (a dict by input name, as for onnxruntime)."""
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise TVMOracleError(f"{self.label}: no value for inputs {missing}")
        args = [self._tensor(np.asarray(feeds[name], order="C"), self._device)
                for name in self.input_names]
        try:
            results = self._machine["main"](*args)
        except Exception as error:
            raise TVMOracleError(f"TVM failed running {self.label}: {_first_line(error)}",
                                 remedy="run verify with --oracle ort") from error
        # One output comes back as a tensor, several as an array of tensors.
        values = [results] if hasattr(results, "numpy") else list(results)
        return {name: value.numpy() for name, value in
                zip(self.output_names, values, strict=True)}


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[-1] if "Traceback" in text else text.splitlines()[0]
