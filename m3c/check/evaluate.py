"""Evaluate compiled accelerators on whole image sets, on this machine or on a Ray cluster.

Every image goes through the compiled model for every task (the task register is the only thing
that changes, as on the board) and through the float reference (onnxruntime on the imported
model, `intermediate/00_import.onnx`). Per task: agreement with float (pixel agreement of the
class maps, relative RMSE of dense maps), the task metric against labels when there are labels
(mIoU, RMSE), and saturation events per layer of the fixed-point kernel.

Images are cut into batches. A batch is evaluated by a local worker process (default), in this
process (`workers=1`), or as a Ray task (`ray="local"`, `"auto"` or an address); the projects
travel to Ray workers through the object store, so no shared file system is needed. A batch whose
worker dies is run again. Per-image results are put back in image order before anything is
summed, so the figures are the same bit for bit whatever the number of workers and whatever
order batches finish in.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from m3c.check.metrics import encoder_error
from m3c.errors import M3CError

BACKENDS = ("emulate", "csim", "reference")
DENSE_MULTICHANNEL = frozenset({"normals"})  # regressions with several channels
BATCH_IMAGES = 4
ATTEMPTS = 3  # runs of one batch before the evaluation gives up
# What a worker needs of a project: the call sequence, types, weights, heads, the float model.
SHIPPED = ("project.json", "kernel.json", "weights", "host/heads", "hls",
           "intermediate/00_import.onnx", "intermediate/weights.data")


class EvaluationError(M3CError):
    """Images, labels, projects or workers an evaluation cannot use."""


@dataclass
class ImageSet:
    """Model inputs [N,3,H,W] float32, their names, and labels per task when known."""

    images: np.ndarray
    names: list[str]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""


# ------------------------------------------------------------------------------------ inputs

def load_images(spec: str | Path | None, manifest: dict, labels: str | Path | None = None,
                synthetic: int | None = None, seed: int = 2024) -> ImageSet:
    """Images from a folder of PNG/JPEG pictures, an .npy batch, or `synthetic` generated
    scenes with their labels (m3c.frontend.models.data; needs the torch extra for the model
    package)."""
    shape = tuple(manifest["image_shape"])
    if synthetic is not None:
        return _synthetic(manifest, synthetic, seed)
    if spec is None:
        raise EvaluationError("no images given", remedy="pass --images DIR_OR_NPY or "
                                                        "--synthetic N")
    path = Path(spec)
    if path.is_dir():
        images, names = _pictures(path, shape, manifest["config"])
    elif path.suffix.lower() == ".npy" and path.is_file():
        images, names = _npy_batch(path, shape, manifest["config"])
    else:
        raise EvaluationError(f"{path}: neither a folder of pictures nor an .npy file",
                              remedy="pass a folder of .png/.jpg files or an [N,3,H,W] .npy")
    if not len(images):
        raise EvaluationError(f"{path} holds no images", remedy="an evaluation needs at least "
                                                                "one image")
    found = _labels(Path(labels), manifest["tasks"], len(images)) if labels else {}
    return ImageSet(images, names, found, str(path))


def _synthetic(manifest: dict, count: int, seed: int) -> ImageSet:
    if count < 1:
        raise EvaluationError(f"--synthetic {count}: at least one scene is needed")
    from m3c.frontend.models.config import ModelConfig
    from m3c.frontend.models.data import make_dataset

    config = ModelConfig.from_json(json.dumps(manifest["config"]))
    data = make_dataset(config, count, seed)
    labels = {task: data[task] for task in manifest["tasks"] if task in data}
    return ImageSet(data["image"].astype(np.float32), [f"scene{i:05d}" for i in range(count)],
                    labels, f"synthetic scenes (seed {seed})")


def _pictures(folder: Path, shape: tuple[int, ...], config: dict):
    from m3c.runtime.preprocess import preprocess

    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    images = [preprocess(_read_picture(p), shape, config)[0] for p in files]
    return np.stack(images) if images else np.zeros((0, *shape[1:]), np.float32), \
        [p.stem for p in files]


def _read_picture(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".png":
        from m3c.runtime.png import read_png

        return read_png(path)
    from PIL import Image  # JPEG; Pillow comes with matplotlib

    try:
        with Image.open(path) as picture:
            return np.asarray(picture.convert("RGB"))
    except OSError as error:
        raise EvaluationError(f"cannot read {path}: {error}") from None


def _npy_batch(path: Path, shape: tuple[int, ...], config: dict):
    try:
        batch = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise EvaluationError(f"cannot read {path}: {error}",
                              remedy="save the batch with numpy.save") from None
    if batch.dtype == np.uint8 and batch.ndim == 4 and batch.shape[-1] in (1, 3, 4):
        from m3c.runtime.preprocess import preprocess

        batch = np.stack([preprocess(picture, shape, config)[0] for picture in batch])
    if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(shape[1:]):
        raise EvaluationError(f"{path}: images of shape {list(batch.shape)}, the model takes "
                              f"[N, {', '.join(map(str, shape[1:]))}]",
                              remedy="give model inputs [N,3,H,W], or uint8 pictures [N,H,W,3]")
    batch = batch.astype(np.float32)
    if not np.isfinite(batch).all():
        raise EvaluationError(f"{path}: images contain NaN or infinite values")
    return batch, [f"{path.stem}[{i}]" for i in range(len(batch))]


def _labels(folder: Path, tasks: list[str], count: int) -> dict[str, np.ndarray]:
    """`<folder>/<task>.npy` per task, one label map per image, in image order."""
    found = {}
    for task in tasks:
        path = folder / f"{task}.npy"
        if not path.is_file():
            continue
        labels = np.load(path, allow_pickle=False)
        if len(labels) != count:
            raise EvaluationError(f"{path} has {len(labels)} labels for {count} images",
                                  remedy="one label map per image, in image order")
        found[task] = labels
    if not found:
        raise EvaluationError(f"{folder} holds no <task>.npy labels for tasks {tasks}")
    return found


# ------------------------------------------------------------------------------- one worker

class ProjectRunner:
    """One project's compiled model and float reference, loaded once per worker."""

    def __init__(self, project: Path, backend: str) -> None:
        import onnx

        from m3c.runtime.fixed import FixedType

        self.manifest = json.loads((project / "project.json").read_text())
        self.tasks = self.manifest["tasks"]
        self.backend = backend
        self.heads = {task: _session(onnx.load(str(project / "host/heads" / f"{task}.onnx")))
                      for task in self.tasks}
        self.features = self.manifest["features_tensor"]
        self.reference = _session(_with_output(
            onnx.load(str(project / "intermediate/00_import.onnx")), self.features))
        types = self.manifest.get("types") or {}
        self.data_type = (FixedType.from_json(types["data"])
                          if self.manifest.get("precision") == "fixed" else None)
        self.kernel = None
        if backend == "emulate":
            from m3c.runtime.emulator import KernelEmulator

            self.kernel = KernelEmulator.from_project(project)
        elif backend == "csim":
            from m3c.project import csim

            self.kernel = csim.load(project)

    def evaluate(self, index: int, image: np.ndarray, labels: dict[str, np.ndarray]) -> dict:
        """Per task: this image's agreement with float, errors against labels, saturation,
        and the largest difference of the kernel's features from float's."""
        record = {"index": index, "tasks": {}, "saturation": {}}
        for task_id, task in enumerate(self.tasks):
            feeds = {"image": image[None]}
            if len(self.tasks) > 1:
                feeds["task"] = np.array(task_id, dtype=np.int64)
            # Only this task's head: the others would be computed and thrown away.
            features, reference = self.reference.run([self.features, task], feeds)
            if self.backend == "reference":
                compiled, features_error = reference, (0.0, 0.0)
            else:
                ours = self._features(image, task_id, record["saturation"])
                compiled = self._head(task, ours)
                features_error = encoder_error(ours, features, self.manifest["features_shape"],
                                               f"{task} features")
            record["tasks"][task] = {**_task_record(task, compiled, reference, labels.get(task)),
                                     "features_error": features_error[0],
                                     "features_worst": features_error[1]}
        return record

    def _features(self, image: np.ndarray, task_id: int, saturation: dict) -> np.ndarray:
        if self.backend == "emulate":
            observer = _saturation_counter(self.data_type, saturation)
            return self.kernel.run(image, task_id, observer)
        return self.kernel.run(image, task_id)

    def _head(self, task: str, features: np.ndarray) -> np.ndarray:
        head, shape = self.heads[task], self.manifest["features_shape"]
        return head.run(None, {head.get_inputs()[0].name: features.reshape(shape)})[0]


