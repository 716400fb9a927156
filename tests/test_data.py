from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from benchmark.data.reader import discover, read_header, read_label
from benchmark.data.slicestore import Preprocessing, build_slice_store, upsample_labels
from benchmark.errors import DatasetError
from tests.conftest import write_case

PREP = Preprocessing((-160.0, 240.0), 32)


def test_discover_nnunet_layout(tiny_dataset):
    index = discover(tiny_dataset)
    assert [c.case_id for c in index.labeled] == [f"case_{i:03d}" for i in range(6)]
    assert [c.case_id for c in index.unlabeled] == ["u_000", "u_001"]
    assert all(c.label is not None for c in index.labeled)


def test_discover_flare22_layout(tmp_path):
    root = tmp_path / "FLARE22_LabeledCase50"
    write_case(root / "images", "FLARE22_Tr_0001", label_folder=root / "labels")
    write_case(tmp_path / "FLARE22_LabeledCase50" / "unlabeled", "Case_00001", with_label=False)
    index = discover(root)
    assert index.labeled[0].case_id == "FLARE22_Tr_0001"
    assert index.labeled[0].label.name == "FLARE22_Tr_0001.nii.gz"
    assert index.unlabeled[0].case_id == "Case_00001"


def test_canonical_orientation_and_spacing(tmp_path):
    """A volume stored flipped (LPS-like affine) reads back in RAS order with header spacing."""
    data = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)
    affine = np.diag([-0.7, -0.7, 2.5, 1.0])
    path = tmp_path / "x_0000.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    header = read_header(path)
    assert header.shape == (4, 5, 3) and header.spacing == pytest.approx((0.7, 0.7, 2.5))
    from benchmark.data.reader import read_volume

    vol, _ = read_volume(path)
    np.testing.assert_array_equal(vol, data[::-1, ::-1, :])


def test_slice_store_roundtrip_and_cache(tiny_dataset, isolated):
    index = discover(tiny_dataset)
    store = build_slice_store(index.labeled, PREP, isolated, known_labels=range(1, 14))
    assert store.images.shape == (36, 32, 32) and store.labels.shape == (36, 32, 32)
    assert store.images.dtype == np.float16 and 0 <= store.images.min() <= store.images.max() <= 1
    assert store.foreground.sum() == 6 * 4  # boxes span z = 1..4 of 6 slices
    assert set(np.unique(store.labels)) == {0, 1, 2, 3}
    again = build_slice_store(index.labeled, PREP, isolated, known_labels=range(1, 14))
    assert again.root == store.root
    assert not [p for p in store.root.parent.iterdir() if p.name.startswith(".")]
    # labels survive the trip to slice size and back (boxes are wide enough for nearest)
    rows = store.rows_of_case("case_000")
    back = upsample_labels(np.asarray(store.labels[rows]), (40, 36))
    gt, _ = read_label(index.labeled[0].label, range(1, 14))
    assert back.shape == gt.shape and (back == gt).mean() > 0.9


def test_store_key_changes_with_content(tiny_dataset, isolated):
    index = discover(tiny_dataset)
    a = build_slice_store(index.labeled[:2], PREP, isolated, known_labels=range(1, 14))
    write_case(tiny_dataset / "imagesTr", "case_000", seed=42)
    b = build_slice_store(
        discover(tiny_dataset).labeled[:2], PREP, isolated, known_labels=range(1, 14)
    )
    assert a.key != b.key


def test_bad_inputs_name_the_file(tmp_path, isolated):
    root = tmp_path / "ds"
    write_case(root / "imagesTr", "a")
    # image without label
    write_case(root / "imagesTr", "b", with_label=False)
    with pytest.raises(DatasetError, match=r"b_0000.nii.gz: image has no label"):
        discover(root)
    (root / "imagesTr" / "b_0000.nii.gz").unlink()
    # not a NIfTI
    (root / "labelsTr" / "a.nii.gz").write_bytes(b"hello")
    with pytest.raises(DatasetError, match=r"a.nii.gz: not a readable NIfTI"):
        build_slice_store(discover(root).labeled, PREP, isolated, known_labels=[1, 2, 3])
    # corrupt gzip: a truncated file
    write_case(root / "imagesTr", "a")
    raw = (root / "imagesTr" / "a_0000.nii.gz").read_bytes()
    (root / "imagesTr" / "a_0000.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=r"a_0000.nii.gz"):
        build_slice_store(discover(root).labeled, PREP, isolated, known_labels=[1, 2, 3])
    # shape mismatch
    write_case(root / "imagesTr", "a")
    write_case(tmp_path / "other" / "imagesTr", "a", shape=(40, 36, 7))
    (root / "labelsTr" / "a.nii.gz").write_bytes(
        (tmp_path / "other" / "labelsTr" / "a.nii.gz").read_bytes()
    )
    with pytest.raises(DatasetError, match=r"a.nii.gz: label shape .* differs"):
        build_slice_store(discover(root).labeled, PREP, isolated, known_labels=[1, 2, 3])
    # spacing mismatch
    write_case(tmp_path / "sp" / "imagesTr", "a", spacing=(0.8, 0.8, 5.0))
    (root / "labelsTr" / "a.nii.gz").write_bytes(
        (tmp_path / "sp" / "labelsTr" / "a.nii.gz").read_bytes()
    )
    with pytest.raises(DatasetError, match=r"label spacing .* differs"):
        build_slice_store(discover(root).labeled, PREP, isolated, known_labels=[1, 2, 3])
    # unknown label ids
    write_case(root / "imagesTr", "a", label_ids=(1, 2, 40))
    with pytest.raises(DatasetError, match=r"a.nii.gz: label ids \[40\]"):
        build_slice_store(discover(root).labeled, PREP, isolated, known_labels=[1, 2, 3])
    # nothing half-built in the cache
    assert not list((isolated / "slices").glob(".*"))


def test_empty_folder(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    with pytest.raises(DatasetError, match="imagesTr: empty folder"):
        discover(tmp_path)
    with pytest.raises(DatasetError, match="expected nnU-Net raw layout"):
        discover(tmp_path / "imagesTr")


def test_gzip_is_really_gzip(tiny_dataset):
    path = next((tiny_dataset / "imagesTr").iterdir())
    with gzip.open(path) as f:
        assert len(f.read(348)) == 348
