"""The kernel's on-chip memories: the one list the top function's declarations, their
partitions and storage bindings (templates/hls/kernel/kernel.cpp.j2), every unit function's
memory parameters and the calls' memory arguments (templates/hls/units/matmul.h.j2 and
m3c.hw.units.base.unit_call) are generated from. The units that own them size them for the
estimate (their `arrays`)."""

from __future__ import annotations

from dataclasses import dataclass

from m3c.hw.geometry import Geometry


@dataclass(frozen=True)
class Memory:
    """One on-chip array. `element` is its C++ type as the m3c namespace sees it, `extents`
    its dimensions (m3c_ops.h constants); `partition` the array_partition pragma's type and
    dimension ({tk}: the array's TK); `bind` the bind_storage type, None for an array too small
    to bind."""

    name: str
    unit: str
    element: str
    extents: tuple[str, ...]
    partition: str = ""
    bind: str | None = "ram_2p"

    def parameter(self) -> str:
        """As a unit function's parameter (inside namespace m3c)."""
        return f"{self.element} {self.name}" + "".join(f"[{e}]" for e in self.extents)

    def declaration(self) -> str:
        """As the top function declares it (outside namespace m3c)."""
        element = f"m3c::{self.element}" if self.element in NAMESPACED else self.element
        return (f"static {element} {self.name}"
                + "".join(f"[m3c::{e}]" for e in self.extents) + ";")

    def partition_pragma(self, g: Geometry) -> str:
        return self.partition.format(tk=g.tk)


NAMESPACED = {"bank_t", "token_index_t"}  # types m3c_ops.h defines inside namespace m3c
MEMORIES = (
    # the residual stream and the layers' working tensors (m3c/hw/geometry.py)
    Memory("resid", "memory", "bank_t", ("BANKS", "RESID_DEPTH"), "type=complete dim=1"),
    Memory("act", "memory", "bank_t", ("BANKS", "ACT_DEPTH"), "type=complete dim=1",
           bind="ram_t2p"),
    # a block of queries' scores and softmax statistics
    # (key k of a query's row in bank k % TK, at k / TK: each bank its own dimension, so a
    # write names its bank at compile time)
    Memory("scores", "attention", "logit_t", ("QUERY_TILE", "SCORE_ROWS", "TK"),
           "type=complete dim=3"),
    Memory("row_max", "attention", "logit_t", ("QUERY_TILE",)),
    Memory("totals", "attention", "acc_t", ("QUERY_TILE",)),
    Memory("inverses", "attention", "recip_t", ("QUERY_TILE",)),
    # routing: the router's logits and the per-expert token queues
    Memory("logits", "moe", "logit_t", ("MAX_TOKENS", "MAX_EXPERTS"), "type=complete dim=2"),
    Memory("queue_tokens", "moe", "token_index_t", ("MAX_EXPERTS", "MAX_TOKENS"),
           "type=complete dim=1"),
    Memory("queue_scores", "moe", "prob_t", ("MAX_EXPERTS", "MAX_TOKENS"),
           "type=complete dim=1"),
    Memory("queue_len", "moe", "int", ("MAX_EXPERTS",), bind=None),
    # layer norm statistics and parameters, applied as rows are read
    Memory("ln_mean", "layernorm", "data_t", ("MAX_TOKENS",)),
    Memory("ln_inv", "layernorm", "norm_t", ("MAX_TOKENS",)),
    Memory("gamma", "layernorm", "weight_t", ("NORM_WIDTH",), "type=cyclic factor={tk} dim=1"),
    Memory("beta", "layernorm", "weight_t", ("NORM_WIDTH",), "type=cyclic factor={tk} dim=1"),
)
MEMORY_ARGS = ", ".join(memory.name for memory in MEMORIES)  # a unit call's last arguments


def macro_body(items: list[str], width: int = 92) -> str:
    """A #define's body: `items` comma-separated, continued over lines of at most `width`."""
    lines, line = [], ""
    for item in items:
        piece = f"{line} {item}," if line else f"{item},"
        if line and len(piece) > width:
            lines.append(line)
            piece = f"{item},"
        line = piece
    lines.append(line)
    return " \\\n    ".join(lines).rstrip(",")


def template_memories(g: Geometry) -> dict:
    """What the templates render: each memory's declaration, partition and binding, and the
    unit functions' memory parameters, uses and arguments."""
    return {
        "memories": [{"name": m.name, "unit": m.unit, "declaration": m.declaration(),
                      "partition": m.partition_pragma(g), "bind": m.bind} for m in MEMORIES],
        "memory_params": macro_body([m.parameter() for m in MEMORIES]),
        "memories_used": macro_body([f"(void){m.name}" for m in MEMORIES]),
        "memory_args": macro_body([m.name for m in MEMORIES]),
    }
