"""Where batches run: local worker processes (or this process) and Ray tasks, with retries;
projects travel to Ray workers packed in the object store."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from m3c.check.batches import Batch, evaluate_batch
from m3c.check.images import ImageSet, images_of_batch
from m3c.errors import EvaluationError

BATCH_IMAGES = 4


ATTEMPTS = 3  # runs of one batch before the evaluation gives up


# What a worker needs of a project: the call sequence, types, weights, heads, the float model.
SHIPPED = ("project.json", "kernel.json", "weights", "host/heads", "hls",
           "intermediate/00_import.onnx", "intermediate/weights.data")


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
                                              *images_of_batch(images, batch)))
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
                        inputs = images_of_batch(images, batch)
                        pending[pool.submit(evaluate_batch, projects[batch.project], backend,
                                            batch.indices, *inputs)] = number
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
        pending = {remote.remote(shipped[b.project], backend, b.indices,
                                 *images_of_batch(images, b)): number
                   for number, b in enumerate(batches)}
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


Progress = Callable[[int, int, dict], None]
