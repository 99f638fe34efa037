"""The generated kernel as Vitis sees it: kernel.cpp run through the C preprocessor with
__SYNTHESIS__ defined, then parsed by tree-sitter-cpp.

Preprocessing settles every `#if` the way synthesis does and expands `M3C_HLS(...)` into the
`#pragma HLS ...` lines and `M3C_LOOP(name)` into the `name:` labels Vitis reads. The system
headers (ap_types, hls_stream, the standard library) are replaced by empty files: a syntax
tree needs no declarations, and the ap_types headers alone would be tens of thousands of lines.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tree_sitter_cpp
from tree_sitter import Language, Node, Parser

from m3c.errors import ProjectError

KERNEL = Path("hls/src/kernel.cpp")
RECOMPILE = "regenerate it with `m3c compile` (the checker reads m3c's generated sources)"

CPP = Language(tree_sitter_cpp.language())


def parse_cpp(text: bytes) -> Node:
    """The syntax tree of C++ source text."""
    return Parser(CPP).parse(text).root_node


@dataclass(frozen=True)
class TranslationUnit:
    """kernel.cpp after preprocessing: its syntax tree and, per line, where it came from."""

    root: Node
    origins: tuple[tuple[str, int], ...]  # (source file name, 1-based line) per output line

    def locate(self, node: Node) -> str:
        """`file:line` of a node in the generated sources."""
        name, line = self.origins[node.start_point[0]]
        return f"{name}:{line}"


def load_translation_unit(project: Path) -> TranslationUnit:
    """Preprocess and parse the project's kernel.cpp (ProjectError naming the file when it
    is missing, does not preprocess or does not parse)."""
    kernel = project / KERNEL
    if not project.is_dir():
        raise ProjectError(f"{project}: no such project directory",
                           remedy="pass the directory `m3c compile -o` wrote")
    if not kernel.is_file():
        raise ProjectError(f"{kernel}: missing, so {project} is no generated HLS project",
                           remedy=f"pass the directory `m3c compile -o` wrote, or {RECOMPILE}")
    text = _preprocess(kernel)
    origins, clean = _strip_line_markers(text, kernel.parent)
    root = parse_cpp(clean)
    unit = TranslationUnit(root, origins)
    broken = _first_error(root)
    if broken is not None:
        raise ProjectError(f"{project / 'hls/src' / unit.locate(broken)}: the generated C++ does "
                           "not parse", remedy=RECOMPILE)
    return unit


def _preprocess(kernel: Path) -> str:
    compiler = shutil.which("g++") or shutil.which("cpp")
    if compiler is None:
        raise ProjectError(f"{kernel}: no C preprocessor to read it with",
                           remedy="install g++ (the C-simulation needs it too)")
    with tempfile.TemporaryDirectory(prefix="m3c-check-") as stubs:
        for header in _system_headers(kernel.parent):
            stub = Path(stubs) / header
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.touch()
        command = [compiler, "-E", "-x", "c++", "-D__SYNTHESIS__", "-nostdinc",
                   "-I", stubs, kernel.name]
        try:
            done = subprocess.run(command, cwd=kernel.parent, capture_output=True, text=True,
                                  timeout=120)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise ProjectError(f"{kernel}: the C preprocessor failed ({error})",
                               remedy="check that g++ runs") from error
    if done.returncode != 0:
        first = next((line for line in done.stderr.splitlines() if "error" in line),
                     done.stderr.strip()[:200])
        raise ProjectError(f"{kernel}: does not preprocess: {first}", remedy=RECOMPILE)
    return done.stdout


def _system_headers(folder: Path) -> set[str]:
    """Every `#include <...>` name of the project's sources, in any `#if` branch."""
    names: set[str] = set()
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".h", ".hpp", ".cpp") or not path.is_file():
            continue
        stack = [parse_cpp(path.read_bytes())]
        while stack:
            node = stack.pop()
            if node.type == "system_lib_string":
                names.add(node.text.decode()[1:-1])
            stack.extend(node.children)
    return names


def _strip_line_markers(text: str, folder: Path) -> tuple[tuple[tuple[str, int], ...], bytes]:
    """GCC's `# line "file" flags` markers blanked out (the parser knows no such lines), and
    the origin of every remaining line read from them."""
    origins: list[tuple[str, int]] = []
    lines: list[str] = []
    name, number = "kernel.cpp", 1
    for line in text.split("\n"):
        marker = line.split(" ", 2) if line.startswith("# ") else []
        if len(marker) >= 3 and marker[1].isdigit():
            name, number = _relative(marker[2].split('"')[1], folder), int(marker[1])
            origins.append((name, number))
            lines.append("")
            continue
        origins.append((name, number))
        lines.append(line)
        number += 1
    return tuple(origins), "\n".join(lines).encode()


def _relative(name: str, folder: Path) -> str:
    path = Path(name)
    if path.is_absolute() and path.parent == folder.resolve():
        return path.name
    return name


def _first_error(node: Node) -> Node | None:
    if not node.has_error:
        return None
    if node.type == "ERROR" or node.is_missing:
        return node
    for child in node.children:
        found = _first_error(child)
        if found is not None:
            return found
    return node