def _with_output(model, name: str):
    """`model` with tensor `name` as an extra output (the encoder's features)."""
    import onnx

    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                 None))
    return model


def _session(model):
    """onnxruntime on one thread: a worker is one core, and sums keep one order."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _saturation_counter(data_type, counts: dict):
    """An emulator observer counting results pinned at the data type's limits, per layer."""
    if data_type is None:
        return None

    def observe(call: dict, what: str, values: np.ndarray) -> None:
        if what in ("output", "hidden", "expert_output"):
            pinned = int(np.count_nonzero((values == data_type.raw_max)
                                          | (values == data_type.raw_min)))
            if pinned:
                counts[call["layer"]] = counts.get(call["layer"], 0) + pinned
    return observe


def _task_record(task: str, compiled: np.ndarray, reference: np.ndarray,
                 label: np.ndarray | None) -> dict:
    """What one image contributes to a task's figures (sums, so batches add exactly)."""
    if _is_classes(task, reference):
        ours, theirs = compiled[0].argmax(0), reference[0].argmax(0)
        record = {"kind": "classes", "agreement": float(np.mean(ours == theirs))}
        if label is not None:
            classes = reference.shape[1]
            record["confusion"] = _confusion(ours, label, classes).tolist()
            record["confusion_float"] = _confusion(theirs, label, classes).tolist()
        return record
    difference = float(np.sum((compiled.astype(np.float64) - reference) ** 2))
    energy = float(np.sum(reference.astype(np.float64) ** 2))
    record = {"kind": "dense", "squared_difference": difference, "squared_reference": energy,
              "relative_rmse": math.sqrt(difference / energy) if energy else 0.0,
              "elements": int(reference.size)}
    if label is not None:
        target = np.asarray(label, np.float64).reshape(reference.shape)
        record["squared_error"] = float(np.sum((compiled - target) ** 2))
        record["squared_error_float"] = float(np.sum((reference - target) ** 2))
    return record


