"""One buffer-and-register protocol, two drivers: PYNQ on the board, a simulated device here.

A `Driver` allocates physically contiguous buffers (each with a physical address), moves words
between host and buffer, and reads/writes the kernel's AXI4-Lite registers. `KernelSession`
speaks the kernel's protocol over any driver; the simulated device behaves like the HLS block
(ap_start starts it, ap_done clears on read), so the board's code path runs here unchanged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .errors import AcceleratorError

AP_START, AP_DONE, AP_IDLE, AP_READY = 0x1, 0x2, 0x4, 0x8


@dataclass
class Buffer:
    """A contiguous DDR buffer: its physical address, element count and word dtype."""

    name: str
    address: int
    elements: int
    dtype: str
    handle: Any = None  # the driver's own object (a pynq buffer, or the simulated array)


class Driver(Protocol):
    def allocate(self, name: str, elements: int, dtype: str) -> Buffer: ...
    def write_buffer(self, buffer: Buffer, words: np.ndarray) -> None: ...
    def read_buffer(self, buffer: Buffer) -> np.ndarray: ...
    def write_register(self, offset: int, value: int) -> None: ...
    def read_register(self, offset: int) -> int: ...
    def free(self, buffer: Buffer) -> None: ...


# -- the simulated device -------------------------------------------------------------------

KernelFunction = Callable[[dict[str, np.ndarray], int], None]


@dataclass
class SimulatedDevice:
    """Register file + simulated DDR (arrays keyed by physical address) around a kernel.

    On ap_start the pointer registers are resolved to buffers through the register map and
    `kernel(buffers, task)` runs; then ap_done/ap_idle/ap_ready are set. With `hang=True` the
    kernel never finishes (ap_idle stays low), which is what a wedged bitstream looks like.
    """

    register_map: dict
    kernel: KernelFunction
    hang: bool = False
    memory: dict[int, np.ndarray] = field(default_factory=dict)
    registers: dict[int, int] = field(default_factory=dict)
    writes: list[tuple[int, int]] = field(default_factory=list)
    starts: int = 0
    next_address: int = 0x4000_0000  # where the next buffer goes (above 4 GiB tests data_1)

    def __post_init__(self) -> None:
        self.registers[self.register_map["control"]["AP_CTRL"]] = AP_IDLE

    def allocate(self, elements: int, dtype: str) -> tuple[int, np.ndarray]:
        address, array = self.next_address, np.zeros(elements, dtype)
        self.memory[address] = array
        # Page-aligned like the CMA allocator, so buffers never overlap.
        self.next_address += (array.nbytes + 0xFFF) // 0x1000 * 0x1000 + 0x1000
        return address, array

    def release(self, address: int) -> None:
        self.memory.pop(address, None)

    def write(self, offset: int, value: int) -> None:
        if not 0 <= value < 2**32:
            raise AcceleratorError(f"register 0x{offset:02x}: {value} does not fit 32 bits")
        self.writes.append((offset, value))
        ctrl = self.register_map["control"]["AP_CTRL"]
        if offset == ctrl:
            if value & AP_START:
                self._start()
            return
        self.registers[offset] = value

    def read(self, offset: int) -> int:
        value = self.registers.get(offset, 0)
        if offset == self.register_map["control"]["AP_CTRL"]:
            self.registers[offset] = value & ~AP_DONE  # ap_done is clear-on-read
        return value

    def _start(self) -> None:
        ctrl = self.register_map["control"]["AP_CTRL"]
        self.starts += 1
        self.registers[ctrl] = AP_START
        if self.hang:
            return
        buffers, task = self._arguments()
        self.kernel(buffers, task)
        self.registers[ctrl] = AP_DONE | AP_IDLE | AP_READY

    def _arguments(self) -> tuple[dict[str, np.ndarray], int]:
        buffers, task = {}, 0
        for argument in self.register_map["arguments"]:
            words = [self.registers.get(offset, 0) for offset in argument["words"]]
            if argument["kind"] == "scalar":
                task = words[0] - (1 << 32) if words[0] >= 1 << 31 else words[0]
                continue
            address = words[0] | words[1] << 32
            if address not in self.memory:
                raise AcceleratorError(f"kernel argument {argument['name']} points at "
                                       f"0x{address:x}, which is no allocated buffer",
                                       remedy="write every pointer register before ap_start")
            buffers[argument["name"]] = self.memory[address]
        return buffers, task


class SimulatedDriver:
    """The Driver protocol over a SimulatedDevice; counts the words written to each buffer."""

    def __init__(self, device: SimulatedDevice) -> None:
        self.device = device
        self.buffer_writes: Counter[str] = Counter()

    def allocate(self, name: str, elements: int, dtype: str) -> Buffer:
        address, array = self.device.allocate(elements, dtype)
        return Buffer(name, address, elements, dtype, array)

    def write_buffer(self, buffer: Buffer, words: np.ndarray) -> None:
        buffer.handle[:] = words
        self.buffer_writes[buffer.name] += 1

    def read_buffer(self, buffer: Buffer) -> np.ndarray:
        return buffer.handle.copy()

    def write_register(self, offset: int, value: int) -> None:
        self.device.write(offset, value)

    def read_register(self, offset: int) -> int:
        return self.device.read(offset)

    def free(self, buffer: Buffer) -> None:
        self.device.release(buffer.address)


# -- PYNQ ---------------------------------------------------------------------------------------

class PynqDriver:
    """The Driver protocol over PYNQ: an Overlay's kernel IP and `pynq.allocate` buffers.

    `pynq` is the module (or, in tests, a fake with `Overlay` and `allocate`), so nothing here
    imports pynq; `Accelerator.open(..., backend="pynq")` passes the real module.
    """

    def __init__(self, pynq: Any, bitstream: str, ip_name: str) -> None:
        self.pynq = pynq
        try:
            self.overlay = pynq.Overlay(bitstream)
        except Exception as error:  # PYNQ raises plain exceptions for missing/invalid files
            raise AcceleratorError(
                f"cannot load overlay {bitstream}: {error}",
                remedy="copy overlay/m3c.bit and m3c.hwh next to host/") from error
        candidates = [name for name in self.overlay.ip_dict if name.split("/")[-1] == ip_name]
        if not candidates:
            raise AcceleratorError(f"overlay {bitstream} has no IP named {ip_name}",
                                   remedy="rebuild the bitstream from this project")
        self.ip = getattr(self.overlay, candidates[0])

    def allocate(self, name: str, elements: int, dtype: str) -> Buffer:
        handle = self.pynq.allocate(shape=(elements,), dtype=dtype)
        address = getattr(handle, "physical_address", None) or handle.device_address
        return Buffer(name, int(address), elements, dtype, handle)

    def write_buffer(self, buffer: Buffer, words: np.ndarray) -> None:
        buffer.handle[:] = words
        buffer.handle.flush()  # the kernel reads DDR, not the CPU cache

    def read_buffer(self, buffer: Buffer) -> np.ndarray:
        buffer.handle.invalidate()
        return np.array(buffer.handle, copy=True)

    def write_register(self, offset: int, value: int) -> None:
        self.ip.write(offset, value)

    def read_register(self, offset: int) -> int:
        return int(self.ip.read(offset))

    def free(self, buffer: Buffer) -> None:
        buffer.handle.freebuffer()
