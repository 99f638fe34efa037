"""Outputs that appear whole or not at all.

A directory output (a compiled project, a folder of stages) is built in a hidden staging
directory beside its destination and renamed into place. Replacing an existing one (`--force`)
renames the old one aside first and deletes it only once the new one is in place, so a run
killed at any moment leaves either the old or the new directory, never a mix. A lock file beside
the destination refuses a second concurrent run into it; the next run that takes the lock
removes what killed runs left behind (and puts back an old directory a killed run had moved
aside but not yet replaced). File outputs (`lower -o`) are
staged in such a directory too, then renamed next to it.

Hidden names, all beside the destination NAME: `.NAME.m3c-lock`, `.NAME.m3c-stage-<pid>`,
`.NAME.m3c-old-<pid>`; compiles before this module used `.NAME.m3c-<random>` for staging.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from m3c.errors import M3CError, OutputError

MARK = ".m3c-"


def _hidden(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}{MARK}{kind}"


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold `.NAME.m3c-lock` for `out`, or fail at once naming the run that holds it.

    flock is released by the kernel when its holder dies, so a killed run never leaves a lock
    that blocks later ones.
    """
    path = _hidden(out, "lock")
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 32, 0).decode(errors="replace").strip() or "?"
            os.close(handle)
            raise OutputError(f"another m3c run (pid {holder}) is writing {out}",
                              remedy="wait for it to finish, or choose another -o") from None
        # The previous holder may have unlinked the file between our open and flock: then we
        # hold a lock nobody else can see, so start again on the current file.
        try:
            same = os.path.samestat(os.fstat(handle), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(handle)
    try:
        os.ftruncate(handle, 0)
        os.pwrite(handle, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(handle)


def clean_stale(out: Path) -> list[Path]:
    """Remove staging and set-aside directories of killed runs into `out` (call holding its
    lock: then none of them belongs to a live run). An old project moved aside by a run killed
    before its replacement arrived is restored first. Returns what was removed."""
    leftovers = sorted(path for path in out.parent.glob(f".{out.name}{MARK}*")
                       if path.name != _hidden(out, "lock").name)
    aside = [path for path in leftovers if path.name.startswith(f".{out.name}{MARK}old-")]
    if aside and not out.exists():
        os.rename(aside[0], out)
        leftovers.remove(aside[0])
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            remove_tree(path)
        else:
            path.unlink(missing_ok=True)
    return leftovers


def remove_tree(path: Path) -> None:
    """Delete a directory tree, including read-only parts of it (a project the user made
    read-only is still replaced by --force); what cannot be deleted stays for a later run."""
    def writable_and_retry(function, name, exc_info) -> None:
        del exc_info
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), 0o700)
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, 0o700)
            function(name)

    shutil.rmtree(path, onerror=writable_and_retry)


def check_destination(out: Path, force: bool,
                      replaceable: Callable[[Path], bool] = lambda path: False,
                      error: type[M3CError] = OutputError) -> None:
    """Refuse an output `out` that cannot be (re)placed: raises `error` saying why (callers
    keep their own stage's error class)."""
    parent = out.parent
    if not parent.is_dir():
        raise error(f"cannot create {out}: {parent} does not exist",
                    remedy="create the parent directory first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise error(f"cannot create {out}: {parent} is not writable",
                    remedy="choose a writable location")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise error(f"{out} exists and is not a directory", remedy="choose another path")
    if out.is_dir() and any(out.iterdir()) and not (force or replaceable(out)):
        raise error(f"{out} is not empty", remedy="pass --force to replace it")
    if out.is_dir() and os.path.ismount(out):
        # A mount point cannot be renamed: refuse instead of failing half-way.
        raise error(f"{out} is a mount point and cannot be replaced",
                    remedy="use a directory inside it as -o")


@contextlib.contextmanager
def staged_directory(out: str | os.PathLike, force: bool = False,
                     replaceable: Callable[[Path], bool] = lambda path: False,
                     error: type[M3CError] = OutputError) -> Iterator[Path]:
    """Yield an empty staging directory; on success it becomes `out`.

    An existing non-empty `out` is refused unless `force` or `replaceable(out)`. On any error
    (or a signal) the staging directory is removed and `out` is left as it was.
    """
    out = Path(out).absolute()
    if not out.name:
        raise OutputError(f"{out} is not a usable output path", remedy="name a directory")
    check_destination(out, force, replaceable, error)
    with output_lock(out):
        clean_stale(out)
        check_destination(out, force, replaceable, error)  # a concurrent run may have finished
        staging = _hidden(out, f"stage-{os.getpid()}")
        try:  # mkdir inside: a signal right after it still removes the directory
            staging.mkdir()
            yield staging
            _commit(staging, out)
        finally:
            remove_tree(staging)


def _commit(staging: Path, out: Path) -> None:
    if not out.exists():
        os.rename(staging, out)
        return
    aside = _hidden(out, f"old-{os.getpid()}")
    os.rename(out, aside)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(aside, out)
        raise
    remove_tree(aside)


@contextlib.contextmanager
def staged_files(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging directory beside the file `out`; on success every file written there
    (`out`'s name and companions such as head graphs) is renamed into `out`'s directory."""
    out = Path(out).absolute()
    if out.is_dir():
        raise OutputError(f"{out} is a directory", remedy=f"give a file path, e.g. {out}/"
                          "lowered.onnx")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {out}: its directory is missing or not writable",
                          remedy="create it or choose another path")
    with output_lock(out):
        clean_stale(out)
        staging = _hidden(out, f"stage-{os.getpid()}")
        try:  # mkdir inside: a signal right after it still removes the directory
            staging.mkdir()
            yield staging
            for written in sorted(staging.iterdir()):
                os.replace(written, out.parent / written.name)
        finally:
            remove_tree(staging)
