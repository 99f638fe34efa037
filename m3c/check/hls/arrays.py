"""On-chip arrays as synthesis builds them: banks from `array_partition`, ports from
`bind_storage`, and the II a set of accesses per iteration needs on them."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from m3c.check.hls.program import Pragma
from m3c.check.hls.values import Value

# Ports of one bank: (read-only, write-only, read-write).
PORTS = {
    "ram_1p": (0, 0, 1), "ram_2p": (1, 0, 1), "ram_s2p": (1, 1, 0), "ram_t2p": (0, 0, 2),
    "rom_1p": (1, 0, 0), "rom_2p": (2, 0, 0), "m_axi": (1, 1, 0),
}
DEFAULT_RAM, DEFAULT_ROM = "ram_t2p", "rom_2p"  # what Vitis picks unbound: two ports
MAX_BANKS = 4096  # beyond this many banks the accesses are not spread bank by bank


@dataclass(frozen=True)
class ArrayInfo:
    """One array of the design: a declaration (or an m_axi pointer of the top function)."""

    key: str  # unique: declaring function and name
    name: str
    dims: tuple[int | None, ...]
    partition: tuple[tuple[int, str, int], ...] = ()  # (dim from 1, type, banks)
    storage: str | None = None  # bind_storage type
    rom: bool = False  # a const table
    interface: bool = False  # an m_axi pointer: one read and one write channel

    @property
    def registers(self) -> bool:
        """Completely partitioned in every dimension: each element a register."""
        complete = {dim for dim, kind, _ in self.partition if kind == "complete"}
        return bool(self.dims) and complete >= set(range(1, len(self.dims) + 1))

    @property
    def ports(self) -> tuple[int, int, int]:
        if self.interface:
            return PORTS["m_axi"]
        return PORTS.get(self.storage or "", PORTS[DEFAULT_ROM if self.rom else DEFAULT_RAM])

    @property
    def port_text(self) -> str:
        read, write, both = self.ports
        kind = "m_axi" if self.interface else self.storage or (
            f"unbound {'ROM' if self.rom else 'RAM'}, {DEFAULT_ROM if self.rom else DEFAULT_RAM}"
            " assumed")
        return f"{kind}: {read + write + both} port{'s' if read + write + both > 1 else ''}"

    def bank_counts(self) -> dict[int, int]:
        """Banks per partitioned dimension (from 1)."""
        return {dim: banks for dim, _, banks in self.partition}

    def banks_at(self, dim: int, index: Value | None) -> list[int] | None:
        """The banks of dimension `dim` an index can reach (None: any of them)."""
        kind, banks = next((k, b) for d, k, b in self.partition if d == dim)
        size = self.dims[dim - 1]
        if index is None:
            return None
        if index.const is not None:
            if kind == "block" and size:
                return [index.const // math.ceil(size / banks)]
            return [index.const % banks if kind == "cyclic" else index.const]
        if kind != "cyclic":
            return None
        # offset + sum of c x symbol: the symbols move it by multiples of gcd(c..., banks)
        terms = index.linear()
        step = math.gcd(banks, *(c for s, c in terms.items() if s))
        offset = terms.get("", 0)
        return sorted({(offset + k * step) % banks for k in range(banks // step)})


def partitioned(key: str, name: str, dims: tuple[int | None, ...], pragmas: list[Pragma],
                rom: bool = False) -> ArrayInfo:
    """An array with the partition and storage its pragmas give it."""
    partition: dict[int, tuple[str, int]] = {}
    storage = None
    for pragma in pragmas:
        if pragma.kind == "bind_storage":
            storage = pragma.options.get("type", "").lower() or None
            continue
        kind = pragma.options.get("type", "complete").lower()
        dim = int(pragma.options.get("dim", "1")) if pragma.options.get("dim", "1").isdigit() \
            else 1
        factor = pragma.options.get("factor", "")
        for target in (range(1, len(dims) + 1) if dim == 0 else [dim]):
            if target > len(dims):
                continue
            banks = dims[target - 1] if kind == "complete" else (
                int(factor) if factor.isdigit() else None)
            if banks is not None:
                partition[target] = (kind, banks)
    return ArrayInfo(key, name, dims, tuple((d, k, b) for d, (k, b) in sorted(partition.items())),
                     storage, rom)


def port_bound(ports: tuple[int, int, int], reads: int, writes: int) -> int:
    """Fewest cycles in which the bank's ports serve `reads` and `writes`."""
    read_only, write_only, both = ports
    cycles = 1
    for needed, capacity in ((reads, read_only + both), (writes, write_only + both),
                             (reads + writes, read_only + write_only + both)):
        if needed:
            cycles = max(cycles, math.ceil(needed / capacity) if capacity else 10**6)
    return cycles


def banks_of(array: ArrayInfo, coordinate: dict[int, list[int] | None]) -> list[tuple[int, ...]]:
    """Every bank an access reaches: its own, or those of a dimension indexed at run time."""
    counts = array.bank_counts()
    ranges = [coordinate[dim] if coordinate.get(dim) is not None else range(counts[dim])
              for dim in sorted(counts)]
    if math.prod(len(r) for r in ranges) > MAX_BANKS:
        return [tuple(-1 for _ in ranges)]
    return list(itertools.product(*ranges))
