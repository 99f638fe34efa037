"""onnxruntime sessions for the graphs m3c runs, and the opset m3c writes."""

from __future__ import annotations

import onnx

OPSET = 17


def ort_session(model: onnx.ModelProto, threads: int | None = None):
    """An onnxruntime CPU session that reports only errors and returns the memory a run
    used (its arena would keep the peak of every run, hundreds of MB on a MoE model); on
    `threads` threads (default: onnxruntime's, one per core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False
    if threads is not None:
        options.intra_op_num_threads = options.inter_op_num_threads = threads
    try:
        return ort.InferenceSession(model.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])
    except Exception as error:
        raise _ort_error(model, error) from error


def _ort_error(model: onnx.ModelProto, error: Exception) -> Exception:
    """onnxruntime's refusal as an M3CError naming the graph (other errors unchanged)."""
    if not type(error).__module__.startswith("onnxruntime"):
        return error
    from m3c.errors import OnnxRuntimeError

    text = str(error).strip()
    return OnnxRuntimeError(f"onnxruntime cannot load graph {model.graph.name or '?'!r}: "
                            f"{text.splitlines()[0] if text else type(error).__name__}",
                            remedy="check the model with onnx.checker; re-export it",
                            detail=text)
