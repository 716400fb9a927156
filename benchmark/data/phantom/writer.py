"""Writing a phantom data set: NIfTI files in nnU-Net raw layout, `dataset.json`, the manifest.

Cases are generated in spawned worker processes that die with their parent; the set is built
in a hidden sibling folder and moved into place at the end, so nothing half-written is left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import multiprocessing
import os
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmark.data.cache import (
    LOCK,
    STALE_AFTER_S,
    publish,
    write_manifest,
)
from benchmark.data.digests import DigestMemo
from benchmark.data.phantom.case import generate_case
from benchmark.data.phantom.settings import ORGANS, PhantomSettings
from benchmark.processes import die_with_parent, remove_dead_scratch


def _affine(shape: tuple[int, ...], spacing: tuple[float, float, float]) -> np.ndarray:
    """RAS+ affine: diag(spacing), with the in-plane centre of the image at x = y = 0 mm."""
    affine = np.diag([*spacing, 1.0])
    affine[0, 3] = -(shape[0] - 1) / 2 * spacing[0]
    affine[1, 3] = -(shape[1] - 1) / 2 * spacing[1]
    return affine


def _save(data: np.ndarray, spacing: tuple[float, float, float], path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, _affine(data.shape, spacing))
    img.header.set_zooms(spacing)
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, str(path))


def _case_name(index: int, labeled: bool) -> str:
    return f"phantom_{index + 1:04d}" if labeled else f"phantom_u{index + 1:04d}"


def _write_one(root: str, settings: PhantomSettings, index: int, labeled: bool) -> float:
    """Generate and write one case; returns the seconds it took."""
    t0 = time.perf_counter()
    image, label, spacing = generate_case(settings, index, labeled)
    name = _case_name(index, labeled)
    base = Path(root)
    if labeled:
        _save(image, spacing, base / "imagesTr" / f"{name}_0000.nii.gz")
        _save(label, spacing, base / "labelsTr" / f"{name}.nii.gz")
    else:
        _save(image, spacing, base / "imagesUnlabeled" / f"{name}_0000.nii.gz")
    return time.perf_counter() - t0


def _limit_threads() -> None:
    # One BLAS thread per worker process: the pool already uses every core it is given.
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)


def _init_worker(parent: int) -> None:
    # Tied to the thread that submits to the pool (it spawns the workers), which lives until
    # the pool is shut down.
    die_with_parent(parent)
    _limit_threads()


def _dataset_json(settings: PhantomSettings) -> dict:
    return {
        "name": "phantom",
        "description": "Synthetic abdominal CT phantom with the 13 FLARE22 organs (HU, RAS+).",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{name: i for i, name in ORGANS.items()}},
        "numTraining": settings.cases,
        "file_ending": ".nii.gz",
        "phantom_settings": asdict(settings),
    }


def write_phantom(
    out: Path,
    settings: PhantomSettings,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    keep_sound: bool = False,
) -> Path:
    """Write an nnU-Net raw data set of phantom cases to ``out`` and return ``out``.

    Layout: ``imagesTr/phantom_0001_0000.nii.gz`` + ``labelsTr/phantom_0001.nii.gz`` per labeled
    case, ``imagesUnlabeled/phantom_u0001_0000.nii.gz`` per unlabeled case, and
    ``dataset.json``, and last ``manifest.json`` (size and SHA-256 of every file, checked by
    whoever reuses the set: `benchmark.data.cache`). The set is built in a hidden sibling
    directory and moved into place at the end, replacing an existing ``out``, so an
    interrupted run never leaves a partial data set.
    ``progress(done, total)`` is called after each case; ``workers`` processes generate cases
    in parallel (1 = in this process). Workers are spawned, not forked, so a script calling
    this with ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard. Workers end
    with this process, even when it is killed; the next call removes what a killed call left.
    The build holds a lock (`benchmark.data.cache.LOCK`) until it is in place, so a build
    by another process, here or on another host sharing the folder, is never taken for a
    leftover. ``keep_sound`` (the cache): an ``out`` that another process finished first and
    that matches its manifest is kept, not replaced.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    lock = (tmp / LOCK).open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    jobs = [(i, True) for i in range(settings.cases)] + [
        (i, False) for i in range(settings.unlabeled)
    ]
    total = len(jobs)
    try:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        if settings.unlabeled:
            (tmp / "imagesUnlabeled").mkdir()
        done = 0
        if workers <= 1 or total <= 1:
            for i, labeled in jobs:
                _write_one(str(tmp), settings, i, labeled)
                done += 1
                if progress:
                    progress(done, total)
        else:
            # Fresh interpreters: forking a parent that already runs threads (torch, BLAS) can
            # deadlock.
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                max_workers=min(workers, total),
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(os.getpid(),),
            ) as pool:
                futures = [pool.submit(_write_one, str(tmp), settings, i, lab) for i, lab in jobs]
                try:
                    for fut in as_completed(futures):
                        fut.result()
                        done += 1
                        if progress:
                            progress(done, total)
                except BaseException:
                    # Do not make the remaining cases of a run that has already failed.
                    for fut in futures:
                        fut.cancel()
                    raise
        (tmp / "dataset.json").write_text(json.dumps(_dataset_json(settings), indent=2) + "\n")
        write_manifest(tmp)
        if keep_sound:
            publish(tmp, out, DigestMemo(None))
        else:
            old = None
            if out.exists():
                old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                os.replace(out, old)
            os.replace(tmp, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):  # in place: nothing left to guard
            (out / LOCK).unlink()
    finally:
        lock.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _sweep_leftovers(out: Path) -> None:
    """Remove what killed builds of ``out`` left: hidden ``.{name}.tmp-*`` / ``.old-*``
    folders that no live process holds the lock of, once their process is gone from this
    host or they are `STALE_AFTER_S` old (a reused pid, or another host's dead build)."""
    for kind in ("tmp", "old"):
        remove_dead_scratch(out.parent, f".{out.name}.{kind}-", STALE_AFTER_S)


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------
