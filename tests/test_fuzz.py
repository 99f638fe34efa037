"""Seeded mutation fuzzing of exported micro models through `m3c lower`, `verify` and `compile`.

Every case must end in exit 0 with a plausible result (verify may also print its FAIL verdict
with exit 1), or exit 2 with a short message; never a traceback or an internal error. The suite
runs FUZZ_CASES cases (a few dozen); `M3C_FUZZ_CASES=300` runs more, and
`M3C_FUZZ_REPORT=FILE` writes the outcome counts there as JSON.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from m3c.cli import main

FUZZ_CASES = int(os.environ.get("M3C_FUZZ_CASES", "30"))
COMMANDS = ("lower", "verify", "compile")
MAX_MESSAGE_LINES = 2


# --- mutations: each takes (model, rng) and returns the mutated model's bytes -----------------

def _serialized(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


def _invalid_utf8(model: onnx.ModelProto, rng: random.Random) -> bytes:
    """A byte of a metadata value or a node name replaced by 0xFF (same length: the protobuf
    framing stays valid, only the UTF-8 breaks)."""
    data = bytearray(_serialized(model))
    names = [prop.value.encode() for prop in model.metadata_props]
    names += [node.name.encode() for node in model.graph.node if node.name]
    target = rng.choice(names)
    start = data.find(target)
    data[start + rng.randrange(len(target))] = 0xFF
    return bytes(data)


def _bad_tasks(model: onnx.ModelProto, rng: random.Random) -> bytes:
    tasks = next(prop for prop in model.metadata_props if prop.key == "m3c.tasks")
    tasks.value = rng.choice(['["semseg"', "{}", "[]", "42", '["semseg", "semseg"]',
                              '["semseg", "nope"]', '[1, 2]', '[""]', "null",
                              json.dumps(json.loads(tasks.value)[::-1])])
    return _serialized(model)


def _bad_config(model: onnx.ModelProto, rng: random.Random) -> bytes:
    config = next(prop for prop in model.metadata_props if prop.key == "m3c.config")
    config.value = rng.choice(["{", "[]", '"text"', config.value[: len(config.value) // 2]])
    return _serialized(model)


def _task_input(model: onnx.ModelProto, rng: random.Random) -> bytes:
    task = next(value for value in model.graph.input if value.name == "task")
    choice = rng.randrange(3)
    if choice == 0:  # shape [1] instead of []
        task.type.tensor_type.shape.dim.add().dim_value = 1
    elif choice == 1:  # no type at all
        task.ClearField("type")
    else:
        task.type.tensor_type.elem_type = TensorProto.FLOAT
    return _serialized(model)


def _image_dims(model: onnx.ModelProto, rng: random.Random) -> bytes:
    image = next(value for value in model.graph.input if value.name == "image")
    dim = rng.choice(list(image.type.tensor_type.shape.dim))
    value = rng.choice([2**31, 0, 1, 3, 100_000])
    if rng.random() < 0.2:
        dim.dim_param = "height"
    else:
        dim.dim_value = value
    return _serialized(model)


def _opsets(model: onnx.ModelProto, rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        model.ClearField("opset_import")
    else:
        model.opset_import[0].version = rng.choice([1, 6, 99])
    return _serialized(model)


def _two_producers(model: onnx.ModelProto, rng: random.Random) -> bytes:
    first, second = rng.sample(range(len(model.graph.node)), 2)
    model.graph.node[second].output[0] = model.graph.node[first].output[0]
    return _serialized(model)


def _initializer_dtype(model: onnx.ModelProto, rng: random.Random) -> bytes:
    init = rng.choice([i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT])
    init.data_type = rng.choice([TensorProto.INT64, TensorProto.DOUBLE, TensorProto.FLOAT16,
                                 TensorProto.UINT8, TensorProto.STRING])
    return _serialized(model)


def _non_finite_weight(model: onnx.ModelProto, rng: random.Random) -> bytes:
    index = rng.choice([i for i, init in enumerate(model.graph.initializer)
                        if init.data_type == TensorProto.FLOAT and init.dims])
    values = numpy_helper.to_array(model.graph.initializer[index]).copy()
    values.flat[rng.randrange(values.size)] = rng.choice([np.nan, np.inf, -np.inf])
    model.graph.initializer[index].CopyFrom(numpy_helper.from_array(
        values, model.graph.initializer[index].name))
    return _serialized(model)


def _weight_as_input(model: onnx.ModelProto, rng: random.Random) -> bytes:
    index = rng.randrange(len(model.graph.initializer))
    init = model.graph.initializer[index]
    model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type,
                                                           list(init.dims)))
    del model.graph.initializer[index]
    return _serialized(model)


def _graph_edit(model: onnx.ModelProto, rng: random.Random) -> bytes:
    nodes = model.graph.node
    choice = rng.randrange(4)
    if choice == 0:
        del nodes[rng.randrange(len(nodes))]
    elif choice == 1:
        node = rng.choice([n for n in nodes if n.input])
        node.input[rng.randrange(len(node.input))] = "no_such_tensor"
    elif choice == 2:
        node = rng.choice([n for n in nodes if n.attribute] or list(nodes))
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.INT:
                attribute.i = rng.choice([-5, 0, 1, 7, 2**40])
    else:
        output = rng.randrange(len(model.graph.output))
        model.graph.output[output].name = "renamed_output"
    return _serialized(model)


def _truncate(model: onnx.ModelProto, rng: random.Random) -> bytes:
    data = _serialized(model)
    return data[: rng.randrange(len(data))]


def _flip_bytes(model: onnx.ModelProto, rng: random.Random) -> bytes:
    data = bytearray(_serialized(model))
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


MUTATIONS = [_invalid_utf8, _bad_tasks, _bad_config, _task_input, _image_dims, _opsets,
             _two_producers, _initializer_dtype, _non_finite_weight, _weight_as_input,
             _graph_edit, _truncate, _flip_bytes]


# --- running and classifying ------------------------------------------------------------------

def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`m3c ARGV` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse usage errors
            code = exit_.code if isinstance(exit_.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def classify(command: str, code: int, stdout: str, stderr: str, output: Path) -> str:
    """'ok', 'verify-fail', 'error' (exit 2, short) or 'traceback' (anything else)."""
    if "Traceback" in stderr or "internal error" in stderr:
        return "traceback"
    if code == 2:
        lines = [line for line in stderr.splitlines() if line.strip()]
        short = 1 <= len(lines) <= MAX_MESSAGE_LINES and all(len(line) < 400 for line in lines)
        return "error" if short else "traceback"
    if code == 0:
        plausible = {"lower": lambda: onnx.load(str(output)).graph.node,
                     "verify": lambda: "PASS" in stdout,
                     "compile": lambda: (output / "project.json").is_file()}[command]()
        return "ok" if plausible else "traceback"
    if code == 1 and command == "verify" and "FAIL" in stdout:
        return "verify-fail"
    return "traceback"


def fuzz_case(seed: int, base: onnx.ModelProto, folder: Path) -> tuple[str, str, str]:
    """Mutate, run one command; returns (mutation, command, outcome)."""
    rng = random.Random(seed)
    mutation = MUTATIONS[seed % len(MUTATIONS)]
    command = COMMANDS[seed % len(COMMANDS)]  # 13 and 3 are coprime: every pairing occurs
    model = onnx.ModelProto()
    model.CopyFrom(base)
    path = folder / f"case{seed}.onnx"
    path.write_bytes(mutation(model, rng))
    output = folder / (f"case{seed}_lowered.onnx" if command == "lower" else f"case{seed}_out")
    argv = {"lower": ["lower", str(path), "-o", str(output)],
            "verify": ["verify", str(path), "--images", "1"],
            "compile": ["compile", str(path), "-o", str(output)]}[command]
    code, stdout, stderr = run_cli(["--quiet", *argv])
    outcome = classify(command, code, stdout, stderr, output)
    if outcome == "traceback":
        print(f"seed {seed} {mutation.__name__} {command}: exit {code}\n{stderr[-2000:]}")
    return mutation.__name__, command, outcome


def test_fuzzed_models_end_in_a_result_or_a_short_error(export_model, tmp_path, monkeypatch):
    monkeypatch.setenv("M3C_LOG_DIR", str(tmp_path / "logs"))
    _, path = export_model("micro-nyud", "multi")
    base = onnx.load(str(path))
    results = [fuzz_case(seed, base, tmp_path) for seed in range(FUZZ_CASES)]
    counts = Counter(outcome for _, _, outcome in results)
    by_command = {command: dict(Counter(o for _, c, o in results if c == command))
                  for command in COMMANDS}
    print(f"fuzz outcomes over {len(results)} cases: {dict(counts)}; per command {by_command}")
    if os.environ.get("M3C_FUZZ_REPORT"):
        Path(os.environ["M3C_FUZZ_REPORT"]).write_text(json.dumps(
            {"cases": len(results), "outcomes": dict(counts), "per_command": by_command,
             "failures": [r for r in results if r[2] == "traceback"]}, indent=1))
    assert counts["traceback"] == 0, [r for r in results if r[2] == "traceback"]
    # The mutations are meant to break things: most cases must be refused, not pass.
    assert counts["error"] > len(results) // 2, counts


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.__name__.strip("_"))
def test_each_mutation_class_is_refused_or_survived_by_lower(mutation, export_model, tmp_path,
                                                             monkeypatch):
    """One lower run per mutation class, so a failing class is named by the test id."""
    monkeypatch.setenv("M3C_LOG_DIR", str(tmp_path / "logs"))
    _, path = export_model("micro-nyud", "multi")
    model = onnx.load(str(path))
    mutated = tmp_path / "mutated.onnx"
    mutated.write_bytes(mutation(model, random.Random(7)))
    output = tmp_path / "lowered.onnx"
    code, stdout, stderr = run_cli(["--quiet", "lower", str(mutated), "-o", str(output)])
    assert classify("lower", code, stdout, stderr, output) in ("ok", "error"), stderr


@pytest.mark.parametrize(("axis", "size"), [(2, 1), (3, 3)])
def test_compile_refuses_an_image_shape_the_model_cannot_take(axis, size, export_model,
                                                              tmp_path, monkeypatch):
    """The emulations of the test images run beside onnxruntime's; onnxruntime's refusal of
    the shape is what the user hears, not the emulator's failure to reshape."""
    monkeypatch.setenv("M3C_LOG_DIR", str(tmp_path / "logs"))
    _, path = export_model("micro-nyud", "multi")
    model = onnx.load(str(path))
    image = next(value for value in model.graph.input if value.name == "image")
    image.type.tensor_type.shape.dim[axis].dim_value = size
    mutated = tmp_path / "mutated.onnx"
    mutated.write_bytes(_serialized(model))
    output = tmp_path / "build"
    code, stdout, stderr = run_cli(["--quiet", "compile", str(mutated), "-o", str(output)])
    assert classify("compile", code, stdout, stderr, output) == "error", stderr
    assert not output.exists()
