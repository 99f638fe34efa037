"""m3c host runtime: run a compiled project on the board (PYNQ), in C-simulation or in numpy.

Imports with numpy alone; onnxruntime (task heads), pynq (board), m3c (C-simulation) and numba
(the emulator's fused loops, which it runs without) are imported only when used. A copy of this
package is placed in every project's host/ folder.
"""

from .accelerator import BACKENDS, Accelerator
from .errors import AcceleratorError

__all__ = ["BACKENDS", "Accelerator", "AcceleratorError"]
