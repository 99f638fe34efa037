"""Standard ops the reference evaluator delegates to onnxruntime run at their graph's opset:
a `dynamo=True` export's opset-18 Resize carries attributes opset 17 does not know (issue 26,
item 4)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from m3c.ir.ops import reference_ops
from m3c.ir.sessions import ort_session


def _resize_model(opset: int) -> onnx.ModelProto:
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, 2.0, 2.0])
    attributes = {"keep_aspect_ratio_policy": "stretch"} if opset >= 18 else {}
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear",
                            coordinate_transformation_mode="half_pixel", **attributes)
    graph = helper.make_graph(
        [node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 10])], [scales])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_an_opset_18_resize_runs_as_onnxruntime_runs_it():
    model = _resize_model(18)
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 5)).astype(np.float32)
    (want,) = ort_session(model).run(None, {"x": x})
    (got,) = ReferenceEvaluator(model, new_ops=reference_ops()).run(None, {"x": x})
    np.testing.assert_array_equal(got, want)
