"""CLI sub-commands; each module registers its commands with `m3c.cli.command`."""

from m3c.commands import (  # noqa: F401
    compile_cmd,
    evaluate_cmd,
    export_cmd,
    lower_cmd,
    report_cmd,
    run_cmd,
)
