"""Fixed point: the C-simulated kernel equals the numpy emulation bit for bit; fixed vs float
accuracy on the synthetic-trained model; calibration and per-class / per-layer overrides."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from accuracy import head_losses

from m3c.check.hygiene import hygiene_findings
from m3c.errors import CodegenError
from m3c.project import csim
from m3c.project.compile import compile_model
from m3c.project.trace import trace_project
from m3c.runtime.emulator import KernelEmulator
from m3c.runtime.fixed import FixedType


def _assert_bit_exact(project: Path, scales=(1.0, 4.0, 60.0)) -> None:
    manifest = json.loads((project / "project.json").read_text())
    kernel, emulator = csim.load(project), KernelEmulator.from_project(project)
    rng = np.random.default_rng(11)
    for task in range(len(manifest["tasks"])):
        for scale in scales:  # 60x drives activations into saturation
            image = (rng.standard_normal(manifest["image_shape"]) * scale).astype(np.float32)
            hardware, emulated = kernel.run(image, task), emulator.run(image, task)
            mismatches = int((hardware != emulated).sum())
            assert mismatches == 0, f"task {task} scale {scale}: {mismatches} values differ"


@pytest.mark.parametrize("preset, gate", [("micro-nyud", "multi"), ("micro-nyud", "task"),
                                          ("micro-pascal", "task"),
                                          ("tiny-cityscapes", "multi")])
def test_fixed_csim_equals_emulation(compiled, preset, gate):
    _assert_bit_exact(compiled(preset, gate, precision="fixed")[1])


@pytest.mark.parametrize("preset, gate", [("micro-nyud", "multi"), ("micro-pascal", "task"),
                                          ("tiny-cityscapes", "multi")])
def test_int8_csim_equals_emulation(compiled, preset, gate):
    """The packed array (two 8-bit products per DSP) and its 16-bit two-pass products."""
    project = compiled(preset, gate, precision="int8")[1]
    kernel = json.loads((project / "kernel.json").read_text())
    assert kernel["capacities"]["packed"] == 1
    assert any("mac8" in call for call in kernel["calls"])
    # every attention is 8-bit: the DSPs' B ports take every operand
    assert "#define M3C_WIDE_OPERANDS 0" in (project / "hls/src/m3c_ops.h").read_text()
    _assert_bit_exact(project)


def test_a_16bit_mix_on_the_packed_array_puts_its_operands_on_a(export_model, tmp_path):
    """8-bit projections beside a 16-bit attention: the packed array's 16-bit mix multiplies
    numerators wider than the DSPs' 18-bit B port, so 16-bit products put their operand on A
    (M3C_WIDE_OPERANDS), bit-exact; with the define cleared the C-simulation refuses to run
    (the ports' assumption is checked, and the check can fail)."""
    import shutil

    _, path = export_model("micro-nyud")
    config = tmp_path / "layers.json"
    config.write_text(json.dumps({"layers": {"*qkv*": {"bits": 8}}}))
    project = compile_model(path, out=tmp_path / "build", precision_config=config)
    kernel = json.loads((project / "kernel.json").read_text())
    assert kernel["capacities"]["wide_operands"] == 1
    assert any(c["op"] == "attention" and "mac8" not in c for c in kernel["calls"])
    header = project / "hls/src/m3c_ops.h"
    assert "#define M3C_WIDE_OPERANDS 1" in header.read_text()
    _assert_bit_exact(project, scales=(1.0, 60.0))
    narrow = tmp_path / "narrow"
    shutil.copytree(project, narrow)
    header = narrow / "hls/src/m3c_ops.h"
    header.write_text(header.read_text().replace("#define M3C_WIDE_OPERANDS 1",
                                                 "#define M3C_WIDE_OPERANDS 0"))
    result = subprocess.run(["make", "-s", "csim", f"PYTHON={sys.executable}"], cwd=narrow,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "a 16-bit mix needs M3C_WIDE_OPERANDS" in result.stderr


@pytest.mark.parametrize("overrides", [
    {"num_experts": 1, "top_k": 1},
    {"num_experts": 4, "top_k": 4},
    {"tasks": {"semseg": 40}, "task_embed_dim": 0},
])
@pytest.mark.parametrize("precision", ["fixed", "int8"])
def test_fixed_odd_shapes(compiled, overrides, precision):
    _assert_bit_exact(compiled("micro-nyud", "multi", **overrides, precision=precision)[1],
                      scales=(1.0,))


def _assert_estimate_is_the_trace(project: Path) -> None:
    """Per call, the estimate's DDR beats per bundle and array cycles against the traced
    C-simulation of the project's first test vector (within 2%; the models are exact)."""
    rows = trace_project(project)
    kernel = json.loads((project / "kernel.json").read_text())
    assert [row["layer"] for row in rows] == [call["layer"] for call in kernel["calls"]]
    assert sum(row["traced"]["array_cycles"] for row in rows) > 0
    for row in rows:
        traced, estimated = row["traced"], row["estimated"]
        assert abs(traced["array_cycles"] - estimated["array_cycles"]) <= 0.02 * max(
            traced["array_cycles"], 1), row
        for bundle, beats in traced["ddr_beats"].items():
            assert abs(beats - estimated["ddr_beats"][bundle]) <= 0.02 * max(beats, 1), row


@pytest.mark.parametrize("preset, gate, overrides", [
    ("micro-nyud", "multi", {}), ("micro-nyud", "task", {}), ("tiny-cityscapes", "multi", {}),
    ("tiny-cityscapes", "task", {}),
    ("micro-nyud", "multi", {"num_experts": 1, "top_k": 1}),
    ("micro-nyud", "multi", {"num_experts": 4, "top_k": 4}),
])
def test_estimate_equals_the_traced_csim(compiled, preset, gate, overrides):
    _assert_estimate_is_the_trace(compiled(preset, gate, **overrides, precision="fixed")[1])


@pytest.mark.parametrize("preset, gate, overrides", [
    ("micro-nyud", "multi", {}), ("tiny-cityscapes", "multi", {}),
    ("micro-nyud", "multi", {"num_experts": 1, "top_k": 1}),
])
def test_int8_estimate_equals_the_traced_csim(compiled, preset, gate, overrides):
    """One pass with half-size panels for 8-bit products, two passes for 16-bit ones."""
    _assert_estimate_is_the_trace(compiled(preset, gate, **overrides, precision="int8")[1])


def test_report_trace_writes_traced_and_estimated(compiled):
    project = compiled("micro-nyud", "multi", precision="fixed")[1]
    result = subprocess.run([sys.executable, "-m", "m3c", "report", str(project), "--trace",
                             "--no-plots"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "equal the estimate" in result.stdout
    rows = json.loads((project / "report" / "trace.json").read_text())
    assert {"layer", "traced", "estimated"} <= set(rows[0])
    assert set(rows[0]["traced"]) == {"ddr_beats", "array_cycles"}


def test_project_testbench_checks_the_emulation_exactly(compiled):
    project = compiled("micro-nyud", "task", precision="fixed")[1]
    result = subprocess.run(["make", "-s", "csim", f"PYTHON={sys.executable}"], cwd=project,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("max abs error 0.000e+00") == 2


@pytest.mark.parametrize("precision", ["fixed", "int8"])
def test_generated_fixed_cpp_is_warning_free(compiled, tmp_path, precision):
    project = compiled("micro-nyud", "multi", precision=precision)[1]
    command = csim.compile_command(project, csim.KERNEL_SOURCES, tmp_path / "out", True)
    result = subprocess.run([*command, "-Werror"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_fixed_vs_float_on_the_trained_model(tmp_path):
    """Fixed point costs < 1 % of segmentation pixels and < 2 % relative depth RMSE."""
    import m3c
    from m3c.frontend.models.data import make_dataset
    from m3c.frontend.models.train import load_or_train

    model = load_or_train("micro-nyud", gate="multi", quiet=True)
    path = m3c.export(model, tmp_path / "trained.onnx")
    calibration = make_dataset(model.config, 8, seed=99)["image"]
    project = compile_model(path, out=tmp_path / "build", calib=calibration)
    losses = head_losses(project, path, model.config)
    assert losses["semseg"] <= 0.01 and losses["depth"] <= 0.02, losses


def test_calibration_sets_the_integer_bits(export_model, tmp_path):
    _, path = export_model("micro-nyud", "multi")
    quiet = np.random.default_rng(0).standard_normal((2, 3, 48, 64)).astype(np.float32) * 0.1
    loud = quiet * 1000
    bits = []
    for name, images in (("quiet", quiet), ("loud", loud)):
        project = compile_model(path, out=tmp_path / name, calib=images)
        manifest = json.loads((project / "project.json").read_text())
        assert manifest["calibration_max_abs"] >= float(np.abs(images).max())
        data = manifest["types"]["data"]
        assert 2.0 ** (data["integer"] - 1) >= manifest["calibration_max_abs"]
        bits.append(data["integer"])
    assert bits[1] > bits[0]


def test_precision_config_overrides_a_class_and_a_layer(export_model, tmp_path):
    _, path = export_model("micro-nyud", "multi")
    probe = compile_model(path, out=tmp_path / "probe")
    plan = json.loads((probe / "kernel.json").read_text())
    expert_layer = next(c for c in plan["calls"] if c["op"] == "experts")
    config = tmp_path / "precision.yaml"
    config.write_text("types:\n  data: ap_fixed<18,8>\n"
                      f"layers:\n  '{expert_layer['layer']}':\n    weight: ap_fixed<6,1>\n")
    project = compile_model(path, out=tmp_path / "build", precision_config=config)
    manifest = json.loads((project / "project.json").read_text())
    assert manifest["types"]["data"]["cpp"] == "ap_fixed<18, 8, AP_RND_CONV, AP_SAT>"
    assert "ap_fixed<18, 8, AP_RND_CONV, AP_SAT> data_t" in (
        project / "hls/src/m3c_types.h").read_text()
    weights = np.fromfile(project / "weights" / "weights_f32.bin", np.float32)
    w1 = expert_layer["w1"]
    narrowed = weights[w1:w1 + expert_layer["dim"] * expert_layer["hidden"]]
    assert np.all(narrowed * 32 == np.round(narrowed * 32))  # on the 2^-5 grid
    assert np.abs(narrowed).max() <= 1.0
    dense = next(c for c in plan["calls"] if c["op"] == "linear")
    assert not np.all(weights[dense["w"]:dense["w"] + 64] * 32 ==
                      np.round(weights[dense["w"]:dense["w"] + 64] * 32))
    _assert_bit_exact(project, scales=(1.0,))


def test_precision_config_narrows_a_layers_results(export_model, tmp_path):
    _, path = export_model("micro-nyud", "multi")
    config = tmp_path / "precision.json"
    # blocks.1 holds the MoE layer: its router leaves no activations and is passed over.
    config.write_text(json.dumps({"layers": {
        "*/blocks.0/attn/Attention": {"result": "ap_fixed<8,2>"},
        "*moe*": {"result": "ap_fixed<10,3,AP_TRN,AP_WRAP>"}}}))
    project = compile_model(path, out=tmp_path / "build", precision_config=config)
    plan = json.loads((project / "kernel.json").read_text())
    narrowed_calls = [call for call in plan["calls"] if "narrow" in call]
    moe_layers = sum(call["op"] == "experts" for call in plan["calls"])
    assert [call["op"] for call in narrowed_calls] == ["attention"] + ["experts"] * moe_layers
    ops = (project / "hls/src/m3c_ops.h").read_text()
    assert "return data_t(ap_fixed<8, 2, AP_RND_CONV, AP_SAT>(value));" in ops  # the epilogue

    narrowed = {}
    def keep(call, what, values):
        if "narrow" in call and what in ("output", "expert_output"):
            narrowed.setdefault(call["narrow"]["cpp"], []).append(values)
    emulator = KernelEmulator.from_project(project)
    image = np.random.default_rng(5).standard_normal(emulator.plan["image_shape"]) * 20
    emulator.run(image.astype(np.float32), 0, keep)
    data = FixedType.from_json(json.loads((project / "project.json").read_text())["types"]["data"])
    attention = data.to_float(np.concatenate(narrowed["ap_fixed<8, 2, AP_RND_CONV, AP_SAT>"]))
    assert np.all(attention * 64 == np.round(attention * 64))  # on the 2^-6 grid
    assert attention.min() >= -2 and attention.max() <= 2 - 2 ** -6
    assert len(np.unique(attention)) > 8
    _assert_bit_exact(project, scales=(1.0, 20.0))


@pytest.mark.parametrize("text, message", [
    ('{"types": {"data": "ap_fixed<16>"}}', "ap_fixed<W,I>"),
    ('{"types": {"acc": "ap_fixed<40,20>"}}', "derived"),
    ('{"layers": {"no/such/layer": {"weight": "ap_fixed<8,2>"}}}', "matches no layer"),
    ('{"layers": {"*/Route": {"result": "ap_fixed<8,2>"}}}', "leave no activations"),
    ('{"layers": {"*/Attention": {"bias": "ap_fixed<8,2>"}}}', "'weight' and/or 'result'"),
    ('{"types": {"data": "ap_fixed<40,20>", "weight": "ap_fixed<32,4>"}}', "bits"),
    ("[1, 2]", "mapping"),
])
def test_bad_precision_config(export_model, tmp_path, text, message):
    _, path = export_model("micro-nyud", "multi")
    config = tmp_path / "bad.json"
    config.write_text(text)
    with pytest.raises(CodegenError, match=message):
        compile_model(path, out=tmp_path / "build", precision_config=config)
    assert not (tmp_path / "build").exists()


@pytest.mark.parametrize("calib, message", [
    ("missing.npy", "cannot read calibration images"),
    (np.zeros((2, 3, 8, 8), np.float32), "calibration images have shape"),
])
def test_bad_calibration_images(export_model, tmp_path, calib, message):
    _, path = export_model("micro-nyud", "multi")
    with pytest.raises(CodegenError, match=message):
        compile_model(path, out=tmp_path / "build", calib=calib)
    assert not (tmp_path / "build").exists()


def test_fixed_type_arithmetic_matches_ap_types(tmp_path):
    """runtime/fixed.py against the Xilinx headers on random values, every mode pair."""
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.standard_normal(200) * 40,
                             np.array([2.5, -2.5, 1.5, -1.5, 0.5]) / 1024])
    kinds = [FixedType(16, 6, True, q, o) for q in ("AP_TRN", "AP_RND_CONV")
             for o in ("AP_WRAP", "AP_SAT")] + [FixedType(18, 1, False, "AP_RND_CONV", "AP_SAT")]
    lines = ["#include <ap_fixed.h>", "#include <cstdio>", "int main() {",
             f"  const double v[] = {{{', '.join(repr(float(x)) for x in values)}}};",
             f"  for (int i = 0; i < {values.size}; ++i) {{"]
    for kind in kinds:
        lines.append(f"    {{ {kind.cpp()} x = v[i]; std::printf(\"%.17g\\n\", x.to_double()); }}")
    lines += ["  }", "  return 0;", "}"]
    source = tmp_path / "casts.cpp"
    source.write_text("\n".join(lines))
    binary = tmp_path / "casts"
    subprocess.run(["g++", "-std=c++14", "-isystem", str(csim.ap_types_dir()), str(source), "-o",
                    str(binary)], check=True, capture_output=True)
    printed = np.array(subprocess.run([str(binary)], capture_output=True, text=True,
                                      check=True).stdout.split(), dtype=np.float64)
    expected = np.stack([kind.to_float(kind.from_float(values)) for kind in kinds], axis=1)
    assert np.array_equal(printed.reshape(values.size, len(kinds)), expected)


@pytest.mark.parametrize("precision, tiles", [("fixed", (32, 8)), ("int8", (64, 8))])
def test_grouped_scores_equal_the_emulation_and_the_estimate(export_model, tmp_path, precision,
                                                             tiles):
    """micro's 16-wide heads on a 32- or 64-input array: attention scores 2 or 4 groups of 8
    keys a step (score_groups; its 13 keys reach the second group), bit for bit the emulation
    and cycle for cycle the estimate."""
    _, model = export_model("micro-nyud", "multi")
    project = compile_model(model, out=tmp_path / "build", precision=precision, tiles=tiles)
    assert hygiene_findings(project) == []
    ops = (project / "hls" / "src" / "m3c_ops.h").read_text()
    assert re.search(r"SCORE_GROUPS = (\d+);", ops).group(1) == str(tiles[0] // 16)
    _assert_bit_exact(project)
    _assert_estimate_is_the_trace(project)


@pytest.mark.parametrize("precision, tiles", [("fixed", (48, 32)), ("int8", (48, 16))])
def test_twelve_banks_equal_the_emulation_and_the_estimate(export_model, tmp_path, precision,
                                                           tiles):
    """The array of the small-nyud designs: TK 48 in 12 banks (not a power of two), so the
    windows of act and resid wrap past the last bank at every offset, the shadow panel shifts
    in 48 x 32 (or 48 x 16 packed) weights, and the column chains run over key groups of
    48 / SCORE_GROUPS stages; bit for bit the emulation and cycle for cycle the estimate."""
    _, model = export_model("micro-nyud", "multi")
    project = compile_model(model, out=tmp_path / "build", precision=precision, tiles=tiles)
    assert hygiene_findings(project) == []
    assert re.search(r"constexpr int TK = 48;", (project / "hls/src/m3c_ops.h").read_text())
    _assert_bit_exact(project)
    _assert_estimate_is_the_trace(project)
