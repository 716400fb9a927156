from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmark.data.reader import (
    Header,
    check_pair,
    discover,
    read_header,
    read_label,
    read_volume,
)
from benchmark.data.slicestore import (
    Preprocessing,
    build_slice_store,
    source_pixels,
    upsample_labels,
)
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


def test_a_slice_whose_organ_vanishes_at_the_slice_size_is_not_foreground(tiny_dataset, isolated):
    """Slice z = 0 of case_000 has one labeled pixel that the nearest resize to 32² drops: the
    methods would see it as all background, so no budget may draw it as a labeled slice."""
    from benchmark.data.slicestore import resize_slices

    label_path = tiny_dataset / "labelsTr" / "case_000.nii.gz"
    img = nib.load(label_path)
    label = np.asarray(img.dataobj).copy()
    dropped = next(
        (x, y)
        for x in range(label.shape[0])
        for y in range(label.shape[1])
        if not resize_slices(np.pad(np.ones((1, 1, 1)), ((x, 39 - x), (y, 35 - y), (0, 0))), 32,
                             True).any()
    )  # fmt: skip
    label[(*dropped, 0)] = 1
    nib.save(nib.Nifti1Image(label, img.affine), label_path)
    store = build_slice_store(discover(tiny_dataset).labeled, PREP, isolated, range(1, 14))
    row = store.rows_of_case("case_000")[0]
    assert not np.asarray(store.labels[row]).any()
    assert not store.foreground[row]
    assert store.foreground.sum() == 6 * 4


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


def _flipped_copy(case, dst: Path, axes: tuple[int, ...]) -> None:
    """The same case, image and label, stored flipped along `axes` (the affine to match)."""
    for src, folder, name in [
        (case.image, dst / "imagesTr", "a_0000.nii.gz"),
        (case.label, dst / "labelsTr", "a.nii.gz"),
    ]:
        img = nib.load(src)
        data = np.flip(np.asanyarray(img.dataobj), axes)
        affine = img.affine.copy()
        for ax in axes:
            affine[:3, 3] += affine[:3, ax] * (data.shape[ax] - 1)
            affine[:3, ax] *= -1
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, affine), folder / name)


@pytest.mark.parametrize("axes", [(0, 1), (0,)], ids=["LPS", "LAS"])
def test_orientation_invariance(tmp_path, isolated, axes):
    """One case stored RAS, LPS or LAS reads back as the same arrays, so it scores the same."""
    write_case(tmp_path / "ras" / "imagesTr", "a")
    ras = discover(tmp_path / "ras").labeled[0]
    _flipped_copy(ras, tmp_path / "other", axes)
    other = discover(tmp_path / "other").labeled[0]
    for a, b in [(ras.image, other.image), (ras.label, other.label)]:
        va, sa = read_volume(a)
        vb, sb = read_volume(b)
        np.testing.assert_array_equal(va, vb)
        assert sa == pytest.approx(sb)
    store = build_slice_store([other], PREP, isolated, known_labels=[1, 2, 3])
    ref = build_slice_store([ras], PREP, isolated, known_labels=[1, 2, 3])
    np.testing.assert_array_equal(store.labels, ref.labels)
    # a label stored in another axis order than its image is rejected, as nnU-Net compares
    with pytest.raises(DatasetError, match=r"a.nii.gz: label direction .* differs"):
        check_pair(ras, read_header(ras.image), read_header(other.label))


def test_geometry_tolerance_is_nnunets(tmp_path):
    """np.allclose at numpy's defaults (nnU-Net's check): an origin of -200 mm that differs by
    about one float32 step (1.5e-5 mm) passes, one that differs by 0.01 mm fails."""
    write_case(tmp_path / "imagesTr", "a")
    case = discover(tmp_path).labeled[0]
    header = read_header(case.image)

    def at(x: float):
        affine = np.diag([0.8, 0.8, 3.0, 1.0])
        affine[:3, 3] = [x, 10.0, 30.0]
        return dataclasses.replace(header, affine=tuple(map(tuple, affine)))

    check_pair(case, at(-200.0), at(-200.0 + 2e-5))
    with pytest.raises(DatasetError, match=r"a.nii.gz: label origin \(-199.99, 10.00, 30.00\)"):
        check_pair(case, at(-200.0), at(-199.99))


def test_an_oblique_direction_passes_by_what_it_moves_not_by_its_components(tmp_path):
    """A tilt of 1e-6 rad against an oblique image (a qform quaternion read against an sform
    differs that much) moves no voxel by a micrometre and passes; np.allclose's atol=1e-8 on
    the near-zero components refused it. A tilt of 1e-3 rad moves the far corner by about
    0.1 mm and is refused."""
    write_case(tmp_path / "imagesTr", "a")
    case = discover(tmp_path).labeled[0]
    header = read_header(case.image)

    def tilted(angle: float, shape=header.shape, spacing=(0.8, 0.8, 3.0)):
        c, s = np.cos(0.3), np.sin(0.3)  # oblique in-plane, then tilted out of plane
        in_plane = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        c, s = np.cos(angle), np.sin(angle)
        out_of_plane = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
        affine = np.eye(4)
        affine[:3, :3] = out_of_plane @ in_plane @ np.diag(spacing)
        return Header(shape, spacing, tuple(map(tuple, affine)))

    check_pair(case, tilted(0.0), tilted(1e-6))
    with pytest.raises(DatasetError, match=r"a.nii.gz: label direction .* moving voxels by up"):
        check_pair(case, tilted(0.0), tilted(1e-3))
    # A FLARE-sized volume: the far corner moves 5.3e-4 mm, under 0.001 of its 0.74 mm voxel.
    flare = {"shape": (512, 512, 100), "spacing": (0.74, 0.74, 2.5)}
    check_pair(case, tilted(0.0, **flare), tilted(1e-6, **flare))
    with pytest.raises(DatasetError, match=r"moving voxels by up to 0.53 mm"):
        check_pair(case, tilted(0.0, **flare), tilted(1e-3, **flare))


