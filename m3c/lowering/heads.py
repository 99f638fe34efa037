"""Task heads as chains of stages: the first step of running them beside the encoder.

`recognise_head` reads a task head as `partition` cuts it off (host/heads/<task>.onnx: the
encoder's tokens in, the task map out), whichever torch exporter wrote it, into a `HeadPlan`:
the class token dropped, the head's layer norm, linear layers on the tokens, the tokens laid
out as a map, convolutions (1x1, or k x k with same padding; stride 1), a BatchNormalization
after a convolution folded into it exactly (in float), ReLU, and resizes (bilinear or nearest,
by scales or sizes, align_corners true or false). A head built from anything else is a
`HostHead` naming the node and why. `HeadPlan.run` is the recognised chain in numpy (float),
the reference the tests hold to onnxruntime; `HeadPlan.macs` counts its multiply-accumulates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper


class NotAHeadStage(Exception):
    """A node the head chain cannot take: the node's name and why."""

    def __init__(self, node: onnx.NodeProto, reason: str) -> None:
        super().__init__(reason)
        self.node, self.reason = node.name or node.op_type, reason


# ----------------------------------------------------------------------------- the stages

class Stage:
    """What every stage answers besides `run`: its output's shape and its MACs on an input of
    `shape` (none by default: the stages that multiply say otherwise)."""

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def macs(self, shape: tuple[int, ...]) -> int:
        del shape
        return 0


@dataclass(frozen=True)
class DropClassToken(Stage):
    """tokens[:, 1:]: the head reads the patch tokens only."""

    name = "drop class token"

    def run(self, x: np.ndarray) -> np.ndarray:
        return x[:, 1:]

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[0], shape[1] - 1, *shape[2:])


@dataclass(frozen=True)
class LayerNorm(Stage):
    """The head's layer norm over the tokens' channels."""

    gamma: np.ndarray
    beta: np.ndarray
    epsilon: float
    name = "layer norm"

    def run(self, x: np.ndarray) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        variance = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(variance + self.epsilon) * self.gamma + self.beta


@dataclass(frozen=True)
class Linear(Stage):
    """A linear layer on every token: [in, out] weights."""

    weight: np.ndarray
    bias: np.ndarray
    name = "linear"

    def run(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight + self.bias

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*shape[:-1], self.weight.shape[1])

    def macs(self, shape: tuple[int, ...]) -> int:
        return int(np.prod(shape[:-1])) * self.weight.size


@dataclass(frozen=True)
class TokensToMap(Stage):
    """[1, H x W, C] tokens laid out as a [1, C, H, W] map (row-major patches)."""

    height: int
    width: int
    name = "tokens to map"

    def run(self, x: np.ndarray) -> np.ndarray:
        return x.transpose(0, 2, 1).reshape(x.shape[0], x.shape[2], self.height, self.width)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[0], shape[2], self.height, self.width)


@dataclass(frozen=True)
class Conv(Stage):
    """A k x k convolution, stride 1, same padding (k // 2), with its bias (a batch norm that
    followed it folded in)."""

    weight: np.ndarray  # [out, in, k, k]
    bias: np.ndarray

    @property
    def name(self) -> str:
        k = self.weight.shape[-1]
        return f"conv {k}x{k}"

    def run(self, x: np.ndarray) -> np.ndarray:
        k = self.weight.shape[-1]
        padded = np.pad(x, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))
        out = np.einsum("nchwij,ocij->nohw", windows, self.weight, optimize=True)
        return out + self.bias[None, :, None, None]

    def folded(self, scale: np.ndarray, shift: np.ndarray) -> Conv:
        """This convolution followed by y -> y x scale + shift per output channel."""
        return Conv(self.weight * scale[:, None, None, None], self.bias * scale + shift)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[0], self.weight.shape[0], *shape[2:])

    def macs(self, shape: tuple[int, ...]) -> int:
        return int(shape[0] * shape[2] * shape[3]) * self.weight.size


@dataclass(frozen=True)
class Relu(Stage):
    name = "ReLU"

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0)


