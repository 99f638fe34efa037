"""The synthesis path of the generated sources (the `#ifdef __SYNTHESIS__` branches: exact-width
ap_int types, the tables at their width, the column chains and their contexts) type-checks in g++.

The C-simulation compiles the other branch, and Vitis is not here, so without this a type error
in the synthesis branch would first show in the user's csynth. The open-source ap_types refuse
__SYNTHESIS__, so they are parsed first without it and the kernel then with it (Vitis uses its
own ap_types; their interface is the same), and hls_math.h, which is Vitis's, by the std
functions it mirrors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from m3c.project.csim import ap_types_dir

PROBE = '#include <ap_fixed.h>\n#include <ap_int.h>\n#define __SYNTHESIS__\n#include "kernel.cpp"\n'
HLS_MATH = ("#pragma once\n#include <cmath>\nnamespace hls {\n"
            "using std::erf;\nusing std::exp;\nusing std::sqrt;\nusing std::tanh;\n}\n")


def _synthesis_errors(project: Path, tmp_path: Path) -> str:
    probe = tmp_path / "synthesis_probe.cpp"
    probe.write_text(PROBE)
    (tmp_path / "hls_math.h").write_text(HLS_MATH)
    result = subprocess.run(
        ["g++", "-std=c++14", "-fsyntax-only", f"-I{tmp_path}", f"-I{project / 'hls/csim'}",
         f"-I{ap_types_dir()}", f"-I{project / 'hls/src'}", str(probe)],
        capture_output=True, text=True, check=False)
    return result.stderr if result.returncode else ""


@pytest.mark.parametrize("precision", ["fixed", "int8", "float"])
def test_the_synthesis_branch_type_checks(compiled, tmp_path, precision):
    _, project = compiled("micro-nyud", precision=precision)
    assert "__SYNTHESIS__" in (project / "hls/src/m3c_ops.h").read_text()
    assert _synthesis_errors(project, tmp_path) == ""


def test_a_type_error_in_the_synthesis_branch_is_seen(compiled, tmp_path):
    _, project = compiled("micro-nyud", precision="fixed")
    broken = tmp_path / "broken"
    src = broken / "hls/src"
    src.mkdir(parents=True)
    (broken / "hls/csim").symlink_to(project / "hls/csim")
    for path in (project / "hls/src").iterdir():
        text = path.read_text()
        if path.name == "m3c_ops.h":  # the tables are ap_uint<18> in synthesis, not int
            assert "seed(const table_t* table" in text
            text = text.replace("inline long long seed(const table_t* table",
                                "inline long long seed(const int* table")
        (src / path.name).write_text(text)
    assert "cannot convert" in _synthesis_errors(broken, tmp_path)
