"""From the expert-major accelerator graph to the HLS top function's call sequence.

Every tensor the accelerator computes lives in one DDR activation arena at a fixed offset,
a region reused once the tensor is dead; views (Reshape, Squeeze, ...) alias their input.
Every constant lives in one packed weight blob.
Each graph node becomes one call into the shared op library (templates/hls/kernel/m3c_ops.h.j2);
an expert-major MoE layer (LoadExpert/ExpertGather/ExpertMLP/ScatterAdd per expert) becomes one
`expert_ffn` call, whose loop runs the experts in the same order with ping-pong weight slots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from m3c.errors import CodegenError
from m3c.runtime.fixed import FixedType

VIEW_OPS = {"Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten"}
EXPERT_OPS = {"LoadExpert", "ExpertGather", "ExpertMLP", "ScatterAdd"}
ACTIVATIONS = {"none": "ACT_NONE", "gelu": "ACT_GELU", "gelu_tanh": "ACT_GELU_TANH",
               "relu": "ACT_RELU"}
ALIGN = 16  # elements: 64-byte aligned regions start whole AXI bursts


def _aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


@dataclass
class WeightBlob:
    """Constants packed in first-use order; offsets in elements."""

    offsets: dict[str, int] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    size: int = 0

    def add(self, tensor: gs.Constant) -> int:
        if tensor.name not in self.offsets:
            values = np.ascontiguousarray(tensor.values, dtype=np.float32)
            self.offsets[tensor.name] = self.size
            self.arrays[tensor.name] = values
            self.size += _aligned(values.size)
        return self.offsets[tensor.name]

    def packed(self) -> np.ndarray:
        blob = np.zeros(self.size, np.float32)
        for name, offset in self.offsets.items():
            values = self.arrays[name].reshape(-1)
            blob[offset:offset + values.size] = values
        return blob


@dataclass
class Arena:
    """Activation tensors in the DDR arena; offsets in elements.

    A region is reused once its tensor's last reader has run (first fit), so the arena holds
    the largest live set rather than every tensor the model computes.
    """

    offsets: dict[str, int] = field(default_factory=dict)
    size: int = 0
    live: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (offset, length)

    def place(self, tensor: gs.Variable, elements: int | None = None) -> int:
        if tensor.name not in self.offsets:
            length = _aligned(elements if elements is not None else _elements(tensor))
            offset = self._first_fit(length)
            self.offsets[tensor.name] = offset
            self.live[tensor.name] = (offset, length)
            self.size = max(self.size, offset + length)
        return self.offsets[tensor.name]

    def alias(self, view: gs.Variable, source: gs.Variable) -> None:
        self.offsets[view.name] = self.offsets[source.name]

    def release(self, name: str) -> None:
        self.live.pop(name, None)

    def _first_fit(self, length: int) -> int:
        start = 0
        for offset, used in sorted(self.live.values()):
            if offset - start >= length:
                return start
            start = max(start, offset + used)
        return start


def _elements(tensor: gs.Tensor) -> int:
    if tensor.shape is None or any(not isinstance(d, int) for d in tensor.shape):
        raise CodegenError(f"tensor {tensor.name!r} has no static shape",
                           remedy="run m3c.lower on a model with static shapes")
    return int(np.prod(tensor.shape, dtype=np.int64))


# Argument kinds of the op-library calls: where a pointer points, or how a scalar is spelled.
ACT_IN, ACT_OUT, WEIGHT, IMAGE, INT, FLOAT, ACT_FN, TASK, QUEUES = (
    "act_in", "act_out", "weight", "image", "int", "float", "activation", "task", "queues")

# Signature of each op-library function (templates/hls/kernel/m3c_ops.h.j2), argument order.
SIGNATURES: dict[str, list[tuple[str, str]]] = {
    "patchify": [("image", IMAGE), ("patches", ACT_OUT), ("channels", INT), ("height", INT),
                 ("width", INT), ("patch", INT)],
    "linear": [("x", ACT_IN), ("w", WEIGHT), ("b", WEIGHT), ("y", ACT_OUT), ("tokens", INT),
               ("in_dim", INT), ("out_dim", INT), ("activation", ACT_FN)],
    "finish_embedding": [("tokens", ACT_OUT), ("cls", WEIGHT), ("pos", WEIGHT), ("count", INT),
                         ("dim", INT)],
    "layernorm": [("x", ACT_IN), ("gamma", WEIGHT), ("beta", WEIGHT), ("y", ACT_OUT),
                  ("tokens", INT), ("dim", INT), ("epsilon", FLOAT)],
    "attention": [("qkv", ACT_IN), ("out", ACT_OUT), ("tokens", INT), ("dim", INT),
                  ("heads", INT), ("scale", FLOAT)],
    "add": [("a", ACT_IN), ("b", ACT_IN), ("y", ACT_OUT), ("count", INT)],
    "route": [("x", ACT_IN), ("router_w", WEIGHT), ("router_b", WEIGHT), ("task", TASK),
              ("weight_rows", INT), ("bias_rows", INT), ("tokens", INT), ("dim", INT),
              ("experts", INT), ("top_k", INT), ("queues", QUEUES)],
    "expert_ffn": [("x", ACT_IN), ("out", ACT_OUT), ("w1", WEIGHT), ("b1", WEIGHT),
                   ("w2", WEIGHT), ("b2", WEIGHT), ("tokens", INT), ("dim", INT),
                   ("hidden", INT), ("experts", INT), ("activation", ACT_FN),
                   ("queues", QUEUES)],
    "narrow": [("x", ACT_IN), ("y", ACT_OUT), ("count", INT)],
}

# Where a layer's last call leaves the layer's result in the arena, and how many elements.
RESULTS = {
    "linear": ("y", lambda a: a["tokens"] * a["out_dim"]),
    "layernorm": ("y", lambda a: a["tokens"] * a["dim"]),
    "attention": ("out", lambda a: a["tokens"] * a["dim"]),
    "add": ("y", lambda a: a["count"]),
    "expert_ffn": ("out", lambda a: a["tokens"] * a["dim"]),
    "finish_embedding": ("tokens", lambda a: a["count"] * a["dim"]),
}

_POINTER_BASES = {ACT_IN: "act_in", ACT_OUT: "act_out", WEIGHT: "weights"}


@dataclass
class Call:
    """One call into the op library: pointers are element offsets into their buffer; a
    templated unit (narrow) also names its type."""

    op: str
    layer: str
    args: dict[str, int | float | str]
    type_arg: FixedType | None = None

    def to_cpp(self) -> str:
        rendered = [_render_arg(kind, self.args.get(name)) for name, kind in SIGNATURES[self.op]]
        template = f"<{self.type_arg.cpp()}>" if self.type_arg else ""
        return f"m3c::{self.op}{template}({', '.join(rendered)});"

    def to_json(self) -> dict:
        typed = {"type": self.type_arg.to_json()} if self.type_arg else {}
        return {"op": self.op, "layer": self.layer, **self.args, **typed}


def _render_arg(kind: str, value) -> str:
    if kind in _POINTER_BASES:
        return f"{_POINTER_BASES[kind]} + {value}"
    if kind == FLOAT:
        return f"{value!r}f"
    if kind == ACT_FN:
        return f"m3c::{ACTIVATIONS[value]}"
    if kind == TASK:
        return "task"
    if kind == QUEUES:
        return "queue_tokens, queue_scores, queue_len"
    if kind == IMAGE:
        return "image"
    return str(value)


@dataclass
class KernelPlan:
    """What the top-function template needs: calls in order, buffer sizes, capacities."""

    calls: list[Call]
    weights: WeightBlob
    arena: Arena
    image_shape: list[int]
    features_offset: int
    features_elements: int
    capacities: dict[str, int]
    layers: list[dict]

    def narrow_results(self, results: dict[str, FixedType]) -> None:
        """After each named layer's last call, round its result to the layer's type in place
        (the precision config's per-layer `result`; the shared units keep computing in
        data_t)."""
        last = {call.layer: index for index, call in enumerate(self.calls)}
        for layer, kind in sorted(results.items(), key=lambda item: -last[item[0]]):
            producer = self.calls[last[layer]]
            name, size = RESULTS[producer.op]
            offset = producer.args[name]
            self.calls.insert(last[layer] + 1, Call(
                "narrow", layer, {"x": offset, "y": offset, "count": size(producer.args)}, kind))

    def to_json(self) -> dict:
        """The call sequence as data: what the numpy emulator and the estimators replay."""
        return {"calls": [call.to_json() for call in self.calls],
                "weight_elements": self.weights.size, "arena_elements": self.arena.size,
                "image_shape": self.image_shape, "features_offset": self.features_offset,
                "features_elements": self.features_elements, "capacities": self.capacities}


class _Planner:
    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.weights = WeightBlob()
        self.arena = Arena()
        self.calls: list[Call] = []
        self.layers: list[dict] = []
        self.capacity = {"max_tokens": 1, "max_dim": 1, "max_in": 1, "max_out": 1,
                         "max_head_dim": 1, "max_experts": 1, "max_expert_hidden": 1,
                         "max_top_k": 1}

    def grow(self, **sizes: int) -> None:
        for key, value in sizes.items():
            self.capacity[key] = max(self.capacity[key], int(value))

    def call(self, op: str, layer: str, **args) -> None:
        missing = {name for name, kind in SIGNATURES[op] if kind not in (TASK, QUEUES)} - set(args)
        assert not missing, f"{op} call lacks {missing}"
        self.calls.append(Call(op, layer, args))

    def w(self, tensor: gs.Tensor) -> int:
        if not isinstance(tensor, gs.Constant):
            raise CodegenError(f"{tensor.name!r} should be a constant weight")
        return self.weights.add(tensor)

    def a(self, tensor: gs.Tensor, write: bool = False) -> int:
        return self.arena.place(tensor) if write else self.arena.offsets[tensor.name]


def plan_kernel(graph: gs.Graph) -> KernelPlan:
    """Walk the accelerator graph in order and produce the op-library call sequence."""
    planner = _Planner(graph)
    image = graph.inputs[0]
    call_sites = _call_sites(graph.nodes)
    releases = _releases(graph, call_sites)
    for index, node in enumerate(graph.nodes):
        if call_sites[index] == index:
            _plan_node(planner, graph, node, image)
        for name in releases.get(index, ()):
            planner.arena.release(name)
    (features,) = graph.outputs
    return KernelPlan(
        calls=planner.calls, weights=planner.weights, arena=planner.arena,
        image_shape=list(image.shape), features_offset=planner.arena.offsets[features.name],
        features_elements=_elements(features),
        capacities=planner.capacity, layers=planner.layers,
    )


def _is_layer_end(node: gs.Node) -> bool:
    """The last scatter-add of an expert-major layer."""
    return node.op == "ScatterAdd" and not any(user.op == "ScatterAdd"
                                                for user in node.outputs[0].outputs)


def _call_sites(nodes: list[gs.Node]) -> list[int]:
    """For each node, the index of the node whose call does its work: itself, or for the
    nodes of an expert-major layer, the layer's last scatter-add."""
    layer_end = {node.name.split("/")[0]: index for index, node in enumerate(nodes)
                 if node.domain == "m3c" and _is_layer_end(node)}
    return [layer_end[node.name.split("/")[0]] if node.domain == "m3c" and node.op in EXPERT_OPS
            else index for index, node in enumerate(nodes)]