@dataclass(frozen=True)
class Resize(Stage):
    """A map resized to `size` (H, W): bilinear or nearest (torch's: the floor of the
    asymmetric source coordinate), align_corners or half-pixel centres; `scale` is the ratio
    the source coordinates use (ONNX: the given scales, or size / input)."""

    mode: str  # "bilinear" | "nearest"
    size: tuple[int, int]
    scale: tuple[float, float]
    align_corners: bool

    @property
    def name(self) -> str:
        if self.scale[0] == self.scale[1]:
            return f"{self.mode} x{self.scale[0]:g}"
        return f"{self.mode} to {self.size[0]}x{self.size[1]}"

    def run(self, x: np.ndarray) -> np.ndarray:
        for axis, (out, scale) in enumerate(zip(self.size, self.scale, strict=True), start=2):
            x = self._along(x, axis, out, scale)
        return x

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*shape[:2], *self.size)

    def _along(self, x: np.ndarray, axis: int, out: int, scale: float) -> np.ndarray:
        size = x.shape[axis]
        o = np.arange(out, dtype=np.float64)
        if self.mode == "nearest":
            index = np.minimum(np.floor(o / scale).astype(int), size - 1)
            return np.take(x, index, axis=axis)
        if self.align_corners:
            source = o * (size - 1) / (out - 1) if out > 1 else np.zeros(out)
        else:
            source = np.maximum((o + 0.5) / scale - 0.5, 0)
        low = np.minimum(np.floor(source).astype(int), size - 1)
        high = np.minimum(low + 1, size - 1)
        weight = (source - low).astype(x.dtype)
        shape = [1] * x.ndim
        shape[axis] = out
        weight = weight.reshape(shape)
        return np.take(x, low, axis=axis) * (1 - weight) + np.take(x, high, axis=axis) * weight



@dataclass
class HeadPlan:
    """A recognised head: its stages in order, from the encoder's [1, tokens, dim] tokens."""

    task: str
    tokens_shape: tuple[int, ...]
    stages: list[Stage] = field(default_factory=list)

    def run(self, tokens: np.ndarray) -> np.ndarray:
        x = tokens.astype(np.float32)
        for stage in self.stages:
            x = stage.run(x).astype(np.float32)
        return x

    def macs(self) -> int:
        """Multiply-accumulates of one run, stage by stage on the shapes it meets."""
        total, shape = 0, self.tokens_shape
        for stage in self.stages:
            total += stage.macs(shape)
            shape = stage.out_shape(shape)
        return total

    def describe(self) -> str:
        """The stages in words, repeats folded: 'layer norm, 4 x (conv 3x3, ReLU, ...)'."""
        names = [stage.name for stage in self.stages if not isinstance(stage, TokensToMap)]
        return ", ".join(_fold_repeats(names))


@dataclass(frozen=True)
class HostHead:
    """A head that stays on the host: the node the chain stopped at and why."""

    task: str
    node: str
    reason: str


