"""The leakage guard: no labeled image may also sit in the unlabeled pool.

Pretraining sees the unlabeled pool; a labeled case copied into it (a test case above all)
would let a method learn from the images it is scored on. Two checks, each memoised like the
slice-store keys (`benchmark.data.digests`), so a warm start only stats the files:

- **copies**: the SHA-256 of every byte, only where an unlabeled and a labeled image have the
  same size;
- **saved again** (other compression, header, data type or axis order): the SHA-256 of the
  decoded voxels in canonical orientation, only where an unlabeled and a labeled image have
  the same shape and voxel size, read from their headers alone.

A copy whose voxel values were changed (resampled, cropped, re-windowed) is not caught. The
memoised values are keyed by the reader's code and the decoding libraries' versions too. An
unlabeled image that cannot be read is left to pretraining, the only command that reads the
pool, to refuse: it does not stop a supervised run.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from benchmark.data.digests import DigestMemo
from benchmark.data.reader import DatasetIndex, grid_signature, voxel_digest
from benchmark.errors import DatasetError
from benchmark.fingerprint import source_digest

log = logging.getLogger(__name__)

GRID = "grid"
"""Memo kind of `grid_signature` (before its `_code` suffix)."""
VOXELS = "voxels-sha256"
"""Memo kind of `voxel_digest` (before its `_code` suffix)."""


@cache
def _code() -> str:
    """What the memoised values depend on besides the file: the reader's source and the
    versions of the libraries that decode and reorient. Part of each memo kind, so values
    computed by other code are computed again, never compared with fresh ones."""
    from importlib.metadata import version

    parts = [source_digest("benchmark.data.reader"), version("nibabel"), version("numpy")]
    return hashlib.sha256(" ".join(parts).encode()).hexdigest()[:12]


def _size(path: Path) -> int:
    with _readable(path):
        return path.stat().st_size


@contextmanager
def _readable(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _memoised(
    memo: DigestMemo, path: Path, kind: str, compute: Callable[[Path], str], fresh: bool
) -> str:
    with _readable(path):
        return memo.value(path, f"{kind}:{_code()}", compute, fresh)


def _digest(memo: DigestMemo, path: Path, fresh: bool) -> str:
    with _readable(path):
        return memo.digest(path, fresh)


def _leak(unlabeled: Path, labeled: Path, how: str) -> DatasetError:
    return DatasetError(
        f"{unlabeled}: unlabeled image is a copy of the labeled image {labeled} ({how}); "
        f"remove it from the unlabeled pool, pretraining must not see labeled cases"
    )


def check_leakage(index: DatasetIndex, memo: DigestMemo, fresh: bool = False) -> None:
    """Raise `DatasetError` naming both files when an unlabeled image has the bytes, or the
    voxels, of a labeled image. `fresh` computes again instead of trusting the memo
    (`--verify`)."""
    if not index.unlabeled:
        return
    labeled_by_size: dict[int, list[Path]] = defaultdict(list)
    for case in index.labeled:
        labeled_by_size[_size(case.image)].append(case.image)
    for case in index.unlabeled:
        same_size = labeled_by_size.get(_size(case.image))
        if not same_size:
            continue
        digest = _digest(memo, case.image, fresh)
        for labeled in same_size:
            if _digest(memo, labeled, fresh) == digest:
                raise _leak(case.image, labeled, "same SHA-256")
    labeled_by_grid: dict[str, list[Path]] = defaultdict(list)
    for case in index.labeled:
        labeled_by_grid[_memoised(memo, case.image, GRID, grid_signature, fresh)].append(case.image)
    labeled_voxels: dict[Path, str] = {}  # once per check, also without a writable memo
    for case in index.unlabeled:
        same_grid = labeled_by_grid.get(_memoised(memo, case.image, GRID, grid_signature, fresh))
        if not same_grid:
            continue
        try:
            voxels = _memoised(memo, case.image, VOXELS, voxel_digest, fresh)
        except DatasetError as exc:  # pretraining, the only reader of the pool, refuses it
            log.warning("leakage check skipped an unreadable unlabeled image: %s", exc)
            continue
        for labeled in same_grid:
            if labeled not in labeled_voxels:
                labeled_voxels[labeled] = _memoised(memo, labeled, VOXELS, voxel_digest, fresh)
            if labeled_voxels[labeled] == voxels:
                raise _leak(case.image, labeled, "the same voxels, saved again")
