"""Split a model into the encoder (accelerator) and one host graph per task head.

The boundary is the encoder's output token tensor: the last tensor of the token shape
[1, N+1, D] that every path from the image to the task outputs passes through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

from m3c.errors import LoweringError
from m3c.ir.graph import fresh_name, fresh_node_name

FEATURES = "features"


@dataclass
class Partition:
    accelerator: gs.Graph
    heads: dict[str, gs.Graph]
    boundary: str  # the encoder output's name in the original graph


def find_encoder_output(graph: gs.Graph) -> gs.Variable:
    """The last cut tensor with the token shape of the first encoder block."""
    token_shape = _token_shape(graph)
    flow = _tensor_flow(graph)
    sources = [t.name for t in graph.inputs]
    sinks = [t.name for t in graph.outputs]
    order = {id(node): i for i, node in enumerate(graph.nodes)}
    candidates = [t for t in graph.tensors().values()
                  if isinstance(t, gs.Variable) and t.shape is not None
                  and list(t.shape) == token_shape and len(t.inputs) == 1]
    for tensor in sorted(candidates, key=lambda t: -order[id(t.inputs[0])]):
        if _is_cut(flow, tensor.name, sources, sinks):
            return tensor
    raise LoweringError("cannot find where the encoder ends and the task heads begin",
                        remedy="export the model with m3c.export (heads read the final tokens)")


def _token_shape(graph: gs.Graph) -> list[int]:
    for node in graph.nodes:
        if node.domain == "m3c" and node.op in ("Embed", "Attention"):
            shape = node.outputs[0].shape if node.op == "Embed" else node.inputs[0].shape
            if shape is not None:
                return list(shape[:-1]) + [shape[-1] if node.op == "Embed" else shape[-1] // 3]
    raise LoweringError("the graph has no encoder (no m3c.Embed or m3c.Attention)",
                        remedy="run the canonicalisation passes first")


def _tensor_flow(graph: gs.Graph) -> nx.DiGraph:
    flow = nx.DiGraph()
    for node in graph.nodes:
        for tensor in node.inputs:
            if isinstance(tensor, gs.Variable):
                for output in node.outputs:
                    flow.add_edge(tensor.name, output.name)
    return flow


def _is_cut(flow: nx.DiGraph, name: str, sources: list[str], sinks: list[str]) -> bool:
    pruned = flow.copy()
    pruned.remove_node(name)
    return not any(pruned.has_node(s) and pruned.has_node(t) and nx.has_path(pruned, s, t)
                   for s in sources for t in sinks)


def partition(graph: gs.Graph) -> Partition:
    """The accelerator graph (inputs -> features) and per-task head graphs (features -> out)."""
    boundary = find_encoder_output(graph)
    accelerator = graph.copy()
    features = accelerator.tensors()[boundary.name]
    accelerator.outputs = [features]
    accelerator.cleanup(remove_unused_graph_inputs=False).toposort()
    features.name = FEATURES
    heads = {}
    for output in graph.outputs:
        head = graph.copy()
        tensors = head.tensors()
        features = tensors[boundary.name]
        features.inputs.clear()  # the encoder stays behind on the accelerator
        head.inputs = [features]
        head.outputs = [tensors[output.name]]
        head.cleanup().toposort()
        features.name = FEATURES
        head.name = f"head_{output.name}"
        expand_to_standard_ops(head)
        heads[output.name] = head
    return Partition(accelerator, heads, boundary.name)


def expand_to_standard_ops(head: gs.Graph) -> None:
    """Write the m3c.Dense and m3c.Gelu nodes of a host head back as standard ONNX ops.

    The canonicalisation fuses every Linear before the partition decides what runs where;
    the heads run in plain onnxruntime on the host, which knows no m3c op.
    """
    for node in [n for n in head.nodes if n.domain == "m3c" and n.op in ("Dense", "Gelu")]:
        output = node.outputs[0]
        node.outputs.clear()
        if node.op == "Gelu":
            _gelu(head, node.inputs[0], output, node.name)
            continue
        x, weight, bias = node.inputs
        activation = node.attrs.get("activation", "none")
        product = _emit(head, "MatMul", [x, weight], node.name)
        if activation == "none":
            head.nodes.append(gs.Node("Add", name=fresh_node_name(head, f"{node.name}/Add"),
                                      inputs=[product, bias], outputs=[output]))
        else:
            _gelu(head, _emit(head, "Add", [product, bias], node.name), output, node.name)
    head.cleanup().toposort()


def _emit(graph: gs.Graph, op: str, inputs: list, name: str) -> gs.Variable:
    result = gs.Variable(fresh_name(graph, f"{name}/{op}:0"), np.float32)
    graph.nodes.append(gs.Node(op, name=fresh_node_name(graph, f"{name}/{op}"), inputs=inputs,
                               outputs=[result]))
    return result


def _constant(graph: gs.Graph, name: str, value: float) -> gs.Constant:
    return gs.Constant(fresh_name(graph, name), np.array(value, np.float32))


def _gelu(graph: gs.Graph, x: gs.Tensor, output: gs.Variable, name: str) -> None:
    """0.5 * x * (1 + erf(x / sqrt 2)), the exact GELU that m3c.Gelu computes."""
    scaled = _emit(graph, "Div", [x, _constant(graph, f"{name}.sqrt2", math.sqrt(2.0))], name)
    erf = _emit(graph, "Erf", [scaled], name)
    plus_one = _emit(graph, "Add", [erf, _constant(graph, f"{name}.one", 1.0)], name)
    half = _emit(graph, "Mul", [x, _constant(graph, f"{name}.half", 0.5)], name)
    graph.nodes.append(gs.Node("Mul", name=f"{name}/Gelu", inputs=[half, plus_one],
                               outputs=[output]))