def _fold_repeats(names: list[str]) -> list[str]:
    """Runs of a repeated group of names as 'n x (group)'."""
    out, i = [], 0
    while i < len(names):
        best = (1, 1)  # (repeats, group length)
        for length in range(1, (len(names) - i) // 2 + 1):
            group, repeats = names[i:i + length], 1
            while names[i + repeats * length:i + (repeats + 1) * length] == group:
                repeats += 1
            if repeats > 1 and repeats * length > best[0] * best[1]:
                best = (repeats, length)
        repeats, length = best
        group = ", ".join(names[i:i + length])
        out.append(f"{repeats} x ({group})" if repeats > 1 and length > 1
                   else f"{repeats} x {group}" if repeats > 1 else group)
        i += repeats * length
    return out


# ------------------------------------------------------------------------- recognition

class _Chain:
    """Walks a head graph from its input, one consumer at a time."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        shapes = _static_shapes(model)
        for node in graph.node:
            if node.op_type == "Constant":
                self.constants[node.output[0]] = _constant_value(node)
            elif node.op_type == "Shape" and node.input[0] in shapes:
                # an exporter's size arithmetic on a map of static shape: folded here
                start, end = _attributes(node).get("start", 0), _attributes(node).get("end")
                self.constants[node.output[0]] = np.array(shapes[node.input[0]][start:end],
                                                          np.int64)
            elif all(not name or name in self.constants for name in node.input):
                self.constants.update(_evaluate(node, self.constants))
            else:
                for name in node.input:
                    if name:
                        self.consumers.setdefault(name, []).append(node)

    def next_node(self, tensor: str) -> onnx.NodeProto | None:
        users = self.consumers.get(tensor, [])
        if len(users) > 1:
            raise NotAHeadStage(users[1], f"tensor {tensor!r} feeds {len(users)} nodes: a head "
                                          "is one chain of stages")
        return users[0] if users else None

    def constant(self, node: onnx.NodeProto, index: int) -> np.ndarray | None:
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.constants:
            raise NotAHeadStage(node, f"input {name!r} is computed at run time, not a constant")
        return self.constants[name]


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Every tensor's shape onnx's shape inference makes static."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {}
    for info in [*inferred.input, *inferred.value_info, *inferred.output]:
        dims = [d.dim_value if d.HasField("dim_value") else 0
                for d in info.type.tensor_type.shape.dim]
        if dims and 0 not in dims:
            shapes[info.name] = dims
    return shapes


def _evaluate(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs of a node whose inputs are all constants (onnx's reference evaluator)."""
    from onnx.reference import ReferenceEvaluator

    inputs = [name for name in node.input if name]
    try:
        outputs = ReferenceEvaluator(node).run(None, {name: constants[name] for name in inputs})
    except Exception as error:  # the evaluator's own errors: the node cannot be folded
        raise NotAHeadStage(node, f"cannot fold {node.op_type} on constants: {error}") from None
    return dict(zip(node.output, outputs, strict=False))


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    for attribute in node.attribute:
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        if attribute.name in ("value_float", "value_int"):
            return np.array(onnx.helper.get_attribute_value(attribute))
        if attribute.name in ("value_floats", "value_ints"):
            return np.array(onnx.helper.get_attribute_value(attribute))
    raise NotAHeadStage(node, "a Constant without a value")


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def recognise_head(model: onnx.ModelProto, task: str) -> HeadPlan | HostHead:
    """The head `model` (one input: the encoder's tokens) as a HeadPlan, or the HostHead that
    says which node it cannot run and why."""
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        return HostHead(task, model.graph.name, "a head takes the tokens and gives one map")
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    if len(shape) != 3 or 0 in shape:
        return HostHead(task, model.graph.input[0].name, f"tokens of shape {shape}: expected "
                                                         "a static [1, tokens, dim]")
    plan = HeadPlan(task, shape)
    try:
        _walk(_Chain(model), model.graph.input[0].name, model.graph.output[0].name, plan)
    except NotAHeadStage as stop:
        return HostHead(task, stop.node, stop.reason)
    return plan


def _walk(chain: _Chain, tensor: str, output: str, plan: HeadPlan) -> None:
    x = np.zeros(plan.tokens_shape, np.float32)  # shapes only: each stage's output shape
    while tensor != output:
        node = chain.next_node(tensor)
        if node is None:
            raise NotAHeadStage(onnx.NodeProto(name=tensor), f"{tensor!r} does not reach the "
                                                              "head's output")
        handler = _HANDLERS.get(node.op_type)
        if handler is None:
            raise NotAHeadStage(node, f"{node.op_type} is not a head stage (slice, layer norm, "
                                      "linear, reshape, conv, batch norm, ReLU, resize)")
        try:
            stage, tensor = handler(chain, node, x, plan)
        except (ValueError, IndexError, TypeError, AttributeError, KeyError) as error:
            # a spelling the handler does not expect (a missing constant, another rank)
            raise NotAHeadStage(node, f"{node.op_type} of an unexpected form: {error}") from None
        if stage is not None:
            plan.stages.append(stage)
            x = np.zeros(stage.out_shape(x.shape), np.float32)


def _slice(chain, node, x, plan):
    starts, ends = chain.constant(node, 1), chain.constant(node, 2)
    axes, steps = chain.constant(node, 3), chain.constant(node, 4)
    axes = [0] if axes is None else [int(a) % x.ndim for a in axes.ravel()]
    if (x.ndim == 3 and axes == [1] and int(starts.ravel()[0]) == 1
            and int(ends.ravel()[0]) >= x.shape[1]
            and (steps is None or int(steps.ravel()[0]) == 1) and not plan.stages):
        return DropClassToken(), node.output[0]
    raise NotAHeadStage(node, "only tokens[:, 1:] (dropping the class token) is sliced")


def _layer_norm(chain, node, x, plan):
    del plan
    attributes = _attributes(node)
    if x.ndim != 3 or attributes.get("axis", -1) % 3 != 2:
        raise NotAHeadStage(node, "a layer norm over the tokens' channels only")
    gamma, beta = chain.constant(node, 1), chain.constant(node, 2)
    beta = np.zeros_like(gamma) if beta is None else beta
    return LayerNorm(gamma.astype(np.float32), beta.astype(np.float32),
                     float(attributes.get("epsilon", 1e-5))), node.output[0]


def _matmul(chain, node, x, plan):
    del plan
    weight = chain.constant(node, 1)
    if x.ndim != 3 or weight is None or weight.ndim != 2:
        raise NotAHeadStage(node, "a linear layer multiplies the tokens by a constant matrix")
    bias, tensor = np.zeros(weight.shape[1], np.float32), node.output[0]
    following = chain.next_node(tensor)
    if following is not None and following.op_type == "Add":
        other = [name for name in following.input if name != tensor]
        if len(other) == 1 and other[0] in chain.constants:
            bias, tensor = chain.constants[other[0]].reshape(-1), following.output[0]
    return Linear(weight.astype(np.float32), bias.astype(np.float32)), tensor


def _layout(chain, node, x, plan):
    """A run of Reshapes and Transposes on the tokens: one TokensToMap if it lays them out as
    a [1, C, H, W] map (followed on an index array, so any exporter's spelling of it counts:
    transpose then reshape, reshape then permute, a reshape for a transpose of a size-1
    axis)."""
    del plan
    if x.ndim != 3:
        raise NotAHeadStage(node, "only the tokens are reshaped or transposed (to a map)")
    index, tensor = np.arange(x.size).reshape(x.shape), node.input[0]
    while node is not None and node.op_type in ("Reshape", "Transpose"):
        if node.op_type == "Reshape":
            copy_zeros = not _attributes(node).get("allowzero", 0)
            index = index.reshape(_resolved(chain.constant(node, 1), index.shape, copy_zeros))
        else:
            index = index.transpose(_attributes(node).get("perm") or None)
        tensor = node.output[0]
        node = chain.next_node(tensor)
    if index.ndim == 4 and index.shape[0] == x.shape[0]:
        height, width = index.shape[2:]
        expected = TokensToMap(height, width).run(np.arange(x.size).reshape(x.shape))
        if index.shape == expected.shape and np.array_equal(index, expected):
            return TokensToMap(int(height), int(width)), tensor
    raise NotAHeadStage(onnx.NodeProto(name=tensor), f"reshapes to {list(index.shape)} that do "
                                                      "not lay the tokens out as a map")


def _resolved(target: np.ndarray, shape: tuple[int, ...], copy_zeros: bool) -> list[int]:
    """A Reshape's shape for an input of `shape`: its 0 entries copied from the input (unless
    allowzero), its -1 worked out."""
    size = [shape[i] if copy_zeros and v == 0 else int(v) for i, v in enumerate(target.ravel())]
    if size.count(-1) == 1:
        known = int(np.prod([v for v in size if v != -1]))
        size[size.index(-1)] = int(np.prod(shape)) // max(known, 1)
    return size


def _conv(chain, node, x, plan):
    del plan
    attributes = _attributes(node)
    weight, bias = chain.constant(node, 1), chain.constant(node, 2)
    k = weight.shape[-1] if weight is not None and weight.ndim == 4 else 0
    pads = list(attributes.get("pads", [0, 0, 0, 0]))
    if (x.ndim != 4 or k == 0 or weight.shape[-2] != k or k % 2 == 0
            or attributes.get("group", 1) != 1
            or any(s != 1 for s in attributes.get("strides", [1, 1]))
            or any(d != 1 for d in attributes.get("dilations", [1, 1]))
            or attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
            or pads != [k // 2] * 4):
        raise NotAHeadStage(node, "convolutions are k x k (odd k), stride 1, dilation 1, one "
                                  "group, same padding")
    bias = np.zeros(weight.shape[0], np.float32) if bias is None else bias
    conv, tensor = Conv(weight.astype(np.float32), bias.astype(np.float32)), node.output[0]
    following = chain.next_node(tensor)
    if following is not None and following.op_type == "BatchNormalization":
        conv, tensor = _fold_batch_norm(chain, following, conv), following.output[0]
    return conv, tensor


def _fold_batch_norm(chain, node, conv: Conv) -> Conv:
    if _attributes(node).get("training_mode", 0) or len(node.output) > 1:
        raise NotAHeadStage(node, "a batch norm in training mode")
    gamma, beta, mean, variance = (chain.constant(node, i).astype(np.float64)
                                   for i in range(1, 5))
    scale = gamma / np.sqrt(variance + float(_attributes(node).get("epsilon", 1e-5)))
    folded = conv.folded(scale, beta - mean * scale)
    return Conv(folded.weight.astype(np.float32), folded.bias.astype(np.float32))


def _batch_norm(chain, node, x, plan):
    del chain, x, plan
    raise NotAHeadStage(node, "a batch norm folds into the convolution before it; this one "
                              "follows none")


def _relu(chain, node, x, plan):
    del chain, x, plan
    return Relu(), node.output[0]


def _identity(chain, node, x, plan):
    del chain, x, plan
    return None, node.output[0]


RESIZE_MODES = {  # (mode, coordinate transformation) -> (our mode, align_corners)
    ("linear", "half_pixel"): ("bilinear", False),
    ("linear", "pytorch_half_pixel"): ("bilinear", False),
    ("linear", "align_corners"): ("bilinear", True),
    ("nearest", "asymmetric"): ("nearest", False),
}


def _resize(chain, node, x, plan):
    del plan
    attributes = _attributes(node)
    mode = _text(attributes.get("mode", "nearest"))
    transform = _text(attributes.get("coordinate_transformation_mode", "half_pixel"))
    nearest = _text(attributes.get("nearest_mode", "round_prefer_floor"))
    if (mode, transform) not in RESIZE_MODES or (mode == "nearest" and nearest != "floor"):
        raise NotAHeadStage(node, f"resize mode {mode} with {transform} coordinates: bilinear "
                                  "(align_corners true or false) or torch's nearest")
    if x.ndim != 4 or attributes.get("antialias", 0) or attributes.get("axes"):
        raise NotAHeadStage(node, "a resize of a [1, C, H, W] map, without antialias or axes")
    scales, sizes = chain.constant(node, 2), chain.constant(node, 3)
    if sizes is not None and sizes.size:
        size = tuple(int(v) for v in sizes.ravel()[-2:])
        scale = tuple(out / size_in for out, size_in in zip(size, x.shape[2:], strict=True))
    elif scales is not None and scales.size:
        scale = tuple(float(v) for v in scales.ravel()[-2:])
        size = tuple(int(np.floor(n * s)) for n, s in zip(x.shape[2:], scale, strict=True))
    else:
        raise NotAHeadStage(node, "a resize needs constant scales or sizes")
    if (sizes is not None and sizes.size and list(sizes.ravel()[:2]) != list(x.shape[:2])) or (
            scales is not None and scales.size and list(scales.ravel()[:2]) != [1, 1]):
        raise NotAHeadStage(node, "a resize of the map's height and width only")
    kind, align = RESIZE_MODES[(mode, transform)]
    return Resize(kind, size, scale, align), node.output[0]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_HANDLERS = {"Slice": _slice, "LayerNormalization": _layer_norm, "MatMul": _matmul,
             "Transpose": _layout, "Reshape": _layout, "Conv": _conv,
             "BatchNormalization": _batch_norm, "Relu": _relu, "Identity": _identity,
             "Resize": _resize}


def describe_heads(models: dict[str, onnx.ModelProto], tasks: list[str]) -> dict[str, dict]:
    """Per task, its head (`models[task]`) as project.json records it: the recognised stages
    and their MACs, or the node that keeps it on the host and why. Every head runs on the
    host (onnxruntime) for now: the accelerator has no convolution unit yet."""
    heads = {}
    for task in tasks:
        found = recognise_head(models[task], task)
        if isinstance(found, HeadPlan):
            heads[task] = {"stages": found.describe(), "macs": found.macs(), "runs_on": "host"}
        else:
            heads[task] = {"runs_on": "host", "node": found.node, "reason": found.reason}
    return heads


def head_line(task: str, head: dict) -> str:
    """One line on where a task's head runs and why."""
    if "stages" in head:
        return (f"head {task}: {head['stages']} ({head['macs'] / 1e9:.3g} G MAC) runs on the "
                "host: the accelerator has no convolution unit yet")
    return f"head {task} runs on the host: node {head['node']!r}: {head['reason']}"
