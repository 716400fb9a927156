"""The leakage guard: a labeled image copied into the unlabeled pool stops the run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmark.data.digests import DigestMemo
from benchmark.data.leakage import check_leakage
from benchmark.data.reader import discover
from benchmark.errors import DatasetError
from tests.faults import bench, error_line, stored_rows


def _leak(root: Path) -> tuple[Path, Path]:
    labeled = root / "imagesTr" / "case_004_0000.nii.gz"
    copy = root / "imagesUnlabeled" / "u_leak_0000.nii.gz"
    shutil.copyfile(labeled, copy)
    return labeled, copy


def test_a_labeled_case_in_the_unlabeled_pool_is_one_line_exit_2_nothing_written(
    tiny_dataset,
    results,
):
    labeled, copy = _leak(tiny_dataset)
    before = stored_rows(results)
    r = bench(tiny_dataset, results)
    assert r.exit_code == 2, r.output
    line = error_line(r)
    assert str(copy) in line and str(labeled) in line and "copy of the labeled image" in line
    assert stored_rows(results) == before


def test_only_files_with_a_same_size_partner_are_hashed(tiny_dataset):
    hashed: list[str] = []

    class Counting(DigestMemo):
        def digest(self, path: Path, fresh: bool = False) -> str:
            hashed.append(Path(path).name)
            return super().digest(path, fresh)

    sizes = {p.stat().st_size for p in (tiny_dataset / "imagesTr").iterdir()}
    assert not any(p.stat().st_size in sizes for p in (tiny_dataset / "imagesUnlabeled").iterdir())
    check_leakage(discover(tiny_dataset), Counting(None))  # a clean data set: stat only
    assert hashed == []
    _leak(tiny_dataset)
    with pytest.raises(DatasetError, match="u_leak_0000.nii.gz: unlabeled image is a copy of"):
        check_leakage(discover(tiny_dataset), Counting(None))
    assert sorted(hashed) == ["case_004_0000.nii.gz", "u_leak_0000.nii.gz"]