def test_a_label_damaged_after_preprocessing_names_the_file_when_scored(tiny_dataset):
    """The runner reads test labels again to score them: a decode error there is a
    DatasetError naming the file, like at preprocessing."""
    path = tiny_dataset / "labelsTr" / "case_000.nii.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 30])
    with pytest.raises(DatasetError, match=r"case_000.nii.gz: corrupt NIfTI data"):
        read_label(path, range(1, 14))


def test_a_flipped_bit_that_still_inflates_is_caught_by_the_gzip_checksum(tmp_path):
    """nibabel alone reads such a file without complaint: only the CRC-32 at the end of the
    gzip stream shows the damage, and the reader checks it."""
    path = tmp_path / "img_0000.nii.gz"
    data = np.random.default_rng(0).integers(-1000, 1000, (24, 20, 6)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    raw = path.read_bytes()
    silent = 0
    for pos in range(len(raw) // 3, 2 * len(raw) // 3, max(1, len(raw) // 60)):
        damaged = bytearray(raw)
        damaged[pos] ^= 0x10
        path.write_bytes(bytes(damaged))
        try:  # what nibabel by itself makes of it
            unchecked = np.asanyarray(nib.load(str(path)).dataobj)
            silent += not np.array_equal(unchecked, data)
        except Exception:
            pass
        with pytest.raises(DatasetError, match=r"img_0000\.nii\.gz: corrupt NIfTI data"):
            read_volume(path)
    assert silent > 0  # the case this check exists for does occur


@pytest.mark.parametrize(
    "size, shape", [((128, 128), (512, 512)), ((128, 128), (333, 401)), ((96, 96), (512, 498)),
                    ((64, 64), (50, 70)), ((100, 100), (517, 389))],
)  # fmt: skip
def test_source_pixels_are_the_pixels_upsampling_copies(size, shape):
    """Validation scores from the pixel each voxel copies: it must be upsampling's own."""
    slices = np.random.default_rng(0).integers(0, 14, (3, *size))
    copied = slices.reshape(3, -1)[:, source_pixels(size, shape)].transpose(1, 2, 0)
    assert np.array_equal(copied, upsample_labels(slices, shape))


def test_a_dataset_json_that_agrees_with_the_protocol_is_read_in_either_nnunet_format(tmp_path):
    """nnU-Net v2 (name → id) and v1 (id → name) labels; names spelled another way, or not
    used by the protocol, are allowed: only a name that is another id's organ is refused."""
    import json

    from benchmark.data.reader import check_dataset_json

    ours = {1: "liver", 2: "right_kidney", 13: "left_kidney"}
    for labels in (
        {"background": 0, "Liver": 1, "Right Kidney": 2, "kidney_L": 13, "tumour": 14},
        {"0": "background", "1": "liver", "2": "right_kidney", "13": "left_kidney"},
    ):
        (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels, "numTraining": 3}))
        check_dataset_json(tmp_path, ours, 3)
    swapped = {"labels": {"0": "background", "2": "left_kidney"}}
    (tmp_path / "dataset.json").write_text(json.dumps(swapped))
    with pytest.raises(DatasetError, match="label 2 is 'left_kidney'"):
        check_dataset_json(tmp_path, ours, 3)
    # KiTS23's nnU-Net conversion: regions beside plain ids; the regions are no labels of
    # their own, and a curated subset (numTraining above the cases found) is only a warning.
    kits = {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": kits, "numTraining": 489}))
    check_dataset_json(tmp_path, {1: "kidney", 2: "tumor", 3: "cyst"}, 3)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"kidney": {"id": 1}}}))
    with pytest.raises(DatasetError, match="label 'kidney': .* is not an id"):
        check_dataset_json(tmp_path, ours, 3)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not a readable JSON file"):
        check_dataset_json(tmp_path, ours, 3)
    (tmp_path / "dataset.json").unlink()
    check_dataset_json(tmp_path, ours, 3)  # no file, no check


def test_the_phantom_dataset_json_agrees_with_its_protocol(tmp_path):
    from benchmark.data.phantom import PhantomSettings, write_phantom
    from benchmark.data.reader import check_dataset_json
    from benchmark.protocol import load_protocol

    out = write_phantom(tmp_path / "p", PhantomSettings(cases=2, unlabeled=0, size=64), workers=1)
    check_dataset_json(out, load_protocol("phantom").labels, 2)


def test_pseudo_labels_in_labels_unlabeled_are_not_read_as_unlabeled_images(tiny_dataset):
    (tiny_dataset / "labelsUnlabeled").mkdir()
    index = discover(tiny_dataset)
    assert [c.case_id for c in index.unlabeled] == ["u_000", "u_001"]


def test_a_dataset_json_counting_other_cases_is_a_warning(tmp_path, caplog):
    """An AMOS-style subset (CT cases kept, dataset.json untouched) is legitimate; a partial
    copy may not be. Either way the run says so and goes on."""
    import json
    import logging

    from benchmark.data.reader import check_dataset_json

    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {}, "numTraining": 240}))
    with caplog.at_level(logging.WARNING, logger="labelbench.data"):
        check_dataset_json(tmp_path, {1: "liver"}, 200)
    assert "numTraining = 240, but 200 labeled cases found" in caplog.text
