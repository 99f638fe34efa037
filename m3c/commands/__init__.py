"""CLI sub-commands; each module registers its commands with `m3c.cli.command`."""

from m3c.commands import compile_cmd, export_cmd, lower_cmd, report_cmd, run_cmd  # noqa: F401
