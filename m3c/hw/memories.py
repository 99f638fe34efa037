"""The kernel's on-chip memories, in the order every unit takes them: the top function
declares them (templates/hls/kernel/kernel.cpp.j2), each unit function receives them all
(M3C_MEMORY_PARAMS in templates/hls/units/matmul.h.j2), and the units that own them size and
bind them (their `arrays`). tests/test_layout.py holds the templates to this list."""

from __future__ import annotations

# (variable, owning unit)
MEMORIES = (
    ("resid", "memory"), ("act", "memory"),
    ("scores", "attention"), ("row_max", "attention"), ("totals", "attention"),
    ("inverses", "attention"),
    ("logits", "moe"), ("queue_tokens", "moe"), ("queue_scores", "moe"), ("queue_len", "moe"),
    ("ln_mean", "layernorm"), ("ln_inv", "layernorm"), ("gamma", "layernorm"),
    ("beta", "layernorm"),
)
MEMORY_ARGS = ", ".join(name for name, _ in MEMORIES)  # a unit call's last arguments
