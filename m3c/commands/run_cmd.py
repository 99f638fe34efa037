"""`m3c run`: run a compiled project on an image (C-simulation, numpy reference or board)."""

from __future__ import annotations

import argparse

from m3c.commands.registry import command


def _configure(parser: argparse.ArgumentParser) -> None:
    from m3c.runtime.app import add_arguments

    parser.add_argument("project", help="project directory made by `m3c compile`")
    add_arguments(parser, backend="csim")


@command("run", "run a compiled project on an image and write per-task maps", _configure)
def run_project(args: argparse.Namespace) -> int:
    from m3c.frontend.validate import load_project
    from m3c.runtime.app import execute

    load_project(args.project)  # the runtime trusts the project's JSON; check it here

    return execute(args.project, args, quiet=args.quiet)
