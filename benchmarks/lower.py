"""Wall time and peak memory of `m3c lower` on small-pascal (ViT-small, 512², 5 tasks, E=16).

Targets: <= 10 s and <= 2 GB. Usage: python benchmarks/lower.py [--repeats 3] [--preset ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import emit, exported, timed_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small-pascal")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = exported(args.preset)
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "m3c", "--quiet", "lower", str(model),
                   "-o", str(Path(scratch) / "lowered.onnx")]
        result = timed_runs(command, args.repeats)
    result.update(benchmark="m3c lower", preset=args.preset, model_mib=round(
        model.stat().st_size / 2**20, 1), target_wall_s=10, target_peak_mib=2048)
    emit(result)


if __name__ == "__main__":
    main()
