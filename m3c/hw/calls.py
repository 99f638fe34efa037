"""Typed kernel calls: one record per op, the kernel.json entry it serialises to.

kernel.json is the interchange (the numpy emulator on the board reads it as plain JSON); on the
compiler's side a call is one of these records, so a unit reads `call.in_dim`, and a call with a
missing or unknown field fails where it is made, naming the layer. `narrow` (a layer's result
type) and `mac8` (its 8-bit operands) are added by the precision pass; weight fields hold
offsets into the float weight blob (absent from calls made for estimates only).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from m3c.errors import CodegenError

LATE = ("narrow", "mac8", "ddr")  # fields set after planning, in the order they are


@dataclass(kw_only=True)
class Call:
    OP: ClassVar[str] = ""
    layer: str
    narrow: dict | None = None
    mac8: dict | None = None
    ddr: dict | None = None  # its DDR segments, [first word, words] each (m3c.hw.layout)

    def to_json(self) -> dict:
        """The kernel.json entry: op and layer, the op's fields in order, then the fields later
        stages add, when set."""
        entry = {"op": self.OP, "layer": self.layer}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("layer", *LATE) and value is not None:
                entry[f.name] = value
        for key in LATE:
            if getattr(self, key) is not None:
                entry[key] = getattr(self, key)
        return entry

    @classmethod
    def of(cls, call: dict | Call) -> Call:
        """The record of a kernel.json entry (a record is returned as it is)."""
        if isinstance(call, Call):
            return call
        record = RECORDS.get(call.get("op"))
        if record is None:
            raise CodegenError(f"kernel call {call.get('layer')!r} has unknown op "
                               f"{call.get('op')!r}", remedy="recompile the project")
        known = {f.name for f in fields(record)}
        unknown = sorted(set(call) - known - {"op"})
        if unknown:
            raise CodegenError(f"kernel call {call.get('layer')!r} ({call['op']}) has unknown "
                               f"fields {unknown}", remedy="recompile the project")
        try:
            return record(**{key: value for key, value in call.items() if key != "op"})
        except TypeError as error:
            raise CodegenError(f"kernel call {call.get('layer')!r} ({call['op']}): {error}",
                               remedy="recompile the project") from None


@dataclass(kw_only=True)
class EmbedCall(Call):
    OP: ClassVar[str] = "embed"
    channels: int
    height: int
    width: int
    patch: int
    dim: int
    patches: int
    tokens: int
    w: int | None = None
    b: int | None = None
    cls: int | None = None
    pos: int | None = None


@dataclass(kw_only=True)
class LayerNormCall(Call):
    OP: ClassVar[str] = "layernorm"
    tokens: int
    dim: int
    gamma: int | None = None
    beta: int | None = None
    epsilon: float = 1e-5


@dataclass(kw_only=True)
class LinearCall(Call):
    """A dense layer: `source` and `target` say where its rows come from and go (attention,
    normalised, hidden, residual)."""

    OP: ClassVar[str] = "linear"
    source: str
    target: str
    tokens: int
    in_dim: int
    out_dim: int
    w: int | None = None
    b: int | None = None
    activation: str = "none"


@dataclass(kw_only=True)
class QkvCall(Call):
    OP: ClassVar[str] = "qkv"
    heads: int
    head_dim: int
    dim: int
    tokens: int
    in_dim: int
    out_dim: int
    w: int | None = None
    b: int | None = None
    activation: str = "none"


@dataclass(kw_only=True)
class AttentionCall(Call):
    OP: ClassVar[str] = "attention"
    tokens: int
    dim: int
    heads: int
    head_dim: int
    scale: float


@dataclass(kw_only=True)
class RouteCall(Call):
    OP: ClassVar[str] = "route"
    tokens: int
    dim: int
    experts: int
    top_k: int
    router_w: int | None = None
    router_b: int | None = None
    weight_rows: int = 1
    bias_rows: int = 1
    renormalise: bool | None = None  # True: the top-k probabilities divided by their sum


@dataclass(kw_only=True)
class ExpertsCall(Call):
    OP: ClassVar[str] = "experts"
    tokens: int
    dim: int
    hidden: int
    experts: int
    activation: str = "gelu"
    w1: int | None = None
    b1: int | None = None
    w2: int | None = None
    b2: int | None = None


@dataclass(kw_only=True)
class FeaturesCall(Call):
    OP: ClassVar[str] = "features"
    tokens: int
    dim: int
    source: str


RECORDS: dict[str, type[Call]] = {record.OP: record for record in (
    EmbedCall, LayerNormCall, LinearCall, QkvCall, AttentionCall, RouteCall, ExpertsCall,
    FeaturesCall)}
