"""The `m3c` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from m3c.errors import M3CError

Handler = Callable[[argparse.Namespace], int | None]
_COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Handler]] = []


def command(name: str, help_text: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register a sub-command: `configure` adds its arguments, the decorated function runs it."""

    def register(handler: Handler) -> Handler:
        _COMMANDS.append((name, help_text, configure, handler))
        return handler

    return register


def build_parser() -> argparse.ArgumentParser:
    # Sub-command modules register themselves on import.
    from m3c import commands  # noqa: F401

    parser = argparse.ArgumentParser(
        prog="m3c", description="Compile M3ViT mixture-of-experts models into FPGA accelerators."
    )
    parser.add_argument("--quiet", action="store_true", help="print only results and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, configure, handler in _COMMANDS:
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        configure(sub_parser)
        sub_parser.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.handler(args)
    except M3CError as error:
        print(f"m3c {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"m3c {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)
