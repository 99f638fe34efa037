"""From the expert-major accelerator graph to the kernel's call sequence (kernel.json).

The kernel keeps activations on chip: the residual stream in one banked memory, the working
tensors of a layer (a head's queries, keys and values, the attention output, an MLP's hidden
rows) in another, and layer norms are applied on the fly where their output is read. So the
graph is read as transformer blocks, not node by node:

    LayerNorm(x)            -> layernorm  (statistics; consumers normalise as they read)
    Dense(ln) -> Attention  -> qkv + attention (per head, on chip)
    Dense(attention) + x    -> linear     (residual added in the array's epilogue)
    Dense(ln) -> Dense + x  -> linear (hidden) + linear (residual)
    Route(ln) -> experts + x-> route + experts (gate-scaled scatter-add into the residual)

A graph that strays from this shape is refused with the node that does. Every constant goes
into one packed float blob in first-use order (what the numpy emulator reads); the DDR layout
of the same weights, in the order the MAC array consumes them, is m3c.hw.layout's job once
the array's size is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from m3c.errors import CodegenError
from m3c.hw.calls import RECORDS
from m3c.runtime.fixed import FixedType

VIEW_OPS = {"Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten"}
EXPERT_OPS = {"LoadExpert", "ExpertGather", "ExpertMLP", "ScatterAdd"}
ACTIVATIONS = {"none": "ACT_NONE", "gelu": "ACT_GELU", "gelu_tanh": "ACT_GELU_TANH",
               "relu": "ACT_RELU"}
GELU_FORMS = ("gelu", "gelu_tanh")  # activations computed from a lookup table


def gelu_forms(calls: list[dict]) -> list[str]:
    """The GELU forms the calls use, in GELU_FORMS order."""
    used = {call.get("activation") for call in calls}
    return [form for form in GELU_FORMS if form in used]


ALIGN = 16  # elements: every constant starts on a 64-byte boundary of the float blob

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
class KernelPlan:
    """The call sequence and what the kernel must hold."""

    calls: list[dict]
    weights: WeightBlob
    image_shape: list[int]
    features_shape: list[int]
    capacities: dict[str, int]
    layers: list[dict]

    def narrow_results(self, results: dict[str, FixedType]) -> None:
        """Round each named layer's results to its type (the precision config's `result`),
        in the epilogue that produces them."""
        for call in self.calls:
            if call["layer"] in results:
                call["narrow"] = results[call["layer"]].to_json()

    def use_mac8(self, specs: dict[str, dict]) -> None:
        """Give each named layer its 8-bit operand types (kernel.json "mac8") and the kernel a
        packed array (two 8-bit products per DSP) when any layer has them."""
        _mark_mac8(self.calls, self.capacities, specs)

    def to_json(self) -> dict:
        """The call sequence as data: what the numpy emulator and the estimators replay."""
        return {"calls": self.calls, "weight_elements": self.weights.size,
                "image_shape": self.image_shape, "features_shape": self.features_shape,
                "capacities": self.capacities}


def _mark_mac8(calls: list[dict], capacities: dict, specs: dict[str, dict]) -> None:
    for before, call in zip([{}, *calls], calls, strict=False):
        if call["layer"] in specs:
            call["mac8"] = specs[call["layer"]]
            if call["op"] == "attention":  # its projection rounds q, k, v to 8 bits
                before["narrow"] = call["mac8"]["x"]
    if specs:
        capacities["packed"] = 1
        if any(call["op"] == "attention" and "mac8" not in call for call in calls):
            capacities["wide_operands"] = 1  # a 16-bit mix's numerators on the packed array


def apply_mac8(kernel: dict, specs: dict[str, dict]) -> dict:
    """A copy of kernel.json with exactly the `specs` layers 8-bit (KernelPlan.use_mac8);
    the array packed if any is, as the trials of m3c.hw.mixed compare them."""
    calls = [{key: value for key, value in call.items() if key != "mac8"}
             for call in kernel["calls"]]
    capacities = {key: value for key, value in kernel["capacities"].items()
                  if key not in ("packed", "wide_operands")}
    _mark_mac8(calls, capacities, specs)
    return {**kernel, "calls": calls, "capacities": capacities}


def _elements(tensor: gs.Tensor) -> int:
    if tensor.shape is None or any(not isinstance(d, int) for d in tensor.shape):
        raise CodegenError(f"tensor {tensor.name!r} has no static shape",
                           remedy="run m3c.lower on a model with static shapes")
    return int(np.prod(tensor.shape, dtype=np.int64))


def _rows_and_width(tensor: gs.Tensor) -> tuple[int, int]:
    return _elements(tensor) // tensor.shape[-1], int(tensor.shape[-1])


def _unsupported(node: gs.Node, why: str) -> CodegenError:
    return CodegenError(f"node {node.name!r} ({node.op}): {why}; the kernel runs transformer "
                        "blocks (layer norm, attention, MLP or MoE, residual adds)",
                        remedy="lower the model with the full m3c pipeline, or report the "
                               "layer arrangement as an issue")


class _Planner:
    """Walks the graph once, tracking where each tensor lives."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.weights = WeightBlob()
        self.calls: list[dict] = []
        self.layers: list[dict] = []
        self.capacity = dict.fromkeys(
            ("max_tokens", "max_dim", "max_in", "max_out", "max_head_dim", "max_heads",
             "max_experts", "max_expert_hidden", "max_top_k", "max_hidden", "max_patches",
             "max_patch_len", "patch_grid_w", "patch_grid_h", "image_elements"), 1)
        self.alias: dict[str, str] = {}  # view -> the tensor it shows
        self.residual: str | None = None  # the residual stream's current tensor
        self.normalised: str | None = None  # the layer norm of the residual, read on the fly
        self.attention: str | None = None  # the attention output (on chip)
        self.hidden: str | None = None  # an MLP's hidden rows (on chip)
        self.fused: dict[str, str] = {}  # residual Add -> the call that performed it
        self.done: set[str] = set()  # nodes a fused call already covers

    def name(self, tensor: gs.Tensor) -> str:
        return self.alias.get(tensor.name, tensor.name)

    def grow(self, **sizes: int) -> None:
        for key, value in sizes.items():
            self.capacity[key] = max(self.capacity[key], int(value))

    def w(self, tensor: gs.Tensor) -> int:
        if not isinstance(tensor, gs.Constant):
            raise CodegenError(f"{tensor.name!r} should be a constant weight",
                               remedy="fold constants first (m3c lower does)")
        return self.weights.add(tensor)

    def call(self, op: str, layer: str, **fields) -> dict:
        """A kernel call, made as its typed record (m3c.hw.calls: a field too many or missing
        fails here) and kept as its kernel.json entry."""
        call = RECORDS[op](layer=layer, **fields).to_json()
        self.calls.append(call)
        return call

    def users(self, tensor: gs.Tensor) -> list[gs.Node]:
        """The nodes reading `tensor`, through any chain of views (which become aliases)."""
        users = list(tensor.outputs)
        while len(users) == 1 and users[0].op in VIEW_OPS:  # a reshape on the way
            self.done.add(users[0].name)
            self.alias[users[0].outputs[0].name] = self.name(tensor)
            users = list(users[0].outputs[0].outputs)
        return users

    def residual_add(self, node: gs.Node, result: gs.Tensor) -> gs.Node:
        """The Add that puts `result` back onto the residual stream (fused into the call)."""
        users = self.users(result)
        add = users[0] if len(users) == 1 else None
        if add is None or add.op != "Add" or {self.name(t) for t in add.inputs} != {
                self.name(result), self.residual}:
            raise _unsupported(node, "its result is not added straight back to the residual "
                                     "stream")
        self.done.add(add.name)
        return add


