"""Code generation: the C-simulated kernel (g++, ap_types headers) against onnxruntime."""

from __future__ import annotations

import filecmp
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from m3c.errors import CodegenError
from m3c.ir.sessions import ort_session
from m3c.project import csim
from m3c.project.compile import compile_model


def _oracle(model_path: Path, project: Path):
    """onnxruntime on the original model, also returning the encoder output tensor."""
    proto = onnx.load(str(model_path))
    boundary = json.loads((project / "project.json").read_text())["features_tensor"]
    proto.graph.output.append(onnx.helper.make_tensor_value_info(boundary, 1, None))
    return ort_session(proto), boundary


def _check_against_onnxruntime(model_path: Path, project: Path, images: int) -> float:
    manifest = json.loads((project / "project.json").read_text())
    session, boundary = _oracle(model_path, project)
    names = [o.name for o in session.get_outputs()]
    kernel = csim.load(project)
    rng = np.random.default_rng(7)
    worst = 0.0
    for index, task in enumerate(manifest["tasks"]):
        head = ort_session(onnx.load(str(project / "host" / "heads" / f"{task}.onnx")))
        for scale in range(1, images + 1):
            image = (rng.standard_normal(manifest["image_shape"]) * scale).astype(np.float32)
            feeds = {"image": image}
            if len(manifest["tasks"]) > 1:
                feeds["task"] = np.array(index, dtype=np.int64)
            want = dict(zip(names, session.run(None, feeds), strict=True))
            features = kernel.run(image, index).reshape(manifest["features_shape"])
            output = head.run(None, {head.get_inputs()[0].name: features})[0]
            worst = max(worst, float(np.abs(features - want[boundary]).max()),
                        float(np.abs(output - want[task]).max()))
    return worst


@pytest.mark.parametrize("preset, gate", [("micro-nyud", "multi"), ("micro-nyud", "task"),
                                          ("micro-pascal", "task"), ("tiny-cityscapes", "multi"),
                                          ("tiny-cityscapes", "task")])
def test_float_csim_matches_onnxruntime_for_every_task(compiled, preset, gate):
    model_path, project = compiled(preset, gate)
    assert _check_against_onnxruntime(model_path, project, images=2) <= 1e-4


@pytest.mark.parametrize("overrides", [
    {"num_experts": 1, "top_k": 1},
    {"num_experts": 4, "top_k": 4},
    {"num_experts": 6, "top_k": 1},
    {"tasks": {"semseg": 40}, "task_embed_dim": 0},
])
def test_odd_shapes(compiled, overrides):
    model_path, project = compiled("micro-nyud", "multi", **overrides)
    assert _check_against_onnxruntime(model_path, project, images=1) <= 1e-4


