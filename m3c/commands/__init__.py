"""CLI sub-commands, one module each; importing this package registers them all."""

from m3c.commands import (  # noqa: F401
    check_cmd,
    compile_cmd,
    evaluate_cmd,
    export_cmd,
    lower_cmd,
    report_cmd,
    run_cmd,
)
from m3c.commands.registry import COMMANDS

__all__ = ["COMMANDS"]
