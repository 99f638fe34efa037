"""The kernel's protocol over a Driver: buffers, pointer registers, task, start, poll, read.

Weights are written once when the session opens; each run writes the image, the `task`
scalar only when it changed, then ap_start, polls ap_done/ap_idle with a timeout and reads
the features back. Offsets all come from the project's register_map.json.
"""

from __future__ import annotations

import time

import numpy as np

from .ddr import decode, encode
from .drivers import AP_DONE, AP_IDLE, AP_START, Buffer, Driver
from .errors import AcceleratorError
from .project import Project

# Activations stay on chip: the kernel's DDR buffers are its weights, the image, the features.
BUFFER_OF_ARGUMENT = {"weights": "weights", "image": "image", "features": "features"}


class KernelSession:
    """An opened accelerator: buffers allocated, weights and addresses written."""

    def __init__(self, project: Project, driver: Driver, timeout: float = 10.0) -> None:
        self.project, self.driver, self.timeout = project, driver, timeout
        self.map = project.register_map
        self.ctrl = self.map["control"]["AP_CTRL"]
        self.buffers: dict[str, Buffer] = {}
        self._task_written: int | None = None
        self._busy = False
        try:
            self._allocate()
            self.driver.write_buffer(self.buffers["weights"], project.weight_words())
            self._write_addresses()
        except BaseException:
            self.close()
            raise

    def _allocate(self) -> None:
        elements = self.project.elements
        for argument in self.map["arguments"]:
            if argument["kind"] != "pointer":
                continue
            name = BUFFER_OF_ARGUMENT.get(argument["name"])
            if name is None:
                raise AcceleratorError(f"kernel argument {argument['name']} in "
                                       "register_map.json is unknown to this runtime",
                                       remedy="use the runtime copied into this project's host/")
            if name not in self.buffers:
                word = self.project.weight_word if name == "weights" else self.project.data_word
                self.buffers[name] = self.driver.allocate(name, elements[argument["name"]],
                                                          word.dtype)

    def _write_addresses(self) -> None:
        for argument in self.map["arguments"]:
            if argument["kind"] == "pointer":
                address = self.buffers[BUFFER_OF_ARGUMENT[argument["name"]]].address
                low, high = argument["words"]
                self.driver.write_register(low, address & 0xFFFF_FFFF)
                self.driver.write_register(high, address >> 32)

    def _argument(self, name: str) -> dict:
        return next(a for a in self.map["arguments"] if a["name"] == name)

    def run(self, image: np.ndarray, task: int) -> np.ndarray:
        """float32 image (already checked) -> float32 features, through DDR and registers."""
        if not self.buffers:
            raise AcceleratorError("the accelerator is closed", remedy="open it again")
        if self._busy and not self.driver.read_register(self.ctrl) & (AP_IDLE | AP_DONE):
            raise AcceleratorError("the kernel is still busy with a run that timed out",
                                   remedy="reload the overlay (Accelerator.open) and retry")
        lanes = np.zeros(self.project.elements["image"], self.project.data_word.dtype)
        encoded = encode(image, self.project.data_word)
        lanes[:encoded.size] = encoded
        self.driver.write_buffer(self.buffers["image"], lanes)
        if task != self._task_written:  # switching tasks is this one register write
            self.driver.write_register(self._argument("task")["offset"], task & 0xFFFF_FFFF)
            self._task_written = task
        self._busy = True
        self.driver.write_register(self.ctrl, AP_START)
        self._wait(task)
        self._busy = False
        words = self.driver.read_buffer(self.buffers["features"])
        return self.project.features_from_lanes(decode(words, self.project.data_word)).reshape(-1)

    def _wait(self, task: int) -> None:
        deadline = time.monotonic() + self.timeout
        pause = 1e-5
        while not self.driver.read_register(self.ctrl) & (AP_DONE | AP_IDLE):
            if time.monotonic() > deadline:
                raise AcceleratorError(
                    f"the kernel did not finish within {self.timeout:g} s "
                    f"(task {self.project.tasks[task]})",
                    remedy="check that the bitstream was built from this project, then "
                    "reload the overlay; raise `timeout` for very large models")
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)  # short runs return fast, long ones do not spin

    def close(self) -> None:
        for buffer in {id(b): b for b in self.buffers.values()}.values():
            self.driver.free(buffer)
        self.buffers = {}