def plan_kernel(graph: gs.Graph) -> KernelPlan:
    """Walk the accelerator graph in order and produce the call sequence."""
    planner = _Planner(graph)
    image = graph.inputs[0]
    layer_ends = _layer_ends(graph.nodes)
    for index, node in enumerate(graph.nodes):
        if node.name in planner.done:
            _after_fused(planner, node)
            continue
        if node.domain == "m3c" and node.op in EXPERT_OPS:
            if layer_ends.get(node.name.split("/")[0]) == index:
                _experts(planner, graph, node.name.split("/")[0])
            continue
        handler = _HANDLERS.get(node.op)
        if handler is None:
            raise CodegenError(f"no HLS implementation for node {node.name!r} ({node.op})",
                               remedy="run the full m3c lowering pipeline first")
        handler(planner, node, image)
    (features,) = graph.outputs
    _features(planner, features)
    # The kernel holds a GELU table per form its layers use (at least one: the code reads it).
    planner.capacity["gelu_forms"] = max(1, len(gelu_forms(planner.calls)))
    return KernelPlan(calls=planner.calls, weights=planner.weights,
                      image_shape=list(image.shape), features_shape=list(features.shape),
                      capacities=planner.capacity, layers=planner.layers)


def _after_fused(planner: _Planner, node: gs.Node) -> None:
    if node.op == "Add":  # its sum was made in place: the residual moves on
        planner.residual = node.outputs[0].name
        planner.normalised = None


