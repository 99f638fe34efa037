"""Transposes that move only size-1 axes -> Reshape: the same data order, and a view the
accelerator runs for free (nn.MultiheadAttention swaps the batch and sequence axes of a batch
of one around its attention). Run by FuseAttention once no attention is left to fuse."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from m3c.ir.graph import fresh_name


def _moves_only_unit_axes(node: gs.Node) -> bool:
    shape = node.inputs[0].shape
    perm = node.attrs.get("perm")
    if shape is None or perm is None or not all(isinstance(d, int) for d in shape):
        return False
    kept = [axis for axis in perm if shape[axis] != 1]
    return kept == sorted(kept)


def simplify_unit_transpose(graph: gs.Graph) -> bool:
    """Rewrite one such Transpose as a Reshape; False when there is none."""
    for node in graph.nodes:
        if node.op == "Transpose" and node.outputs[0].shape is not None \
                and _moves_only_unit_axes(node):
            shape = gs.Constant(fresh_name(graph, f"{node.name}.shape"),
                                np.array(node.outputs[0].shape, np.int64))
            node.op, node.attrs = "Reshape", {}
            node.inputs.append(shape)
            return True
    return False
