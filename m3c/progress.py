"""Progress on steps that take more than a few seconds: a live bar (tqdm) on a terminal, plain
lines when stderr is piped or logged, nothing with `--quiet`. The command line switches it on;
the Python API stays silent unless `configure(True)` is called."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")
_enabled = False


def configure(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def _live() -> bool:
    return sys.stderr.isatty()


def note(text: str) -> None:
    """One line saying what a long step is doing now."""
    if _enabled:
        print(text, file=sys.stderr, flush=True)


class Counter:
    """Progress of `total` units of work reported as they finish (possibly out of order)."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what, self.done = total, what, 0
        self._bar = None
        if _enabled and _live():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, file=sys.stderr, leave=False,
                             dynamic_ncols=True)

    def update(self, done: int) -> None:
        """`done` of the total are finished."""
        if self._bar is not None:
            self._bar.update(done - self.done)
        elif _enabled and (done == self.total or _tenth(done, self.total) > _tenth(self.done,
                                                                                  self.total)):
            print(f"{self.what}: {done}/{self.total}", file=sys.stderr, flush=True)
        self.done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _tenth(done: int, total: int) -> int:
    """Piped progress prints a line per tenth of the work, not per unit."""
    return 10 * done // max(total, 1)


def steps(items: Iterable[Item], total: int, what: str) -> Iterator[Item]:
    """`items`, reporting each as it is taken up."""
    counter = Counter(total, what)
    try:
        for done, item in enumerate(items):
            counter.update(done)
            yield item
        counter.update(total)
    finally:
        counter.close()
