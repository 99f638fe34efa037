"""The `m3c` command line: a thin layer over the Python API, and its one error boundary.

Every failure a user can cause ends as one or two lines on stderr and exit code 2: `M3CError`
(raised where the problem is understood), OS errors (full disk, read-only paths), onnxruntime's
refusals and running out of memory. Anything else is a bug in m3c: one line naming a file that
holds the traceback, exit code 1 (`--debug` prints the traceback instead).
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from collections.abc import Sequence

from m3c import progress
from m3c.commands import COMMANDS
from m3c.errors import M3CError, OnnxRuntimeError, OutputError, from_os_error, write_log

# A message longer than this, or of more than one line, is cut to its first line and written
# whole to a file the message names.
MAX_MESSAGE = 300
MAX_TABLE_LINES = 8  # ... except a headline with a few table rows, printed whole


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m3c", description="Compile M3ViT mixture-of-experts models into FPGA accelerators."
    )
    parser.add_argument("--quiet", action="store_true", help="print only results and errors")
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of any error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, configure, handler in COMMANDS:
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        configure(sub_parser)
        sub_parser.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as usage:  # argparse has printed usage and the error (or --help)
        return usage.code if isinstance(usage.code, int) else 2
    progress.configure(not args.quiet)
    previous = signal.signal(signal.SIGTERM, _terminated)
    keep_freed_memory()
    try:
        status = args.handler(args)
    except (KeyboardInterrupt, Terminated):
        print(f"m3c {args.command}: interrupted", file=sys.stderr)
        return 130
    except BaseException as error:  # noqa: B036 - SystemExit aside, this is the one boundary
        if isinstance(error, SystemExit):
            raise
        return report_error(args.command, error, debug=args.debug)
    finally:
        signal.signal(signal.SIGTERM, previous)
        progress.configure(False)  # the Python API stays silent after a command
    return int(status or 0)


# glibc mallopt parameters and the values the command line sets.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 1 << 25  # the largest glibc accepts on 64-bit
TRIM_THRESHOLD = 1 << 31
TOP_PAD = 1 << 28


def keep_freed_memory() -> None:
    """Let glibc's malloc reuse freed memory instead of handing it back to the kernel: a
    compile allocates and frees arrays of tens of MB per layer (emulations, onnxruntime without
    its arena), and faulting in fresh pages from the kernel took a fifth of its CPU time. A no-op
    where the C library is not glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return
    for parameter, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                             (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)):
        mallopt(parameter, value)


class Terminated(BaseException):
    """SIGTERM, raised where the program is (not caught by `except Exception`).

    Not a KeyboardInterrupt: CPython remembers a KeyboardInterrupt that leaves any code run
    from a string (a dataclass's generated methods, say) and then kills the process with SIGINT
    at exit even though `main` caught it, so a terminated compile would sometimes end by
    SIGINT instead of exit code 130."""


def _terminated(signum: int, frame) -> None:
    """SIGTERM unwinds like Ctrl-C, so staging directories and locks are removed on the way
    out (SIGKILL cannot be caught: the next run into the same output cleans up instead)."""
    del frame
    raise Terminated(f"signal {signum}")


def expected_error(error: BaseException) -> M3CError | None:
    """The user-facing form of an expected failure, or None for a bug."""
    if isinstance(error, M3CError):
        return error
    if isinstance(error, OSError):
        return from_os_error(error)
    if isinstance(error, MemoryError):
        return OutputError("ran out of memory", remedy="use a smaller model or input size, or "
                           "a machine with more memory")
    if type(error).__module__.startswith("onnxruntime"):
        return OnnxRuntimeError(f"onnxruntime refused the model: {_first_line(str(error))}",
                                remedy="check the model with `python -m onnx.checker`; "
                                       "re-export it", detail=str(error))
    return None


def report_error(command_name: str, error: BaseException, debug: bool = False) -> int:
    """Print an error in one or two lines; return the exit code (2 expected, 1 a bug)."""
    prefix = f"m3c {command_name}: error:"
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    known = expected_error(error)
    if known is None:
        saved = write_log(f"m3c-{command_name}-traceback", "".join(
            traceback.format_exception(error)))
        where = (f"traceback in {saved}" if saved else "no traceback file could be written")
        print(f"m3c {command_name}: internal error: {type(error).__name__}: "
              f"{_clip(_first_line(str(error)), 160)} ({where}; --debug prints it; please "
              "report it as an m3c bug)", file=sys.stderr)
        return 1
    print(f"{prefix} {short_message(command_name, known)}", file=sys.stderr)
    return 2


def short_message(command_name: str, error: M3CError) -> str:
    """The gist of `error` (its remedy on a second line); long text goes to a named file."""
    message = error.message
    if _short_table(message) and not error.detail:  # a few lines of figures: print them
        headline, *rows = message.strip().splitlines()
        message = "\n".join([headline, *(f"  {row}" for row in rows)])
    elif len(message) > MAX_MESSAGE or "\n" in message.strip() or error.detail:
        full = message + (f"\n\n{error.detail}" if error.detail else "")
        saved = write_log(f"m3c-{command_name}-error", full + "\n")
        gist = _clip(_first_line(message), MAX_MESSAGE - 60)
        message = f"{gist} (full text in {saved})" if saved else gist
    if error.remedy:
        message += f"\n  remedy: {_clip(_first_line(error.remedy), MAX_MESSAGE)}"
    return message


def _short_table(text: str) -> bool:
    """A message of a headline and a few table rows (a resource overflow), short enough to
    print whole."""
    lines = text.strip().splitlines()
    return 1 < len(lines) <= MAX_TABLE_LINES and all(len(line) <= 100 for line in lines)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