def _releases(graph: gs.Graph, call_sites: list[int]) -> dict[int, list[str]]:
    """Node index -> the arena tensors whose last reader is done once that node's call has
    run. A view keeps the tensor it aliases alive; the graph's outputs live to the end."""
    root: dict[str, str] = {}
    last: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        site = call_sites[index]
        for tensor in node.inputs:
            name = root.get(tensor.name, tensor.name)
            last[name] = max(last.get(name, site), site)
        for tensor in node.outputs:
            last.setdefault(tensor.name, site)
        if node.op in VIEW_OPS:
            root[node.outputs[0].name] = root.get(node.inputs[0].name, node.inputs[0].name)
    kept = {root.get(tensor.name, tensor.name) for tensor in graph.outputs}
    releases: dict[int, list[str]] = {}
    for name, index in last.items():
        if name not in kept:
            releases.setdefault(index, []).append(name)
    return releases


def _plan_node(planner: _Planner, graph: gs.Graph, node: gs.Node, image: gs.Variable) -> None:
    if node.domain == "m3c" and node.op in EXPERT_OPS:
        # The whole layer becomes one call where its last scatter-add stands: by then its
        # tokens and queues exist, whatever order the graph put its weight loads in.
        _expert_layer(planner, graph, node.name.split("/")[0])
        return
    handler = _HANDLERS.get(node.op)
    if handler is None:
        raise CodegenError(f"no HLS implementation for node {node.name!r} ({node.op})",
                           remedy="run the full m3c lowering pipeline first")
    handler(planner, node, image)


