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

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from m3c.check.batches import Batch
from m3c.check.images import ImageSet
from m3c.check.pools import BATCH_IMAGES, LocalPool, Progress, RayPool
from m3c.errors import EvaluationError
from m3c.progress import Counter

BACKENDS = ("emulate", "csim", "reference")


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
    counter = Counter(len(batches), "evaluating batches")  # on the command line only
    try:
        results = pool.run(folders, backend, batches, images,
                           progress or (lambda done, total, result: counter.update(done)))
    finally:
        counter.close()
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
        difference = sum(row["features_squared_difference"] for row in rows)
        energy = sum(row["features_squared_reference"] for row in rows)
        tasks[task]["features_relative_rmse"] = (math.sqrt(difference / energy) if energy
                                                 else 0.0 if difference == 0 else math.inf)
    saturation: dict[str, int] = {}
    for record in records:
        for layer, pinned in record["saturation"].items():
            saturation[layer] = saturation.get(layer, 0) + pinned
    return {"project": str(folder), "precision": manifest.get("precision"), "tasks": tasks,
            "saturation": dict(sorted(saturation.items())),
            "results": sum(record["results"] for record in records),
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
        elements = sum(row["label_elements"] for row in rows)
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


