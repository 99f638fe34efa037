"""m3c host runtime: run a compiled project on the board (PYNQ), in C-simulation or in numpy.

Imports with numpy alone; onnxruntime (task heads), pynq (board) and m3c (C-simulation) are
imported only when used. A copy of this package is placed in every project's host/ folder.
"""

from .accelerator import BACKENDS, Accelerator
from .errors import AcceleratorError

__all__ = ["BACKENDS", "Accelerator", "AcceleratorError"]
