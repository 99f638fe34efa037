"""The kernel's AXI4-Lite `control` register map, as Vitis HLS assigns it.

Rules (UG1399 "S_AXILITE Control Register Map", and every generated `x<kernel>_hw.h`):
0x00 AP_CTRL (bit 0 ap_start, 1 ap_done, 2 ap_idle, 3 ap_ready, 7 auto_restart), 0x04 GIE,
0x08 IER, 0x0C ISR; the arguments follow from 0x10 in declaration order. A pointer with
`m_axi offset=slave` is a 64-bit address: data_0 (low word) at +0, data_1 (high word) at +4, a
reserved word at +8, so 12 bytes. A 32-bit scalar is one data word and a reserved word, 8
bytes. The map is derived from the generated kernel.h, so it follows the signature.
"""

from __future__ import annotations

import re
from pathlib import Path

from m3c.errors import CodegenError

CONTROL = {"AP_CTRL": 0x00, "GIE": 0x04, "IER": 0x08, "ISR": 0x0C}
AP_BITS = {"ap_start": 0, "ap_done": 1, "ap_idle": 2, "ap_ready": 3, "auto_restart": 7}
FIRST_ARGUMENT = 0x10
POINTER_BYTES, SCALAR_BYTES = 12, 8
_SIGNATURE = re.compile(r"void\s+(\w+)\s*\(([^)]*)\)\s*;", re.S)
_PARAMETER = re.compile(r"^(?P<type>.*?)(?P<pointer>\*)?\s*(?P<name>\w+)$")


def parse_signature(header: str) -> tuple[str, list[tuple[str, str, bool]]]:
    """(function, [(name, c_type, is_pointer)]) of the first function declared in kernel.h."""
    match = _SIGNATURE.search(header)
    if match is None:
        raise CodegenError("no top-function declaration in kernel.h",
                           remedy="regenerate the project with `m3c compile`")
    arguments = []
    for text in match.group(2).split(","):
        parameter = _PARAMETER.match(" ".join(text.split()))
        if parameter is None:
            raise CodegenError(f"cannot parse kernel argument {text.strip()!r}")
        arguments.append((parameter["name"], parameter["type"].strip(),
                          parameter["pointer"] is not None))
    return match.group(1), arguments


def register_map(function: str, arguments: list[tuple[str, str, bool]]) -> dict:
    """The `control` bundle's map: block-control registers, then one entry per argument."""
    offset, entries = FIRST_ARGUMENT, []
    for name, c_type, pointer in arguments:
        if pointer:
            entries.append({"name": name, "kind": "pointer", "c_type": c_type + "*",
                            "offset": offset, "words": [offset, offset + 4], "bits": 64})
            offset += POINTER_BYTES
        else:
            entries.append({"name": name, "kind": "scalar", "c_type": c_type,
                            "offset": offset, "words": [offset], "bits": 32})
            offset += SCALAR_BYTES
    return {"kernel": function, "interface": "s_axi_control", "control": CONTROL,
            "ap_ctrl_bits": AP_BITS, "arguments": entries, "size": offset}


def register_map_for(project: Path) -> dict:
    """The register map of a generated project's top function (from hls/src/kernel.h)."""
    return register_map(*parse_signature((project / "hls" / "src" / "kernel.h").read_text()))