def _is_classes(task: str, output: np.ndarray) -> bool:
    return output.shape[1] > 1 and task not in DENSE_MULTICHANNEL


def _confusion(prediction: np.ndarray, label: np.ndarray, classes: int) -> np.ndarray:
    label = np.asarray(label).reshape(prediction.shape)
    valid = (label >= 0) & (label < classes)
    pairs = label[valid].astype(np.int64) * classes + prediction[valid]
    return np.bincount(pairs, minlength=classes * classes).reshape(classes, classes)


# ------------------------------------------------------------------------------- batches

@dataclass(frozen=True)
class Batch:
    project: int  # index into the evaluated projects
    indices: tuple[int, ...]


_RUNNERS: dict[tuple[str, str], ProjectRunner] = {}


def _runner(project: Path, backend: str) -> ProjectRunner:
    key = (str(project), backend)
    if key not in _RUNNERS:
        _RUNNERS[key] = ProjectRunner(project, backend)
    return _RUNNERS[key]


def evaluate_batch(project: Path, backend: str, indices: Sequence[int], images: np.ndarray,
                   labels: dict[str, np.ndarray]) -> dict:
    """One batch in this process: its records, and which process ran it."""
    from threadpoolctl import threadpool_limits

    runner = _runner(project, backend)
    with threadpool_limits(limits=1):  # one core per worker; sums in one order
        records = [runner.evaluate(i, image, {t: v[n] for t, v in labels.items()})
                   for n, (i, image) in enumerate(zip(indices, images, strict=True))]
    return {"records": records, "pid": os.getpid()}


Progress = Callable[[int, int, dict], None]


