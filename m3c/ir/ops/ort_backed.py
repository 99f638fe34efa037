"""Standard ops the reference evaluator runs slowly, delegated to onnxruntime node by node.

Graphs that still hold task heads (full-resolution convolutions and resizes) run in
`onnx.reference` once they contain m3c ops; its pure-numpy Conv and Resize dominate the
time. These replacements run the very same node in an onnxruntime session.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx.reference.op_run import OpRun

_SESSIONS: dict[bytes, object] = {}


def _session(node: onnx.NodeProto, inputs: list[np.ndarray]):
    names = [name for name in node.input if name]
    key = node.SerializeToString() + repr([(a.dtype.str, a.shape) for a in inputs]).encode()
    if key not in _SESSIONS:
        from m3c.ir.sessions import OPSET, ort_session

        value_infos = [onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)
            for name, array in zip(names, inputs, strict=True)]
        # Conv and Resize return the element type of their first input.
        outputs = [onnx.helper.make_tensor_value_info(name, value_infos[0].type.tensor_type
                                                      .elem_type, None)
                   for name in node.output]
        graph = onnx.helper.make_graph([node], "node", value_infos, outputs)
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        _SESSIONS[key] = ort_session(model)
    return _SESSIONS[key], names


class _OrtNode(OpRun):
    op_domain = ""

    def _run(self, *inputs, **attributes):
        del attributes  # the NodeProto carries them
        present = [array for array in inputs if array is not None]
        session, names = _session(self.onnx_node, present)
        return tuple(session.run(None, dict(zip(names, present, strict=True))))


class Conv(_OrtNode):
    pass


class Resize(_OrtNode):
    pass


ORT_BACKED = [Conv, Resize]
