"""The static HLS checker (m3c/check/hls): instance counts and per-loop II from the generated
C++, on hand-written kernels, on a generated project with defects injected, and its CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from m3c.check.hls import check_project
from m3c.cli import main
from m3c.errors import ProjectError

TYPES = """#pragma once
#ifdef __SYNTHESIS__
#define M3C_STRINGIFY(...) #__VA_ARGS__
#define M3C_HLS(...) _Pragma(M3C_STRINGIFY(HLS __VA_ARGS__))
#define M3C_LOOP(name) name:
#else
#define M3C_HLS(...)
#define M3C_LOOP(name)
#endif
constexpr int N = 16;
static const int TABLE[256] = {1, 2, 3};
"""

CLEAN_BODY = """
inline int twice(int x) { return 2 * x; }

inline void unit(const int* in, int rows, int data[64]) {
M3C_HLS(inline off)
    int acc[N];
M3C_HLS(array_partition variable=acc type=complete dim=0)
    int n = 0, c = 0;
M3C_LOOP(clean)
    for (int step = 0; step < rows; ++step) {
M3C_HLS(pipeline II=1)
M3C_HLS(dependence variable=data type=inter false)
        for (int j = 0; j < N; ++j) acc[j] += in[step] * j;
        data[c * 4 + n] = data[c * 4 + n] + twice(TABLE[n]);
        c = c + 1 == 4 ? 0 : c + 1;
        n = c == 0 ? n + 1 : n;
    }
}
"""


def _kernel(tmp_path: Path, body: str, calls: str = "unit(in, rows, data);",
            top_pragmas: str = "") -> Path:
    src = tmp_path / "proj" / "hls" / "src"
    src.mkdir(parents=True)
    (src / "m3c_types.h").write_text(TYPES)
    (src / "kernel.cpp").write_text(
        '#include "m3c_types.h"\n' + body + "\nvoid m3c_kernel(const int* in, int rows) {\n"
        "M3C_HLS(allocation function instances=unit limit=1)\n"
        "    static int data[64];\n" + top_pragmas + calls + "\n}\n")
    return tmp_path / "proj"


def _kinds(report) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for issue in report.issues:
        found.setdefault((issue.loop, issue.subject), set()).add(issue.kind)
    return found


def test_a_clean_pipelined_loop_has_no_finding(tmp_path):
    report = check_project(_kernel(tmp_path, CLEAN_BODY))
    assert report.findings == ()
    assert [(loop.loop, loop.target_ii, loop.bound_ii) for loop in report.loops] == \
        [("clean", 1, 1)]
    assert {i.function: i.count for i in report.instances} == {"unit": 1, "m3c_kernel": 1}


PARTITIONED = "M3C_HLS(array_partition variable=data type=cyclic factor=4 dim=1)\n"


@pytest.mark.parametrize("before, after, kind, subject, forced", [
    # a divider on the path of a loop-carried counter
    ("c = c + 1 == 4 ? 0 : c + 1;", "c = (c + 1) % rows;", "divider", "(c + 1) % rows", 32),
    # the read-modify-write loses its dependence pragma
    ("M3C_HLS(dependence variable=data type=inter false)", "", "recurrence", "data", 2),
    # a table read more often than its two ports allow
    ("twice(TABLE[n])", "twice(TABLE[n]) + TABLE[n + 1] + TABLE[n + 2]", "table", "TABLE", 2),
    # a write into a bank chosen at run time (data partitioned in the top function)
    ("data[c * 4 + n] = data[c * 4 + n]", "data[c * 4 + n] = data[c * 4]",
     "runtime-bank-write", "data", 1),
    # four accesses on the two ports of a RAM
    ("for (int j = 0; j < N; ++j) acc[j]", "for (int j = 0; j < 3; ++j) data[j] = j;\n"
     "        for (int j = 0; j < N; ++j) acc[j]", "ports", "data", 3),
    # 64-bit arithmetic in the datapath
    ("in[step] * j", "(long long)in[step] * step", "wide-multiply", "1 64-bit multiplies", 1),
])
def test_each_defect_class_is_reported_naming_the_loop(tmp_path, before, after, kind, subject,
                                                       forced):
    assert before in CLEAN_BODY
    report = check_project(_kernel(tmp_path, CLEAN_BODY.replace(before, after),
                                   top_pragmas=PARTITIONED if kind == "runtime-bank-write"
                                   else ""))
    issue = next(i for i in report.issues if i.kind == kind)
    assert (issue.loop, forced) == ("clean", issue.forced_ii)
    assert subject in issue.subject
    assert any(f.where == "unit: loop clean" and kind in f.message for f in report.findings)


def test_a_shared_unit_called_from_two_functions_has_two_instances(tmp_path):
    body = CLEAN_BODY + """
