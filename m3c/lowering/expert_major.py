"""The expert-major rewrite of one `m3c.MoE` node, and the proof that it needs two weight slots.

Token-major MoE needs every expert's weights at hand. Expert-major runs
    Route -> ExpertQueues -> for e in 0..E-1: LoadExpert(e) into slot e % 2,
                                              ExpertGather -> ExpertMLP -> ScatterAdd
and issues LoadExpert(e + 1) before expert e computes, so loads hide behind compute. The
load into a slot takes the previous user's ExpertMLP output as an extra (ignored) input: the
dependency says "slot free", so no valid schedule can hold more than two experts' weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import onnx_graphsurgeon as gs

WEIGHT_SLOTS = 2


def lower_moe_node(graph: gs.Graph, moe: gs.Node) -> list[gs.Node]:
    """Replace `moe` in `graph` by its expert-major schedule; return the new nodes in order."""
    tokens, task, router_w, router_b, w1, b1, w2, b2 = moe.inputs
    experts, top_k = int(moe.attrs["num_experts"]), int(moe.attrs["top_k"])
    activation = moe.attrs.get("activation", "gelu")
    prefix = moe.name.rsplit("/", 1)[0] if "/" in moe.name else moe.name
    output = moe.outputs[0]
    moe.outputs.clear()
    moe.inputs.clear()
    builder = _Builder(prefix)
    index, score = builder.node("Route", [tokens, task, router_w, router_b], 2, top_k=top_k)
    if moe.attrs.get("renormalise", 0):  # Mixtral / DeepSeek gates: the top-k sum to one
        (score,) = builder.node("RenormaliseScores", [score], 1)
    queue_tokens, queue_scores, queue_len = builder.node(
        "ExpertQueues", [index, score], 3, num_experts=experts)
    slots: list[list[gs.Tensor]] = []
    released: list[gs.Tensor | None] = [None] * experts
    accumulated: gs.Tensor = gs.Variable.empty()

    def load(e: int) -> None:
        release = [released[e - WEIGHT_SLOTS]] if e >= WEIGHT_SLOTS else []
        slots.append(builder.node("LoadExpert", [w1, b1, w2, b2, *release], 4, expert=e,
                                  slot=e % WEIGHT_SLOTS, tag=f"expert{e}"))

    load(0)
    for e in range(experts):
        if e + 1 < experts:
            load(e + 1)  # prefetch: the next expert's weights stream in while e computes
        (gathered,) = builder.node("ExpertGather", [tokens, queue_tokens, queue_len], 1,
                                   expert=e, tag=f"expert{e}")
        (expert_out,) = builder.node("ExpertMLP", [gathered, *slots[e], queue_len], 1,
                                     expert=e, activation=activation, tag=f"expert{e}")
        released[e] = expert_out
        last = e == experts - 1
        (accumulated,) = builder.node(
            "ScatterAdd", [accumulated, expert_out, queue_tokens, queue_scores, queue_len], 1,
            expert=e, tag=f"expert{e}", outputs=[output] if last else None)
    graph.nodes.extend(builder.nodes)
    return builder.nodes


class _Builder:
    """Creates uniquely named m3c nodes and their output tensors, in schedule order."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[gs.Node] = []

    def node(self, op: str, inputs, num_outputs: int, tag: str = "", outputs=None, **attrs):
        name = f"{self.prefix}/{tag + '/' if tag else ''}{op}"
        if outputs is None:
            outputs = [gs.Variable(f"{name}:{i}") for i in range(num_outputs)]
        self.nodes.append(gs.Node(op, name=name, domain="m3c", attrs=attrs,
                                  inputs=list(inputs), outputs=outputs))
        return outputs


@dataclass(frozen=True)
class LayerSchedule:
    """Weight-buffer facts of one expert-major MoE layer."""

    layer: str
    experts: int
    slots: int
    max_live_buffers: int
    prefetch_distance: int
    slot_reuse_ordered: bool


def analyse_schedule(graph: gs.Graph) -> list[LayerSchedule]:
    """For every lowered MoE layer: how many expert weight buffers are ever live at once.

    `max_live_buffers` is measured on the graph's node order; `slot_reuse_ordered` proves the
    bound for *any* valid order: every load into a slot depends on all users of the slot's
    previous contents, so two loads into one slot can never be live together.
    """
    dependencies = _dependency_graph(graph)
    position = {id(node): i for i, node in enumerate(graph.nodes)}
    layers: dict[str, list[gs.Node]] = {}
    for node in graph.nodes:
        if node.op == "LoadExpert" and node.domain == "m3c":
            layers.setdefault(node.name.split("/expert")[0], []).append(node)
    return [_layer_schedule(name, loads, position, dependencies)
            for name, loads in layers.items()]


def _dependency_graph(graph: gs.Graph) -> nx.DiGraph:
    dependencies = nx.DiGraph()
    for node in graph.nodes:
        dependencies.add_node(id(node))
        for tensor in node.inputs:
            for source in tensor.inputs:
                dependencies.add_edge(id(source), id(node))
    return dependencies


def _layer_schedule(name, loads, position, dependencies) -> LayerSchedule:
    loads = sorted(loads, key=lambda node: node.attrs["expert"])
    intervals = []
    for load in loads:
        users = [user for tensor in load.outputs for user in tensor.outputs]
        intervals.append((position[id(load)], max(position[id(u)] for u in users)))
    events = sorted([(start, 1) for start, _ in intervals]
                    + [(end + 1, -1) for _, end in intervals])
    live = peak = 0
    for _, change in events:
        live += change
        peak = max(peak, live)
    slots = {load.attrs["slot"] for load in loads}
    return LayerSchedule(
        layer=name, experts=len(loads), slots=len(slots), max_live_buffers=peak,
        prefetch_distance=_prefetch_distance(loads, position),
        slot_reuse_ordered=_slot_reuse_ordered(loads, dependencies),
    )


def _prefetch_distance(loads, position) -> int:
    """How many experts ahead loads are issued: load e+d comes before expert e's compute."""
    if len(loads) < 2:
        return 0
    first_users = [user for tensor in loads[0].outputs for user in tensor.outputs]
    first_compute = min(position[id(user)] for user in first_users)
    return sum(position[id(load)] < first_compute for load in loads) - 1


def _slot_reuse_ordered(loads, dependencies) -> bool:
    by_slot: dict[int, list[gs.Node]] = {}
    for load in loads:
        by_slot.setdefault(load.attrs["slot"], []).append(load)
    for sequence in by_slot.values():
        for previous, following in zip(sequence, sequence[1:], strict=False):
            users = [user for tensor in previous.outputs for user in tensor.outputs]
            ancestors = nx.ancestors(dependencies, id(following))
            if not all(id(user) in ancestors for user in users):
                return False
    return True
