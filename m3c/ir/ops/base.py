"""Base class of every m3c op's reference implementation."""

from __future__ import annotations

from onnx.reference.op_run import OpRun


class M3COp(OpRun):
    """An op of the `m3c` domain: attributes come from the node only.

    `op_schema = None` stops onnx.reference from borrowing the schema (and default
    attributes) of a standard op that happens to share the name, like Gelu or Attention.
    """

    op_domain = "m3c"
    op_schema = None
    template = ""  # the HLS template implementing the op, under templates/