class LocalPool:
    """Batches in this process (one worker) or a pool of worker processes."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise EvaluationError(f"--workers {workers}: at least one worker is needed")
        self.workers = workers

    def run(self, projects: list[Path], backend: str, batches: list[Batch], images: ImageSet,
            progress: Progress) -> list[dict]:
        if self.workers == 1:
            results = []
            for done, batch in enumerate(batches, 1):
                results.append(evaluate_batch(projects[batch.project], backend, batch.indices,
                                              *_slice(images, batch)))
                progress(done, len(batches), results[-1])
            return results
        return self._pool(projects, backend, batches, images, progress)

    def _pool(self, projects, backend, batches, images, progress) -> list[dict]:
        results: dict[int, dict] = {}
        attempts = dict.fromkeys(range(len(batches)), 0)
        while len(results) < len(batches):
            with ProcessPoolExecutor(self.workers) as pool:
                pending = {}
                for number, batch in enumerate(batches):
                    if number not in results:
                        attempts[number] += 1
                        pending[pool.submit(evaluate_batch, projects[batch.project], backend,
                                            batch.indices, *_slice(images, batch))] = number
                broken = self._collect(pending, results, len(batches), progress)
            if broken:
                given_up = [n for n in attempts if n not in results and attempts[n] >= ATTEMPTS]
                if given_up:
                    raise EvaluationError(f"batch {given_up[0]} failed {ATTEMPTS} times: its "
                                          "worker process died each time",
                                          remedy="check memory, or run with --workers 1")
        return [results[number] for number in range(len(batches))]

    @staticmethod
    def _collect(pending: dict, results: dict, total: int, progress: Progress) -> bool:
        """Gather finished batches; True when a worker died (the pool is then broken)."""
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                number = pending.pop(future)
                try:
                    results[number] = future.result()
                except BrokenProcessPool:
                    return True
                progress(len(results), total, results[number])
        return False


class RayPool:
    """Batches as Ray tasks; each project travels once through the object store."""

    def __init__(self, address: str) -> None:
        try:
            import ray
        except ImportError:
            raise EvaluationError("Ray is not installed",
                                  remedy="pip install 'm3c[cluster]', or drop --ray") from None
        self.ray = ray
        self.address = address

    def run(self, projects: list[Path], backend: str, batches: list[Batch], images: ImageSet,
            progress: Progress) -> list[dict]:
        ray = self.ray
        started_here = not ray.is_initialized()
        if started_here:
            if self.address == "local":
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
                         log_to_driver=False)
            else:
                ray.init(address=self.address, log_to_driver=False)
        try:
            return self._run(projects, backend, batches, images, progress)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, projects, backend, batches, images, progress) -> list[dict]:
        ray = self.ray
        remote = ray.remote(max_retries=ATTEMPTS - 1, retry_exceptions=False)(_ray_batch)
        shipped = [ray.put(pack_project(project)) for project in projects]
        pending = {remote.remote(shipped[b.project], backend, b.indices, *_slice(images, b)):
                   number for number, b in enumerate(batches)}
        results: dict[int, dict] = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            number = pending.pop(done[0])
            try:
                results[number] = ray.get(done[0])
            except ray.exceptions.RayError as error:
                raise EvaluationError(f"batch {number} failed on the cluster: "
                                      f"{str(error).splitlines()[0]}") from None
            progress(len(results), len(batches), results[number])
        return [results[number] for number in range(len(batches))]


def _ray_batch(packed: bytes, backend: str, indices, images, labels) -> dict:
    return evaluate_batch(unpack_project(packed), backend, indices, images, labels)


def pack_project(project: Path) -> bytes:
    """The files a worker needs, as a gzip'd tar (sorted, no timestamps: same bytes each time)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped, \
            tarfile.open(fileobj=zipped, mode="w") as archive:
        for name in SHIPPED:
            path = project / name
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else \
                [path] if path.is_file() else []
            for file in files:
                info = archive.gettarinfo(str(file), arcname=str(file.relative_to(project)))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with open(file, "rb") as handle:
                    archive.addfile(info, handle)
    return buffer.getvalue()


