"""Standard ops the reference evaluator runs slowly, delegated to onnxruntime node by node.

Graphs that still hold task heads (full-resolution convolutions and resizes) run in
`onnx.reference` once they contain m3c ops; its pure-numpy Conv and Resize dominate the
time. These replacements run the very same node in an onnxruntime session.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx.reference.op_run import OpRun

from m3c.ir.sessions import OPSET, ort_session

_SESSIONS: dict[bytes, object] = {}


def _session(node: onnx.NodeProto, inputs: list[np.ndarray], opset: int):
    names = [name for name in node.input if name]
    key = (node.SerializeToString() + repr([(a.dtype.str, a.shape) for a in inputs]).encode()
           + bytes([opset]))
    if key not in _SESSIONS:
        value_infos = [onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)
            for name, array in zip(names, inputs, strict=True)]
        # Conv and Resize return the element type of their first input.
        outputs = [onnx.helper.make_tensor_value_info(name, value_infos[0].type.tensor_type
                                                      .elem_type, None)
                   for name in node.output]
        graph = onnx.helper.make_graph([node], "node", value_infos, outputs)
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
        model.ir_version = 8
        _SESSIONS[key] = ort_session(model)
    return _SESSIONS[key], names


class _OrtNode(OpRun):
    op_domain = ""

    def _run(self, *inputs, **attributes):
        del attributes  # the NodeProto carries them
        present = [array for array in inputs if array is not None]
        # The node as its graph spelled it: a Resize of opset 18 has attributes 17 lacks.
        opset = self.run_params["opsets"].get("", OPSET)
        session, names = _session(self.onnx_node, present, max(opset, OPSET))
        return tuple(session.run(None, dict(zip(names, present, strict=True))))


class Conv(_OrtNode):
    pass


class Resize(_OrtNode):
    pass


ORT_BACKED = [Conv, Resize]
