"""The Jinja environment every generated file is rendered in (templates/ as `m3c.templates`)."""

from __future__ import annotations

from pathlib import Path

import jinja2


def template_environment() -> jinja2.Environment:
    """Strict (an undefined name fails), whitespace-trimmed, trailing newlines kept."""
    from m3c import templates

    root = Path(templates.__file__).parent
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(root)), trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True,
                              undefined=jinja2.StrictUndefined)