def _rows_and_width(tensor: gs.Tensor) -> tuple[int, int]:
    return _elements(tensor) // tensor.shape[-1], int(tensor.shape[-1])


def _embed(planner: _Planner, node: gs.Node, image: gs.Variable) -> None:
    _, weight, bias, cls, pos = node.inputs
    patch = int(node.attrs["patch_size"])
    _, channels, height, width = image.shape
    patches = (height // patch) * (width // patch)
    patch_len = channels * patch * patch
    dim = int(weight.shape[1])
    scratch = gs.Variable(f"{node.name}/patches", np.float32, [patches, patch_len])
    tokens = planner.a(node.outputs[0], True)
    planner.call("patchify", node.name, image=0, patches=planner.a(scratch, True),
                 channels=channels, height=height, width=width, patch=patch)
    planner.call("linear", node.name, x=planner.a(scratch), w=planner.w(weight),
                 b=planner.w(bias), y=tokens + dim, tokens=patches, in_dim=patch_len,
                 out_dim=dim, activation="none")
    planner.arena.release(scratch.name)
    planner.call("finish_embedding", node.name, tokens=tokens, cls=planner.w(cls),
                 pos=planner.w(pos), count=patches + 1, dim=dim)
    planner.grow(max_tokens=patches + 1, max_in=patch_len, max_out=dim, max_dim=dim)


def _dense(planner: _Planner, node: gs.Node, image) -> None:
    del image
    x, weight, bias = node.inputs
    rows, in_dim = _rows_and_width(x)
    out_dim = int(weight.shape[1])
    planner.call("linear", node.name, x=planner.a(x), w=planner.w(weight), b=planner.w(bias),
                 y=planner.a(node.outputs[0], True), tokens=rows, in_dim=in_dim,
                 out_dim=out_dim, activation=node.attrs.get("activation", "none"))
    planner.grow(max_tokens=rows, max_in=in_dim, max_out=out_dim)


def _layernorm(planner: _Planner, node: gs.Node, image) -> None:
    del image
    x, gamma, beta = node.inputs
    rows, dim = _rows_and_width(x)
    planner.call("layernorm", node.name, x=planner.a(x), gamma=planner.w(gamma),
                 beta=planner.w(beta), y=planner.a(node.outputs[0], True), tokens=rows, dim=dim,
                 epsilon=float(node.attrs.get("epsilon", 1e-5)))
    planner.grow(max_tokens=rows, max_dim=dim)


def _attention(planner: _Planner, node: gs.Node, image) -> None:
    del image
    (qkv,) = node.inputs
    rows, width = _rows_and_width(qkv)
    heads, dim = int(node.attrs["num_heads"]), width // 3
    planner.call("attention", node.name, qkv=planner.a(qkv), out=planner.a(node.outputs[0], True),
                 tokens=rows, dim=dim, heads=heads, scale=float(node.attrs["scale"]))
    planner.grow(max_tokens=rows, max_dim=dim, max_head_dim=dim // heads)


def _add(planner: _Planner, node: gs.Node, image) -> None:
    del image
    a, b = node.inputs
    planner.call("add", node.name, a=planner.a(a), b=planner.a(b),
                 y=planner.a(node.outputs[0], True), count=_elements(node.outputs[0]))


def _view(planner: _Planner, node: gs.Node, image) -> None:
    del image
    planner.arena.alias(node.outputs[0], node.inputs[0])


def _route(planner: _Planner, node: gs.Node, image) -> None:
    del image
    x, _, router_w, router_b = node.inputs
    rows, dim = _rows_and_width(x)
    experts = int(router_w.shape[-1])
    top_k = int(node.attrs["top_k"])
    planner.call("route", node.name, x=planner.a(x), router_w=planner.w(router_w),
                 router_b=planner.w(router_b), weight_rows=int(router_w.shape[0]),
                 bias_rows=int(router_b.shape[0]), tokens=rows, dim=dim, experts=experts,
                 top_k=top_k)
    planner.grow(max_tokens=rows, max_dim=dim, max_experts=experts, max_top_k=top_k)


def _queues(planner: _Planner, node: gs.Node, image) -> None:
    del planner, node, image  # the route call fills the queues


def _expert_layer(planner: _Planner, graph: gs.Graph, layer: str) -> None:
    nodes = [n for n in graph.nodes if n.name.split("/")[0] == layer]
    load = next(n for n in nodes if n.op == "LoadExpert")
    gather = next(n for n in nodes if n.op == "ExpertGather")
    mlp = next(n for n in nodes if n.op == "ExpertMLP")
    scatters = [n for n in nodes if n.op == "ScatterAdd"]
    w1, b1, w2, b2 = load.inputs[:4]
    experts, dim, hidden = (int(v) for v in w1.shape)
    x = gather.inputs[0]
    rows = _rows_and_width(x)[0]
    out = scatters[-1].outputs[0]
    planner.call("expert_ffn", layer, x=planner.a(x), out=planner.a(out, True),
                 w1=planner.w(w1), b1=planner.w(b1), w2=planner.w(w2), b2=planner.w(b2),
                 tokens=rows, dim=dim, hidden=hidden, experts=experts,
                 activation=mlp.attrs.get("activation", "gelu"))
    planner.grow(max_tokens=rows, max_dim=dim, max_experts=experts, max_expert_hidden=hidden)
    planner.layers.append({"name": layer, "experts": experts, "dim": dim, "hidden": hidden,
                           "tokens": rows, "slots": 2})


_HANDLERS = {
    "Embed": _embed, "Dense": _dense, "LayerNormalization": _layernorm,
    "Attention": _attention, "Add": _add, "Route": _route, "ExpertQueues": _queues,
    **{op: _view for op in VIEW_OPS},
}
