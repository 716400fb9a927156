"""The leakage guard: no labeled image may also sit in the unlabeled pool.

Pretraining sees the unlabeled pool; a labeled case copied into it (a test case above all)
would let a method learn from the images it is scored on. Images are compared by the SHA-256
of every byte (`benchmark.data.digests`, memoised like the slice-store keys), and only where
an unlabeled and a labeled image have the same size, so a data set without copies costs one
`stat` per file. A copy saved again (other compression, other header) is not caught.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from benchmark.data.digests import DigestMemo
from benchmark.data.reader import DatasetIndex
from benchmark.errors import DatasetError


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _digest(memo: DigestMemo, path: Path, fresh: bool) -> str:
    try:
        return memo.digest(path, fresh)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def check_leakage(index: DatasetIndex, memo: DigestMemo, fresh: bool = False) -> None:
    """Raise `DatasetError` naming both files when an unlabeled image has the same bytes as a
    labeled image. `fresh` hashes again instead of trusting the memo (`--verify`)."""
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
                raise DatasetError(
                    f"{case.image}: unlabeled image is a copy of the labeled image {labeled} "
                    f"(same SHA-256); remove it from the unlabeled pool, pretraining must not "
                    f"see labeled cases"
                )