def unpack_project(packed: bytes) -> Path:
    """Unpack once per worker process and content: later batches reuse the folder."""
    digest = hashlib.sha256(packed).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"m3c-evaluate-{os.getpid()}-{digest}"
    if not (folder / "project.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(packed), mode="r:gz") as archive:
            archive.extractall(folder, filter="data")
    return folder


def _slice(images: ImageSet, batch: Batch) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rows = list(batch.indices)
    return images.images[rows], {task: labels[rows] for task, labels in images.labels.items()}


# --------------------------------------------------------------------------------- summary

def evaluate(projects: Sequence[str | Path], images: ImageSet, backend: str = "emulate",
             workers: int | None = None, ray: str | None = None, batch_images: int = BATCH_IMAGES,
             progress: Progress | None = None) -> dict:
    """Evaluate every project on every image; the figures as plain data (see module doc)."""
    if backend not in BACKENDS:
        raise EvaluationError(f"unknown backend {backend!r}", remedy=f"one of {BACKENDS}")
    if batch_images < 1:
        raise EvaluationError(f"batch size {batch_images} must be at least 1")
    folders = [_check_project(Path(project)) for project in projects]
    count = len(images.images)
    batches = [Batch(p, tuple(range(start, min(start + batch_images, count))))
               for p in range(len(folders)) for start in range(0, count, batch_images)]
    pool = RayPool(ray) if ray else LocalPool(workers or min(os.cpu_count() or 1, len(batches)))
    started = time.perf_counter()
    results = pool.run(folders, backend, batches, images, progress or (lambda *_: None))
    seconds = time.perf_counter() - started
    summaries = []
    for number, folder in enumerate(folders):
        records = [record for batch, result in zip(batches, results, strict=True)
                   if batch.project == number for record in result["records"]]
        summaries.append(_summarise(folder, records, images))
    return {"images": count, "source": images.source, "backend": backend,
            "projects": summaries,
            "timing": {"seconds": seconds, "workers": "ray" if ray else pool.workers,
                       "processes": len({result["pid"] for result in results})}}


def _check_project(folder: Path) -> Path:
    missing = [name for name in ("project.json", "kernel.json", "intermediate/00_import.onnx")
               if not (folder / name).is_file()]
    if missing:
        raise EvaluationError(f"{folder} is not a compiled m3c project (no {missing[0]})",
                              remedy=f"compile one: m3c compile MODEL -o {folder}")
    return folder


def _summarise(folder: Path, records: list[dict], images: ImageSet) -> dict:
    records = sorted(records, key=lambda record: record["index"])
    manifest = json.loads((folder / "project.json").read_text())
    tasks = {}
    for task in manifest["tasks"]:
        rows = [record["tasks"][task] for record in records]
        tasks[task] = (_classes_summary(rows) if rows[0]["kind"] == "classes"
                       else _dense_summary(rows))
        tasks[task]["worst_images"] = _worst(rows, records, images.names)
        for key in ("features_error", "features_worst"):
            tasks[task][key] = max(row[key] for row in rows)
    saturation: dict[str, int] = {}
    for record in records:
        for layer, pinned in record["saturation"].items():
            saturation[layer] = saturation.get(layer, 0) + pinned
    return {"project": str(folder), "precision": manifest.get("precision"), "tasks": tasks,
            "saturation": dict(sorted(saturation.items())),
            "per_image": [{"image": images.names[r["index"]],
                           **{task: _image_score(r["tasks"][task]) for task in manifest["tasks"]}}
                          for r in records]}


def _image_score(row: dict) -> float:
    return row["agreement"] if row["kind"] == "classes" else row["relative_rmse"]


def _classes_summary(rows: list[dict]) -> dict:
    summary = {"kind": "classes",
               "pixel_agreement": float(np.mean([row["agreement"] for row in rows]))}
    if "confusion" in rows[0]:
        for key, name in (("confusion", "miou"), ("confusion_float", "miou_float")):
            summary[name] = _miou(sum(np.array(row[key], np.int64) for row in rows))
    return summary


def _miou(confusion: np.ndarray) -> float:
    """Mean IoU over the classes that occur in the labels or the predictions."""
    truth, predicted, hits = confusion.sum(1), confusion.sum(0), np.diag(confusion)
    union = truth + predicted - hits
    present = union > 0
    return float(np.mean(hits[present] / union[present])) if present.any() else 0.0


def _dense_summary(rows: list[dict]) -> dict:
    difference = sum(row["squared_difference"] for row in rows)
    energy = sum(row["squared_reference"] for row in rows)
    summary = {"kind": "dense",
               "relative_rmse": math.sqrt(difference / energy) if energy else 0.0}
    if "squared_error" in rows[0]:
        elements = sum(row["elements"] for row in rows)
        summary["rmse"] = math.sqrt(sum(row["squared_error"] for row in rows) / elements)
        summary["rmse_float"] = math.sqrt(sum(row["squared_error_float"] for row in rows)
                                          / elements)
    return summary


def _worst(rows: list[dict], records: list[dict], names: list[str], count: int = 5) -> list:
    """The images the compiled model agrees with float least on."""
    scored = [(_image_score(row) if row["kind"] == "dense" else -_image_score(row),
               record["index"]) for row, record in zip(rows, records, strict=True)]
    worst = sorted(scored, reverse=True)[:count]
    return [{"image": names[index], "score": abs(score)} for score, index in worst]


# --------------------------------------------------------------------------------- output

def write_evaluation(out: Path, evaluation: dict, plots: bool = True) -> list[Path]:
    """evaluation.json (timings apart), evaluation.md and the plots, into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "evaluation.json", out / "evaluation.md"]
    written[0].write_text(json.dumps(evaluation, indent=1, sort_keys=True) + "\n")
    written[1].write_text(render_markdown(evaluation))
    if plots:
        written += _plots(out, evaluation)
    return written


def render_markdown(evaluation: dict) -> str:
    lines = [f"# m3c evaluation: {evaluation['images']} images ({evaluation['source']}), "
             f"backend {evaluation['backend']}", ""]
    for project in evaluation["projects"]:
        lines += [f"## {project['project']} ({project['precision']})", "",
                  "| task | agreement with float | metric (accelerator) | metric (float) |",
                  "|---|---|---|---|"]
        for task, figures in project["tasks"].items():
            lines.append(f"| {task} | {_agreement_text(figures)} | {_metric_text(figures)} |")
        if project["saturation"]:
            lines += ["", "Saturated results per layer:", ""]
            lines += [f"- `{layer}`: {count}" for layer, count in project["saturation"].items()]
        lines += ["", "Worst images: " + ", ".join(
            f"{task}: {', '.join(w['image'] for w in figures['worst_images'][:3])}"
            for task, figures in project["tasks"].items()), ""]
    timing = evaluation["timing"]
    lines.append(f"{timing['seconds']:.1f} s on {timing['workers']} worker(s), "
                 f"{timing['processes']} process(es).")
    return "\n".join(lines) + "\n"


def _agreement_text(figures: dict) -> str:
    if figures["kind"] == "classes":
        return f"{figures['pixel_agreement']:.2%} of pixels"
    return f"relative RMSE {figures['relative_rmse']:.2%}"


def _metric_text(figures: dict) -> str:
    if "miou" in figures:
        return f"mIoU {figures['miou']:.3f} | mIoU {figures['miou_float']:.3f}"
    if "rmse" in figures:
        return f"RMSE {figures['rmse']:.3f} | RMSE {figures['rmse_float']:.3f}"
    return "(no labels) | (no labels)"


def _plots(out: Path, evaluation: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    written = []
    for number, project in enumerate(evaluation["projects"]):
        figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4))
        for task in project["tasks"]:
            left.hist([image[task] for image in project["per_image"]], bins=20, alpha=0.6,
                      label=task)
        left.set_title("per image: class agreement / dense relative RMSE")
        left.legend()
        layers = list(project["saturation"])
        right.barh(range(len(layers)), [project["saturation"][n] for n in layers])
        right.set_yticks(range(len(layers)), [n[-30:] for n in layers], fontsize=6)
        right.set_title("saturated results per layer" if layers else "no saturation")
        figure.tight_layout()
        path = out / f"evaluation_{number}.png"
        figure.savefig(path, dpi=90, metadata={"Software": None})
        pyplot.close(figure)
        written.append(path)
    return written
