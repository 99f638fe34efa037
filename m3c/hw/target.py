"""FPGA boards as data: one JSON file per target under m3c/targets/."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from m3c.errors import CodegenError

TARGETS_DIR = Path(__file__).parents[1] / "targets"  # data, one file per board


@dataclass(frozen=True)
class Target:
    name: str
    part: str
    board_part: str
    dsp: int
    lut: int
    ff: int
    bram36: int
    uram: int
    clock_mhz: int
    hp_ports: int
    hp_port_bits: int
    ddr: str
    board_power_w: float


def list_targets() -> list[str]:
    return sorted(path.stem for path in TARGETS_DIR.glob("*.json"))


def load_target(name: str) -> Target:
    path = TARGETS_DIR / f"{name}.json"
    if not path.is_file():
        raise CodegenError(f"unknown target {name!r}",
                           remedy="choose one of: " + ", ".join(list_targets()))
    return Target(**json.loads(path.read_text()))
