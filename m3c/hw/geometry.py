"""The MAC array and its memories: sizes every unit, the DDR layout and the estimates share.

The array is weight-stationary: TK x TM multiply-accumulators hold a panel of TK inputs by TM
outputs while token rows stream through, one row of TK inputs per cycle. On-chip tensors live
in banked memories: a row of a tensor is cut into chunks of TK elements, and a chunk is one
word in each of TK / LANES banks (a bank word is 64 bits, LANES elements), so the array reads a
chunk per cycle. DDR words are PORT_BITS wide (the target's HP port); weights are laid out in
the order the array consumes them, panel after panel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from m3c.errors import CodegenError

BANK_BITS = 64  # one URAM word (72 bits) holds one bank word


@dataclass(frozen=True)
class Geometry:
    """Array and memory sizes of one design point."""

    tk: int  # array inputs per cycle: one chunk
    tm: int  # array outputs per cycle
    lane_bits: int  # bits per element in memory and DDR lanes (16 or 32)
    port_bits: int  # DDR word
    row_tile: int  # rows of a matmul tile (its accumulators and the MLP's hidden rows)
    query_tile: int  # attention queries scored and mixed together
    # Two 8-bit products per DSP48E2 (WP486): TK x TM / 2 DSPs; 8-bit layers use all TK x TM
    # products per cycle, 16-bit layers one per DSP (two passes over the rows per panel).
    packed: bool = False
    # A packed array that also runs a 16-bit attention mix: its operands (softmax numerators,
    # prob_t + 1 bits) are wider than the DSP's 18-bit B port, so 16-bit products put the
    # operand on A and the weight on B, and both ports choose by mode. Otherwise B always
    # takes the operand (8-bit codes, 16-bit data) and only A chooses (matmul.h.j2 mac_row).
    wide_operands: bool = False
    # Stages of a column's multiply-add chain (fixed point: a key group's GROUP_K inputs, the
    # DSP48E2 cascade of matmul.h.j2 mac_row; a row's sums leave it chain - 1 cycles after it
    # enters). Float sums in place: 1.
    chain: int = 1

    def __post_init__(self) -> None:
        if self.tk % self.lanes or self.tm % self.lanes or self.tm > self.tk:
            raise CodegenError(f"array {self.tk}x{self.tm}: both sides must be multiples of "
                               f"{self.lanes} elements and TM <= TK",
                               remedy="choose another --tiles, or let m3c pick them")
        whole = self.port_lanes * (2 if self.packed else 1)  # lanes of a panel's DDR words
        if self.tk * self.tm % whole:
            raise CodegenError(f"array {self.tk}x{self.tm}: a panel of {self.tk * self.tm} "
                               f"weights is not whole DDR words of {whole}",
                               remedy="choose another --tiles, or let m3c pick them")

    @property
    def lanes(self) -> int:
        return BANK_BITS // self.lane_bits

    @property
    def banks(self) -> int:
        return self.tk // self.lanes

    @property
    def port_lanes(self) -> int:
        return self.port_bits // self.lane_bits

    @property
    def macs(self) -> int:
        return self.tk * self.tm

    @property
    def dsps(self) -> int:
        """DSP48E2s of the array (at one DSP per 16-bit product)."""
        return self.macs // 2 if self.packed else self.macs

    def passes(self, narrow: bool) -> int:
        """Sweeps over a tile's rows per panel: a 16-bit layer on a packed array takes two
        (a DSP computes the even column, then the odd one)."""
        return 2 if self.packed and not narrow else 1

    def chunks(self, width: int) -> int:
        """Chunks of TK elements a row of `width` elements takes."""
        return max(1, math.ceil(width / self.tk))

    def padded(self, width: int) -> int:
        return self.chunks(width) * self.tk

    def words(self, elements: int) -> int:
        """DDR words holding `elements` lanes."""
        return math.ceil(elements / self.port_lanes)

    @property
    def panel_words(self) -> int:
        return self.words(self.tk * self.tm)

    def panel_words_of(self, narrow: bool) -> int:
        """A panel's DDR words: 8-bit weights go two codes to a lane."""
        return self.words(self.tk * self.tm // 2) if narrow else self.panel_words

    @property
    def bias_words(self) -> int:
        return self.words(self.tm)

    def panels(self, in_dim: int, out_cols: int) -> tuple[int, int]:
        """(k panels, m panels) of a product with `in_dim` inputs and `out_cols` outputs."""
        return self.chunks(in_dim), max(1, math.ceil(out_cols / self.tm))

    def matmul_words(self, in_dim: int, out_cols: int, narrow: bool = False) -> int:
        """DDR words of one matmul's blob: per m panel its biases, then its k panels."""
        k_panels, m_panels = self.panels(in_dim, out_cols)
        return m_panels * (self.bias_words + k_panels * self.panel_words_of(narrow))

    def row_tiles(self, rows: int) -> list[int]:
        """Rows per tile: as few tiles as ROW_TILE allows, of (nearly) equal size, so a short
        last tile does not leave the array waiting for its panels."""
        if rows <= 0:
            return []
        count = math.ceil(rows / self.row_tile)
        size = math.ceil(rows / count)
        return [min(size, rows - start) for start in range(0, rows, size)]


def lane_bits(precision) -> int:
    """16-bit lanes while data and weights fit them, else 32 (fp32 included)."""
    if precision.floating:
        return 32
    return 16 if max(precision.data, precision.weight) <= 16 else 32