def test_generated_cpp_is_warning_free(compiled, tmp_path):
    _, project = compiled("micro-pascal", "task")
    for sources, shared in ((csim.KERNEL_SOURCES, True),
                            (["hls/src/kernel.cpp", "hls/tb/testbench.cpp"], False)):
        command = csim.compile_command(project, sources, tmp_path / "out", shared)
        result = subprocess.run([*command, "-Werror"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_activations_stay_on_chip_in_memories_that_do_not_grow_with_depth(compiled):
    """The kernel's only DDR buffers are weights, image and features; the residual stream and
    the working tensors sit in memories sized by one block, however many blocks there are."""
    sizes = []
    for depth in (4, 8):
        _, project = compiled("micro-nyud", depth=depth)
        header = (project / "hls/src/kernel.h").read_text()
        assert "void m3c_kernel(const word_t* weights, const word_t* image, word_t* features," \
               " int task);" in header
        ops = (project / "hls/src/m3c_ops.h").read_text()
        constants = dict(re.findall(r"constexpr int (\w+) = (\d+);", ops))
        manifest = json.loads((project / "project.json").read_text())
        tokens, dim = manifest["features_shape"][-2:]
        assert int(constants["RESID_DEPTH"]) == tokens * -(-dim // int(constants["TK"]))
        sizes.append((constants["TK"], constants["RESID_DEPTH"], constants["ACT_DEPTH"]))
    assert sizes[0] == sizes[1]


def test_csim_takes_hls_stream_from_our_own_header(compiled, tmp_path):
    _, project = compiled("micro-pascal", "task")
    command = csim.compile_command(project, ["hls/src/kernel.cpp"], tmp_path / "out", False)
    result = subprocess.run([*command[:-2], "-M"], capture_output=True, text=True, check=True)
    headers = result.stdout.replace("\\\n", " ").split()
    streams = [Path(h).resolve() for h in headers if h.endswith("hls_stream.h")]
    assert streams == [(project / "hls/csim/hls_stream.h").resolve()]


STREAM_PROGRAM = """
#include <cstdio>
#include "m3c_dataflow.h"
// A consumer that waits for the producer's "done" before it reads any value: the FIFO must hold
// all of them, or both processes wait for ever (in RTL as here).
int main() {
    hls::stream<int, FIFO_DEPTH> values("values");
    hls::stream<int, 1> done("done");
    int total = 0;
    try {
        M3C_DATAFLOW_BEGIN
        M3C_PROCESS(for (int i = 0; i < 8; ++i) values.write(i); done.write(1))
        M3C_PROCESS(total -= done.read(); for (int i = 0; i < 8; ++i) total += values.read())
        M3C_DATAFLOW_END
    } catch (const m3c::csim::Deadlock& deadlock) {
        std::printf("%s\\n", deadlock.what());
        return 3;
    }
    int left = 0;
    std::printf("%d %d\\n", total, int(values.read_nb(left)));
    std::fflush(stdout);
    values.read();  // outside a region an empty FIFO can never fill: a deadlock too
    return 0;
}
"""


def _stream_program(project: Path, tmp_path: Path, depth: int) -> subprocess.CompletedProcess:
    (tmp_path / "stream.cpp").write_text(STREAM_PROGRAM)
    binary = tmp_path / f"stream{depth}"
    subprocess.run(["g++", "-std=c++14", "-pthread", "-Wall", "-Wextra", "-Werror",
                    f"-DFIFO_DEPTH={depth}", f"-I{project / 'hls/csim'}",
                    f"-I{project / 'hls/src'}", str(tmp_path / "stream.cpp"), "-o", str(binary)],
                   check=True)
    return subprocess.run([binary], capture_output=True, text=True, timeout=60)


def test_own_hls_stream_bounds_fifos_and_reports_deadlocks(compiled, tmp_path):
    _, project = compiled("micro-pascal", "task")
    deep = _stream_program(project, tmp_path, 8)
    assert deep.returncode != 0 and deep.stdout.startswith("27 0\n")  # 0+..+7 - 1, then empty
    assert "terminate called after throwing an instance of 'm3c::csim::Deadlock'" in deep.stderr
    shallow = _stream_program(project, tmp_path, 4)
    assert shallow.returncode == 3
    assert "dataflow deadlock" in shallow.stdout
    assert "'values' full at depth 4" in shallow.stdout and "'done' empty" in shallow.stdout


def test_project_makefile_runs_the_testbench(compiled):
    _, project = compiled("micro-nyud", "task")
    result = subprocess.run(["make", "-s", "csim", f"PYTHON={sys.executable}"], cwd=project,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASS") == 2


def test_project_layout_and_interfaces(compiled):
    _, project = compiled("micro-pascal", "task")
    for name in ["README.md", "Makefile", "hls/hls_config.cfg", "hls/run_hls.tcl",
                 "vivado/block_design.tcl", "weights/weights.json", "host/heads/edge.onnx",
                 "intermediate/12_lower_expert_major.onnx"]:
        assert (project / name).is_file(), name
    kernel = (project / "hls/src/kernel.cpp").read_text()
    bundles = {line.split("bundle=")[1].split()[0] for line in kernel.splitlines()
               if "interface mode=m_axi" in line}
    assert bundles == {"gmem_w", "gmem_in", "gmem_out"}
    assert "interface mode=s_axilite port=task" in kernel
    # The layers as a program: one call site per layer function, a row per layer call.
    assert kernel.count("m3c::moe_layer(") == 1 and kernel.count("m3c::attention_layer(") == 1
    cases = re.findall(r"case (\d+):\n\s+m3c::(\w+)\(", kernel)
    rows = [int(row.split(",")[0]) for row in re.findall(r"^\s+\{ (\d+, .*) \},$", kernel,
                                                          re.MULTILINE)]
    layer_calls = {name: rows.count(int(case)) for case, name in cases}
    assert layer_calls["moe_layer"] == 2 and layer_calls["attention_layer"] == 4
    config = (project / "hls/hls_config.cfg").read_text()
    assert "part=xczu7ev-ffvc1156-2-e" in config and "syn.top=m3c_kernel" in config
    layout = json.loads((project / "weights/weights.json").read_text())
    router = [t for name, t in layout["tensors"].items() if name.endswith("router_b")]
    assert router and all(t["shape"][0] == 5 for t in router)  # one row per task


# Vitis HLS 2023.2 pragma options (UG1399), for the pragmas the op library uses.
PRAGMA_OPTIONS = {
    "interface": {"mode", "port", "bundle", "offset", "depth", "max_read_burst_length",
                  "max_write_burst_length", "num_read_outstanding", "num_write_outstanding",
                  "latency"},
    "dependence": {"variable", "type", "direction", "distance", "true", "false"},
    "bind_op": {"variable", "op", "impl"},
    "allocation": {"function", "instances", "limit"},
    "pipeline": {"II", "off", "style"}, "loop_tripcount": {"max"}, "dataflow": set(),
    "array_partition": {"variable", "type", "factor", "dim"},
    "array_reshape": {"variable", "type", "factor", "dim"},
    "stream": {"variable", "depth"}, "inline": {"off"},
    "bind_storage": {"variable", "type", "impl"},
}
PRAGMA_CHOICES = {"mode": {"m_axi", "s_axilite"}, "offset": {"slave"},
                  "type": {"complete", "cyclic", "block", "ram_2p", "ram_t2p", "fifo", "inter"},
                  "impl": {"bram", "uram", "lutram", "fabric", "dsp"}, "op": {"mul"},
                  "direction": {"RAW"},
                  "style": {"frp"}}


def test_every_hls_directive_is_vitis_2023_syntax(compiled):
    _, project = compiled("micro-pascal", "task")
    sources = "".join((project / "hls/src" / name).read_text()
                      for name in ("kernel.cpp", "m3c_ops.h"))
    # a directive may end in a comment (a multiplier's `// multipliers: <group>`)
    directives = re.findall(r"^M3C_HLS\((.*?)\)(?:\s*//.*)?$", sources, re.MULTILINE)
    assert sum(d.startswith("bind_op") for d in directives) == sources.count("bind_op")
    assert len(directives) > 40
    for directive in directives:
        name, *options = directive.split()
        assert name in PRAGMA_OPTIONS, directive
        for option in options:
            key, _, value = option.partition("=")
            assert key in PRAGMA_OPTIONS[name], directive
            if key in PRAGMA_CHOICES:
                assert value in PRAGMA_CHOICES[key], directive
            if key in ("factor", "dim", "depth", "II", "limit", "latency", "distance"):
                assert value.isdigit() and (int(value) > 0 or key == "dim"), directive


def test_same_input_gives_byte_identical_projects(export_model, tmp_path):
    _, path = export_model("micro-nyud", "task")
    first = compile_model(path, out=tmp_path / "a")
    second = compile_model(path, out=tmp_path / "b")
    compared = filecmp.dircmp(first, second)
    stack = [compared]
    while stack:
        current = stack.pop()
        assert not current.diff_files and not current.left_only and not current.right_only
        _, mismatch, errors = filecmp.cmpfiles(current.left, current.right, current.common_files,
                                               shallow=False)
        assert not mismatch and not errors
        stack.extend(current.subdirs.values())


def test_existing_output_needs_force_and_failures_leave_nothing(export_model, tmp_path):
    _, path = export_model("micro-nyud", "multi")
    out = tmp_path / "build"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(CodegenError, match="--force"):
        compile_model(path, out=out)
    assert (out / "keep.txt").exists()
    compile_model(path, out=out, force=True)
    assert not (out / "keep.txt").exists() and (out / "project.json").exists()
    with pytest.raises(CodegenError):
        compile_model(path, out=tmp_path / "other", precision="posit")
    with pytest.raises(CodegenError, match="zcu104"):
        compile_model(path, out=tmp_path / "other", target="vcu9000")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]


def test_csim_library_is_cached(compiled):
    _, project = compiled("micro-nyud", "multi")
    first = csim.build(project)
    stamp = first.stat().st_mtime_ns
    assert csim.build(project) == first and first.stat().st_mtime_ns == stamp


def test_cli_compile_and_verify(export_model, tmp_path):
    _, path = export_model("micro-nyud", "task")
    run = [sys.executable, "-m", "m3c"]
    out = tmp_path / "build"
    compiled = subprocess.run([*run, "compile", str(path), "--target", "zcu104", "-o", str(out)],
                              capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    verified = subprocess.run([*run, "verify", str(out)], capture_output=True, text=True)
    assert verified.returncode == 0 and "PASS" in verified.stdout
    refused = subprocess.run([*run, "compile", str(path), "-o", str(out)], capture_output=True,
                             text=True)
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_make_package_needs_the_bitstream_and_is_named_as_the_host_readme_says(compiled,
                                                                                tmp_path):
    """No partial tarball without a bitstream; with one, the tarball the host README tells
    the user to copy (issue 26, item 10)."""
    import re
    import shutil
    import subprocess

    project = tmp_path / "project"
    shutil.copytree(compiled("micro-nyud", "multi")[1], project)
    refused = subprocess.run(["make", "-C", str(project), "package"], capture_output=True,
                             text=True)
    assert refused.returncode != 0 and "make bitstream" in refused.stderr
    assert not list(project.glob("*.tar.gz*"))
    (project / "overlay").mkdir()
    for name in ("m3c.bit", "m3c.hwh"):  # stand-ins for Vivado's outputs
        (project / "overlay" / name).write_bytes(b"\0")
    made = subprocess.run(["make", "-C", str(project), "package"], capture_output=True,
                          text=True)
    assert made.returncode == 0, made.stderr
    named = re.search(r"Copy `(m3c_[\w.-]+\.tar\.gz)`", (project / "host/README.md").read_text())
    assert named and [p.name for p in project.glob("*.tar.gz*")] == [named.group(1)]
