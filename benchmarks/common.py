"""Shared helpers for the benchmark scripts: exported models, timed runs."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path.home() / ".cache" / "m3c" / "bench"


def exported(preset: str, gate: str = "multi") -> Path:
    """A random-weight export of `preset`, made once and reused."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{preset}-{gate}.onnx"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "m3c", "--quiet", "export", "--preset", preset,
                        "--gate", gate, "--random", "-o", str(path)], check=True)
    return path


def timed_runs(command: list[str], repeats: int) -> dict:
    """Run `command` `repeats` times in fresh processes: median wall time, peak RSS."""
    walls, peaks = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        # wait4 gives this child's own peak RSS (getrusage(CHILDREN) keeps the max of all)
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        walls.append(time.perf_counter() - start)
        if status != 0:
            raise SystemExit(f"{' '.join(command)} failed with status {status}")
        peaks.append(usage.ru_maxrss / 1024)  # kB -> MiB on Linux
    return {"wall_s_median": round(statistics.median(walls), 3),
            "wall_s_runs": [round(w, 3) for w in walls],
            "peak_rss_mib_median": round(statistics.median(peaks), 1)}


def median_seconds(work, repeats: int) -> float:
    """Median wall time of `repeats` calls of `work()` in this process."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def emit(result: dict) -> None:
    print(json.dumps(result, indent=2, sort_keys=True))