def _layer_ends(nodes: list[gs.Node]) -> dict[str, int]:
    """Expert-major layer -> index of its last scatter-add, where the layer's call stands."""
    ends = {}
    for index, node in enumerate(nodes):
        if node.domain == "m3c" and node.op == "ScatterAdd" and not any(
                user.op == "ScatterAdd" for user in node.outputs[0].outputs):
            ends[node.name.split("/")[0]] = index
    return ends


def _embed(planner: _Planner, node: gs.Node, image: gs.Variable) -> None:
    _, weight, bias, cls, pos = node.inputs
    patch = int(node.attrs["patch_size"])
    _, channels, height, width = image.shape
    patches = (height // patch) * (width // patch)
    dim = int(weight.shape[1])
    planner.call("embed", node.name, channels=channels, height=height, width=width,
                 patch=patch, dim=dim, patches=patches, tokens=patches + 1,
                 w=planner.w(weight), b=planner.w(bias), cls=planner.w(cls), pos=planner.w(pos))
    planner.residual, planner.normalised = node.outputs[0].name, None
    planner.grow(max_tokens=patches + 1, max_dim=dim, max_in=channels * patch * patch,
                 max_out=dim, max_patches=patches, max_patch_len=channels * patch * patch,
                 patch_grid_w=width // patch, patch_grid_h=height // patch,
                 image_elements=channels * height * width)


def _layernorm(planner: _Planner, node: gs.Node, image) -> None:
    del image
    x, gamma, beta = node.inputs
    if planner.name(x) != planner.residual:
        raise _unsupported(node, "a layer norm of something other than the residual stream")
    rows, dim = _rows_and_width(x)
    planner.call("layernorm", node.name, tokens=rows, dim=dim, gamma=planner.w(gamma),
                 beta=planner.w(beta), epsilon=float(node.attrs.get("epsilon", 1e-5)))
    planner.normalised = node.outputs[0].name
    planner.grow(max_tokens=rows, max_dim=dim)


def _dense(planner: _Planner, node: gs.Node, image) -> None:
    del image
    x, weight, bias = node.inputs
    rows, in_dim = _rows_and_width(x)
    out_dim = int(weight.shape[1])
    source = planner.name(x)
    users = planner.users(node.outputs[0])
    fields = dict(tokens=rows, in_dim=in_dim, out_dim=out_dim, w=planner.w(weight),
                  b=planner.w(bias), activation=node.attrs.get("activation", "none"))
    planner.grow(max_tokens=rows, max_in=in_dim, max_out=out_dim)
    if source == planner.normalised and len(users) == 1 and users[0].op == "Attention":
        _qkv(planner, node, users[0], fields)
    elif source == planner.attention:
        planner.residual_add(node, node.outputs[0])
        planner.call("linear", node.name, source="attention", target="residual", **fields)
    elif source == planner.normalised and len(users) == 1 and users[0].op == "Dense":
        planner.call("linear", node.name, source="normalised", target="hidden", **fields)
        planner.hidden = node.outputs[0].name
        planner.grow(max_hidden=out_dim)
    elif source == planner.hidden:
        planner.residual_add(node, node.outputs[0])
        planner.call("linear", node.name, source="hidden", target="residual", **fields)
    else:
        raise _unsupported(node, f"a dense layer reading {x.name!r}")


def _qkv(planner: _Planner, dense: gs.Node, attention: gs.Node, fields: dict) -> None:
    heads = int(attention.attrs["num_heads"])
    dim = fields["out_dim"] // 3
    if fields["activation"] != "none" or fields["out_dim"] != 3 * dim or dim % heads:
        raise _unsupported(dense, "a query/key/value projection that is not [q | k | v]")
    planner.call("qkv", dense.name, heads=heads, head_dim=dim // heads, dim=dim, **fields)
    planner.call("attention", attention.name, tokens=fields["tokens"], dim=dim, heads=heads,
                 head_dim=dim // heads, scale=float(attention.attrs["scale"]))
    planner.done.add(attention.name)
    planner.attention = attention.outputs[0].name
    planner.grow(max_head_dim=dim // heads, max_heads=heads, max_dim=dim)


def _view(planner: _Planner, node: gs.Node, image) -> None:
    del image
    planner.alias[node.outputs[0].name] = planner.name(node.inputs[0])


def _route(planner: _Planner, node: gs.Node, image) -> None:
    del image
    x, _, router_w, router_b = node.inputs
    if planner.name(x) != planner.normalised:
        raise _unsupported(node, "a router that does not read the layer norm of the residual")
    rows, dim = _rows_and_width(x)
    experts = int(router_w.shape[-1])
    top_k = int(node.attrs["top_k"])
    planner.call("route", node.name, tokens=rows, dim=dim, experts=experts, top_k=top_k,
                 router_w=planner.w(router_w), router_b=planner.w(router_b),
                 weight_rows=int(router_w.shape[0]), bias_rows=int(router_b.shape[0]),
                 renormalise=_renormalised(planner, node) or None)
    planner.grow(max_tokens=rows, max_dim=dim, max_experts=experts, max_top_k=top_k)


def _renormalised(planner: _Planner, route: gs.Node) -> bool:
    """Whether the router's top-k scores are renormalised (a RenormaliseScores after it, which
    the route call then computes: its output is the scores the queues take)."""
    score = route.outputs[1]
    after = [user for user in score.outputs if user.op == "RenormaliseScores"]
    for node in after:
        planner.done.add(node.name)
        planner.alias[node.outputs[0].name] = planner.name(score)
    return bool(after)


def _queues(planner: _Planner, node: gs.Node, image) -> None:
    del planner, node, image  # the route call fills the queues


def _experts(planner: _Planner, graph: gs.Graph, layer: str) -> None:
    nodes = [n for n in graph.nodes if n.name.split("/")[0] == layer]
    load = next(n for n in nodes if n.op == "LoadExpert")
    gather = next(n for n in nodes if n.op == "ExpertGather")
    mlp = next(n for n in nodes if n.op == "ExpertMLP")
    last = [n for n in nodes if n.op == "ScatterAdd"][-1]
    if planner.name(gather.inputs[0]) != planner.normalised:
        raise _unsupported(gather, "experts that do not read the layer norm of the residual")
    planner.residual_add(last, last.outputs[0])
    w1, b1, w2, b2 = load.inputs[:4]
    experts, dim, hidden = (int(v) for v in w1.shape)
    rows = _rows_and_width(gather.inputs[0])[0]
    planner.call("experts", layer, tokens=rows, dim=dim, hidden=hidden, experts=experts,
                 activation=mlp.attrs.get("activation", "gelu"), w1=planner.w(w1),
                 b1=planner.w(b1), w2=planner.w(w2), b2=planner.w(b2))
    planner.grow(max_tokens=rows, max_dim=dim, max_experts=experts, max_expert_hidden=hidden)
    planner.layers.append({"name": layer, "experts": experts, "dim": dim, "hidden": hidden,
                           "tokens": rows})


def _features(planner: _Planner, features: gs.Tensor) -> None:
    name = planner.name(features)
    if name not in (planner.residual, planner.normalised):
        raise CodegenError(f"the encoder output {features.name!r} is neither the residual "
                           "stream nor its layer norm", remedy="partition the model after the "
                                                               "last residual add or norm")
    rows, dim = _rows_and_width(features)
    planner.call("features", features.name, tokens=rows, dim=dim,
                 source="residual" if name == planner.residual else "normalised")


_HANDLERS = {
    "Embed": _embed, "Dense": _dense, "LayerNormalization": _layernorm, "Route": _route,
    "ExpertQueues": _queues, **{op: _view for op in VIEW_OPS},
}