inline void first(const int* in, int rows, int data[64]) {
M3C_HLS(inline off)
    unit(in, rows, data);
}
inline void second(const int* in, int rows, int data[64]) {
M3C_HLS(inline off)
    unit(in, rows, data);
    unit(in, rows, data);
}
"""
    report = check_project(_kernel(tmp_path, body, "first(in, rows, data); "
                                                   "second(in, rows, data);"))
    counts = {i.function: i.count for i in report.instances}
    assert counts["unit"] == 2  # one per calling function, however often each calls it
    assert any(f.where == "unit" and "2 instances" in f.message for f in report.findings)


def test_an_inner_loop_of_unknown_trip_count_is_unknown_not_clean(tmp_path):
    body = CLEAN_BODY.replace("j < N", "j < rows")
    report = check_project(_kernel(tmp_path, body))
    loop = report.loops[0]
    assert loop.bound_ii is None
    assert any(i.kind == "unknown" and i.loop == "clean" for i in report.issues)


def test_no_project_and_unparsable_sources_are_project_errors(tmp_path):
    with pytest.raises(ProjectError, match="kernel.cpp: missing"):
        check_project(tmp_path)
    project = _kernel(tmp_path, CLEAN_BODY.replace("int n = 0, c = 0;", "int n = 0, c = ;"))
    with pytest.raises(ProjectError, match="kernel.cpp:.*does not parse"):
        check_project(project)


# -- a generated project ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def generated(compiled) -> Path:
    return compiled("micro-nyud", precision="fixed")[1]


def _edited(generated: Path, tmp_path: Path, before: str, after: str,
            source: str = "m3c_ops.h") -> Path:
    project = tmp_path / "build"
    shutil.copytree(generated / "hls", project / "hls")
    path = project / "hls" / "src" / source
    text = path.read_text()
    assert before in text
    path.write_text(text.replace(before, after, 1))
    return project


def test_the_generated_project_against_the_reviewed_defects(generated):
    report = check_project(generated)
    # The layer functions are inlined into the top function's program loop and the step
    # loops of every mode call one pipelined row: every shared function (the MAC array
    # first) has one instance.
    assert all(instance.count == 1 for instance in report.instances), report.instances
    assert {"m3c::matmul", "m3c::mac_array", "m3c::mac_row", "m3c::stream_panels"} <= {
        instance.function for instance in report.instances if instance.shared}
    # One pipelined loop per mode (no loop schedules another mode's accesses of act and
    # resid), shift-register panels, counters, narrow Newton steps, exact division by
    # multiplication: no finding at all, every loop at II 1.
    assert not report.findings, [f.message for f in report.findings]
    loops = {loop.loop for loop in report.loops}
    assert {"steps_to_act", "steps_to_residual", "steps_to_scores", "steps_to_mix"} <= loops
    assert all(loop.bound_ii == loop.target_ii == 1 for loop in report.loops)


@pytest.mark.parametrize("before, after, loop, kind, subject", [
    # a runtime divisor in the projection of a pipelined loop
    ("        features[step] = word;", "        features[step / tokens] = word;",
     "feature_words", "divider", "step / tokens"),
    # the dependence pragma of the array's accumulators made to name another variable
    ("M3C_HLS(dependence variable=sums type=inter", "M3C_HLS(dependence variable=other type=inter",
     "steps_to_act", "recurrence", "sums"),
    # another mode's accesses in a step loop: act read twice more per iteration
    ("            for (int j = 0; j < TM; ++j) old[j] = sums[row.r][j];",
     "            for (int j = 0; j < TM; ++j) old[j] = sums[row.r][j];\n"
     "            act[0][r] = act[0][r + 1] | act[0][r + 2];", "steps_to_act", "ports", "act"),
    # a 64-bit multiply in a pipelined loop
    ("        features[step] = word;",
     "        features[step] = word;\n        ln_mean[0] = data_t((long long)step * "
     "(long long)dim);", "feature_words", "wide-multiply", "64-bit"),
    # a table read twice more per iteration
    ("            const lane_t value = normalised ? normed[l] : stream[l];",
     "            const lane_t value = (normalised ? normed[l] : stream[l]) + lane_t("
     "EXP2_TABLE[0][col] + EXP2_TABLE[0][col + 1] + EXP2_TABLE[0][col + 2]);",
     "feature_words", "table", "EXP2_TABLE"),
    # a write at a bank chosen at run time
    ("        features[step] = word;",
     "        features[step] = word;\n        ln_mean[n] = data_t(0);\n"
     "        gamma[n] = weight_t(0);", "feature_words", "runtime-bank-write", "gamma"),
])
def test_injected_defects_are_reported_naming_the_loop(generated, tmp_path, before, after, loop,
                                                        kind, subject):
    clean = _kinds(check_project(generated))
    report = check_project(_edited(generated, tmp_path, before, after))
    hits = [i for i in report.issues if i.kind == kind and i.loop == loop and
            subject in i.subject]
    assert hits, _kinds(report)
    assert not any(kind in kinds and subject in name for (where, name), kinds in clean.items()
                   if where == loop)


def test_a_second_call_site_of_a_shared_unit_adds_an_instance(generated, tmp_path):
    before = check_project(generated)
    project = _edited(generated, tmp_path, "    const int row_words = (dim + PORT_LANES - 1) / "
                      "PORT_LANES;\n    int n = 0, w = 0;\nM3C_LOOP(feature_words)",
                      "    load_vector(features, 0, dim, trace, gamma);\n"
                      "    const int row_words = (dim + PORT_LANES - 1) / PORT_LANES;\n"
                      "    int n = 0, w = 0;\nM3C_LOOP(feature_words)")
    after = check_project(project)
    old = {i.function: i.count for i in before.instances}["m3c::load_vector"]
    new = next(i for i in after.instances if i.function == "m3c::load_vector")
    assert new.count == old + 1 and "m3c::store_features" in new.callers


# -- the command line ------------------------------------------------------------------------

def test_cli_exit_codes(tmp_path, generated, capsys):
    clean = _kernel(tmp_path / "clean", CLEAN_BODY)
    assert main(["check", str(clean)]) == 0
    assert "no findings" in capsys.readouterr().out
    assert main(["check", str(generated)]) == 0  # a generated project: no finding
    assert "II 1 (m3c check)" in capsys.readouterr().out
    defective = _edited(generated, tmp_path, "        features[step] = word;",
                        "        features[step / tokens] = word;")
    assert main(["check", str(defective), "--json"]) == 1
    assert "divider: `step / tokens`" in capsys.readouterr().out
    assert main(["check", str(tmp_path)]) == 2
    assert "kernel.cpp" in capsys.readouterr().err
