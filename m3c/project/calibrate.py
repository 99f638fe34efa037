"""The compile's numbers: calibration scenes and images, the hardware types per tensor and
layer (fixed, int8, mixed or float), the weights in them, and the emulations that check them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from m3c.errors import CodegenError, NumericError
from m3c.hw.codegen import KernelPlan, apply_mac8
from m3c.hw.design import Precision
from m3c.hw.dse import choose_design
from m3c.hw.mixed import (
    MixedChoice,
    choose_layers,
    emulated_loss,
    layer_savings,
)
from m3c.hw.precision import (
    HEADROOM,
    ROLES,
    calibrate,
    choose_types,
    config_mac8_layers,
    float_types,
    layer_weight_types,
    mac8_types,
    observe_inputs,
    quantize_blob,
)
from m3c.ir.graph import Graph
from m3c.ir.sessions import ort_session
from m3c.project.fidelity import (
    Fidelity,
    LayerRecorder,
    SaturationCounter,
    fidelity,
    first_layer_off,
)
from m3c.runtime.emulator import KernelEmulator
from m3c.runtime.fixed import FixedType

FLOAT_TOLERANCE = 1e-4  # float C-simulation vs onnxruntime; fixed must equal the emulation
CALIBRATION_SCENES = 1  # per compile without --calib, every task run on each


def calibration_images(calib) -> np.ndarray | None:
    if calib is None or isinstance(calib, np.ndarray):
        return calib
    try:
        return np.load(calib)
    except (OSError, ValueError) as error:
        raise CodegenError(f"cannot read calibration images {calib}: {error}",
                           remedy="give a .npy array of images shaped [N,3,H,W]") from None


@dataclass
class Typing:
    """The precision pass's result: class types (None in float) and the kernel's weights."""

    precision: str
    types: dict[str, FixedType] | None
    weights: np.ndarray  # the values the kernel computes with (float32)
    activation_max: float | None = None
    raw_weights: np.ndarray | None = None  # fixed: the weight_t codes DDR holds
    mac8: dict[str, dict] = field(default_factory=dict)  # 8-bit layers: kernel.json "mac8"
    mixed: MixedChoice | None = None  # --precision mixed: the choice and its measurements
    headroom: float | None = None  # fixed: the data type's range over the calibrated peak
    float_features: list[np.ndarray] = field(default_factory=list)  # per task's test image

    @property
    def tolerance(self) -> float:
        return 0.0 if self.types else FLOAT_TOLERANCE

    def ddr_values(self) -> np.ndarray:
        """What DDR lanes hold: the raw weight_t codes, or the fp32 values."""
        return self.weights if self.types is None else self.raw_weights

    def types_json(self) -> dict:
        if self.types is None:
            return float_types()
        return {name: {**kind.to_json(), "role": ROLES[name]} for name, kind in self.types.items()}


def type_kernel(plan: KernelPlan, kernel: dict, settings: dict, test_images: list[np.ndarray],
            num_tasks: int, scenes: list[np.ndarray] = ()) -> Typing:
    """Without --calib, calibration runs each task on its test image and on every scene. The
    float kernel's features on the test images come with it (the lowering check's)."""
    blob = plan.weights.packed()
    tests = list(zip(test_images, range(num_tasks), strict=True))
    if settings["precision"] == "float":
        features = KernelEmulator(kernel, blob).run_many(tests)
        return Typing("float", None, blob, float_features=features)
    images = settings["calib"]
    if images is None:  # each task on its own test image, and on every scene
        samples = tests + [(scene, task) for scene in scenes for task in range(num_tasks)]
    else:
        images = np.asarray(images, np.float32)
        if images.ndim not in (3, 4) or images.shape[-3:] != tuple(plan.image_shape[1:]):
            raise CodegenError(f"calibration images have shape {list(images.shape)}, the model "
                               f"takes {list(plan.image_shape)}",
                               remedy="give a .npy of images shaped [N,3,H,W] as the model's")
        images = images.reshape(-1, *plan.image_shape[1:])
        samples = [(image, task) for image in images for task in range(num_tasks)]
    activation_max, features = calibrate(kernel, blob, samples)
    float_features = (features[:num_tasks] if images is None
                      else KernelEmulator(kernel, blob).run_many(tests))
    types = choose_types(kernel, blob, activation_max, settings["config"])
    sizes = {name: array.size for name, array in plan.weights.arrays.items()}
    narrowed = layer_weight_types(kernel, settings["config"])
    layers = config_mac8_layers(kernel, settings["config"])
    mac8: dict[str, dict] = {}
    mixed = None
    if settings["precision"] in ("int8", "mixed") or layers:
        inputs = observe_inputs(kernel, blob, samples)
        everything = None if settings["precision"] in ("int8", "mixed") else layers
        mac8, narrowed8 = mac8_types(kernel, blob, types, inputs, everything)
        if settings["precision"] == "mixed":
            raw16 = quantize_blob(blob, plan.weights.offsets, sizes, types["weight"], narrowed)
            mixed = _choose_mixed(kernel, blob, types, raw16, mac8, samples, settings)
            mac8, narrowed8 = mac8_types(kernel, blob, types, inputs, mixed.layers)
        narrowed |= narrowed8
    raw = quantize_blob(blob, plan.weights.offsets, sizes, types["weight"], narrowed)
    # In float32 directly (a power-of-two scale): the same values as through float64, without
    # a float64 copy of the whole blob.
    values = raw.astype(np.float32)
    values *= np.float32(math.ldexp(1.0, -types["weight"].frac))
    return Typing("fixed", types, values, activation_max, raw, mac8, mixed,
                  settings["config"].get("headroom", HEADROOM), float_features)


def _choose_mixed(kernel: dict, blob: np.ndarray, types: dict, raw: np.ndarray,
                  specs: dict[str, dict], samples: list, settings: dict) -> MixedChoice:
    """8 or 16 bits per layer (m3c.hw.mixed): savings estimated on the array the DSE picks with
    every candidate 8-bit, losses measured on the calibration samples."""
    wide = Precision.from_types({name: kind.to_json() for name, kind in types.items()})
    packed = apply_mac8(kernel, specs)
    design = choose_design(packed["calls"], packed["capacities"], settings["board"], wide,
                           settings["budget"], settings["tiles"]).design
    loss = emulated_loss(kernel, types, raw, blob, specs, samples, settings["heads"])
    return choose_layers(loss, layer_savings(kernel, specs, design), settings["max_loss"])


def head_runner(graph: Graph, tasks: list[str], features_shape: list[int]):
    """Task index, encoder features (flat) -> the task head's output (onnxruntime)."""
    sessions: dict = {}

    def run(task: int, features: np.ndarray) -> np.ndarray:
        if task not in sessions:
            sessions[task] = ort_session(graph.to_onnx(graph.heads[tasks[task]]))
        session = sessions[task]
        feeds = {session.get_inputs()[0].name: features.reshape(features_shape)}
        return session.run(None, feeds)[0]

    return run


