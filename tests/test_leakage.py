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


@pytest.mark.parametrize("how", ["uncompressed", "float32 header", "reoriented"])
def test_a_labeled_image_saved_again_is_caught_by_its_voxels(tiny_dataset, how):
    import nibabel as nib
    import numpy as np

    labeled = tiny_dataset / "imagesTr" / "case_004_0000.nii.gz"
    img = nib.load(labeled)
    suffix = ".nii" if how == "uncompressed" else ".nii.gz"
    copy = tiny_dataset / "imagesUnlabeled" / f"u_again_0000{suffix}"
    if how == "float32 header":
        img = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
        img.header.set_xyzt_units("mm")
    if how == "reoriented":
        img = img.as_reoriented(np.array([[0, -1], [1, -1], [2, 1]]))  # stored LPS
    nib.save(img, copy)
    assert copy.stat().st_size != labeled.stat().st_size  # not a byte copy
    computed: list[tuple[str, str]] = []

    class Counting(DigestMemo):
        def value(self, path, kind, compute, fresh=False):
            computed.append((Path(path).name, kind))
            return super().value(path, kind, compute, fresh)

    with pytest.raises(DatasetError) as caught:
        check_leakage(discover(tiny_dataset), Counting(None))
    line = str(caught.value)
    assert str(copy) in line and str(labeled) in line and "the same voxels, saved again" in line
    assert any(n == copy.name and k.startswith("voxels-sha256:") for n, k in computed)


def test_voxels_are_decoded_only_where_shape_and_voxel_size_match(tmp_path):
    """Headers alone rule out unlabeled images of another grid; the one unlabeled image on a
    labeled image's grid is decoded, with the labeled images of that grid."""
    from tests.conftest import write_case

    root = tmp_path / "Dataset002_Grids"
    for i in range(3):
        write_case(root / "imagesTr", f"case_{i:03d}", spacing=(0.8, 0.8, 3.0 + i), seed=i)
    write_case(root / "imagesUnlabeled", "u_000", spacing=(0.7, 0.7, 3.0), seed=100,
               with_label=False)  # fmt: skip
    write_case(root / "imagesUnlabeled", "u_001", spacing=(0.8, 0.8, 4.0), seed=101,
               with_label=False)  # fmt: skip
    computed: list[tuple[str, str]] = []

    class Counting(DigestMemo):
        def value(self, path, kind, compute, fresh=False):
            computed.append((Path(path).name, kind))
            return super().value(path, kind, compute, fresh)

    check_leakage(discover(root), Counting(None))  # no copy: passes
    decoded = {name for name, kind in computed if kind.startswith("voxels-sha256:")}
    assert decoded == {"u_001_0000.nii.gz", "case_001_0000.nii.gz"}
    assert sum(kind.startswith("grid:") for _, kind in computed) == 5


def test_memoised_values_are_keyed_by_the_code_that_made_them(tiny_dataset, tmp_path, monkeypatch):
    from benchmark.data import leakage

    computed: list[str] = []

    class Counting(DigestMemo):
        def value(self, path, kind, compute, fresh=False):
            def counted(p):
                computed.append(kind)
                return compute(p)

            return super().value(path, kind, counted, fresh)

    memo_file = tmp_path / "memo.sqlite"
    monkeypatch.setattr(leakage, "RACY_NS", 0, raising=False)
    monkeypatch.setattr("benchmark.data.digests.RACY_NS", 0)
    check_leakage(discover(tiny_dataset), Counting(memo_file))
    first = len(computed)
    assert first > 0
    check_leakage(discover(tiny_dataset), Counting(memo_file))
    assert len(computed) == first  # warm: nothing computed again
    monkeypatch.setattr(leakage, "_code", lambda: "other-reader")
    check_leakage(discover(tiny_dataset), Counting(memo_file))
    assert len(computed) == 2 * first  # other code: every value computed again


def test_an_unreadable_unlabeled_image_is_left_to_pretraining(tiny_dataset, caplog):
    import nibabel as nib
    import numpy as np

    source = tiny_dataset / "imagesUnlabeled" / "u_000_0000.nii.gz"
    img = nib.load(source)
    header = img.header.copy()
    header.set_qform(None, code=0)
    header.set_sform(None, code=0)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, header), source)
    assert int(nib.load(source).header["sform_code"]) == 0  # no orientation: the reader
    # refuses the file, and the guard leaves it to pretraining
    check_leakage(discover(tiny_dataset), DigestMemo(None))
    assert "skipped an unreadable unlabeled image" in caplog.text