def calibration_scenes(metadata: dict, settings: dict) -> list[np.ndarray]:
    """Synthetic scenes from the model's own generator (models m3c exported): beside the test
    vectors' standard-normal images they give calibration the flat regions and edges of real
    pictures, whose patch embeddings the noise never reaches."""
    from m3c.frontend.models.config import ModelConfig
    from m3c.frontend.models.data import make_dataset

    config = metadata.get("m3c.config")
    if not config or settings["precision"] == "float" or settings["calib"] is not None:
        return []
    try:
        scenes = make_dataset(ModelConfig.from_json(config), CALIBRATION_SCENES, seed=7)["image"]
    except (ValueError, KeyError, TypeError):  # a config m3c's generator cannot draw for
        return []
    return list(scenes.astype(np.float32))


def expected_features(kernel: dict, typing: Typing, vectors: list[dict]
                      ) -> tuple[list[np.ndarray], list[SaturationCounter]]:
    """What the kernel must output per task: onnxruntime's features in float, the bit-exact
    emulation's in fixed point, with each fixed-point run's saturated results."""
    if typing.types is None:
        return [vector["features"] for vector in vectors], []
    emulator = KernelEmulator(kernel, typing.raw_weights, typing.types, raw=True)
    counters = [SaturationCounter(typing.types["data"]) for _ in vectors]
    features = emulator.run_many([(vector["image"], task) for task, vector in enumerate(vectors)],
                                 counters)
    return features, counters


def check_fidelity(kernel: dict, typing: Typing, vectors: list[dict], tasks: list[str],
                   emulated: tuple[list[np.ndarray], list[SaturationCounter]], heads,
                   blob: np.ndarray) -> list[Fidelity]:
    """Each task's fixed-point outputs against onnxruntime's on its test image (m3c.project.
    fidelity); CodegenError naming the first layer that leaves the limits when one does."""
    features, counters = emulated
    rows = [fidelity(task, heads(index, features[index]), vector["output"], features[index],
                     vector["features"], counters[index])
            for index, (task, vector) in enumerate(zip(tasks, vectors, strict=True))]
    failing = [row for row in rows if not row.passed]
    if failing:
        index = tasks.index(failing[0].task)
        layer, why = _first_layer_off(kernel, typing, blob, vectors[index]["image"], index)
        # A headline and a row per limit left: short enough to be printed whole.
        failures = [failure for row in failing for failure in row.failures()][:4]
        raise NumericError(
            "the fixed-point types leave their limits against the float model, first at\n"
            f"{layer}: {why}\n" + "\n".join(failures),
            remedy="widen the data type or that layer's result type (--precision-config, "
                   "e.g. types: {data: \"ap_fixed<18,6>\"}), or use --precision fixed; "
                   "--allow-inaccurate writes the project anyway (verify will FAIL it)")
    return rows


def _first_layer_off(kernel: dict, typing: Typing, blob: np.ndarray, image: np.ndarray,
                     task: int) -> tuple[str, str]:
    """Emulate the image in fixed and in float, layer by layer, and find where they part."""
    data = typing.types["data"]
    fixed, counter = LayerRecorder(data), SaturationCounter(data)

    def both(call: dict, what: str, values: np.ndarray) -> None:
        fixed(call, what, values)
        counter(call, what, values)

    KernelEmulator(kernel, typing.raw_weights, typing.types, raw=True).run(image, task, both)
    floating = LayerRecorder()
    unnarrowed = {**kernel, "calls": [{key: value for key, value in call.items()
                                       if key != "narrow"} for call in kernel["calls"]]}
    KernelEmulator(unnarrowed, blob).run(image, task, floating)
    return first_layer_off(fixed, floating, counter)
