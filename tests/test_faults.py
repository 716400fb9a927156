"""The fault corpus: inputs a new user may hand `bench run`, each built here in a FLARE22-layout
folder of tiny volumes.

Every bad input gives exit code 2 and one error line that names the file at fault, and writes
nothing: the results store holds the same rows before and after. None is scored.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.errors import DatasetError
from tests.conftest import tiny_protocol_text, write_case
from tests.faults import (
    BAD,
    SPACING,
    bench,
    diag,
    error_line,
    image,
    label,
    resave,
    stored_rows,
)

# --------------------------------------------------------------------------- data faults
# Each fault damages the folder and returns what the error line must contain: the file's
# path first, then the words that say what is wrong.


def origin_shifted(root: Path) -> list[str]:
    affine = diag(*SPACING)
    affine[0, 3] += 50.0
    resave(label(root), affine=affine)
    return [str(label(root)), str(image(root)), "origin (50.00, 0.00, 0.00) mm"]


def x_axis_flipped(root: Path) -> list[str]:
    resave(label(root), affine=diag(-SPACING[0], SPACING[1], SPACING[2]))
    return [str(label(root)), str(image(root)), "direction LAS differs from image direction RAS"]


def nan_in_image(root: Path) -> list[str]:
    data = np.asanyarray(nib.load(image(root)).dataobj).astype(np.float32)
    data[5:8, 5, 2] = np.nan
    resave(image(root), data)
    return [str(image(root)), "3 voxels are not finite (3 NaN, 0 ±Inf)", "[preprocess]"]


def inf_in_image(root: Path) -> list[str]:
    data = np.asanyarray(nib.load(image(root)).dataobj).astype(np.float32)
    data[1, 1, 1], data[2, 2, 2] = np.inf, -np.inf
    resave(image(root), data)
    return [str(image(root)), "2 voxels are not finite (0 NaN, 2 ±Inf)"]


def truncated_image(root: Path) -> list[str]:
    raw = image(root).read_bytes()
    image(root).write_bytes(raw[: len(raw) // 2])
    return [str(image(root)), "corrupt NIfTI data"]


def truncated_lps_label(root: Path) -> list[str]:
    # Stored LPS like most scanner exports: reorienting it reads the voxels (once `Aborted.`).
    lps = diag(-SPACING[0], -SPACING[1], SPACING[2])
    resave(image(root), np.asanyarray(nib.load(image(root)).dataobj)[::-1, ::-1], lps)
    resave(label(root), np.asanyarray(nib.load(label(root)).dataobj)[::-1, ::-1], lps)
    raw = label(root).read_bytes()
    label(root).write_bytes(raw[: len(raw) - 40])
    return [str(label(root)), "corrupt NIfTI data"]


def truncated_in_header(root: Path) -> list[str]:
    image(root).write_bytes(image(root).read_bytes()[:60])
    return [str(image(root)), "not a readable NIfTI file"]


def corrupt_deflate(root: Path) -> list[str]:
    raw = bytearray(image(root).read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 16):
        raw[i] ^= 0x5A
    image(root).write_bytes(bytes(raw))
    return [str(image(root)), "corrupt NIfTI data"]


def bad_header(root: Path) -> list[str]:
    image(root).write_bytes(gzip.compress(b"\x07" * 2000))
    return [str(image(root)), "not a readable NIfTI file"]


def not_nifti(root: Path) -> list[str]:
    label(root).write_bytes(b"hello")
    return [str(label(root)), "not a readable NIfTI file"]


def shape_mismatch(root: Path) -> list[str]:
    data = np.zeros((40, 36, 7), np.uint8)
    resave(label(root), data)
    return [str(label(root)), str(image(root)), "label shape (40, 36, 7) differs"]


def spacing_mismatch(root: Path) -> list[str]:
    resave(label(root), affine=diag(0.8, 0.8, 5.0))
    return [str(label(root)), str(image(root)), "label spacing"]


def unknown_label_ids(root: Path) -> list[str]:
    write_case(root / "images", BAD, label_ids=(1, 99), label_folder=root / "labels")
    return [str(label(root)), "label ids [99]"]


def float_labels(root: Path) -> list[str]:
    data = np.asanyarray(nib.load(label(root)).dataobj).astype(np.float32)
    data[data == 1] = 1.5
    resave(label(root), data)
    return [str(label(root)), "non-integer values"]


def missing_label(root: Path) -> list[str]:
    label(root).unlink()
    return [str(image(root)), "image has no label"]


def empty_folder(root: Path) -> list[str]:
    for path in [*(root / "images").iterdir(), *(root / "labels").iterdir()]:
        path.unlink()
    return [str(root / "images"), "empty folder"]


def pixdim_disagrees_with_affine(root: Path) -> list[str]:
    # Stored RAS: nibabel would keep pixdim (1 mm) where the affine says 0.8 × 0.8 × 3 mm.
    img = nib.load(label(root))
    img.header.set_zooms((1.0, 1.0, 1.0))
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header), label(root))
    return [str(label(root)), "voxel size (pixdim) (1, 1, 1) mm differs from the affine's"]


def no_orientation_codes(root: Path) -> list[str]:
    # Neither qform nor sform: nibabel mirrors x (Analyze), ITK does not.
    img = nib.load(image(root))
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), None, img.header)
    out.header.set_qform(None, code=0)
    out.header.set_sform(None, code=0)
    nib.save(out, image(root))
    assert nib.load(image(root)).header["qform_code"] == 0
    return [str(image(root)), "orientation unknown (qform_code = sform_code = 0)"]


def raw_values_not_hu(root: Path) -> list[str]:
    # Scanner values stored without their -1024 intercept: nothing below 0.
    data = np.asanyarray(nib.load(image(root)).dataobj).astype(np.int16)
    resave(image(root), data - data.min() + 24)
    return [str(image(root)), "no voxel below 0 (lowest 24)", "Hounsfield"]


def second_label_file(root: Path) -> list[str]:
    # An edited copy saved as .nii beside the .nii.gz: which one is scored?
    twin = root / "labels" / f"{BAD}.nii"
    nib.save(nib.load(label(root)), twin)
    return [str(label(root)), f"a second label file of case '{BAD}'", str(twin)]


def _dataset_json(root: Path, **fields) -> Path:
    labels = {"background": 0, "liver": 1, "right_kidney": 2, "spleen": 3, "left_kidney": 13}
    meta = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 6,
            "file_ending": ".nii.gz", **fields}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(meta))
    return root / "dataset.json"


def dataset_json_swaps_the_kidneys(root: Path) -> list[str]:
    path = _dataset_json(root, labels={"background": 0, "Left Kidney": 2, "right_kidney": 13})
    return [str(path), "label 2 is 'Left Kidney'", "'right_kidney'", "as id 13"]


def dataset_json_is_not_nifti(root: Path) -> list[str]:
    path = _dataset_json(root, file_ending=".mha")
    return [str(path), "file_ending '.mha': only NIfTI"]


def broken_label_link(root: Path) -> list[str]:
    label(root).unlink()
    label(root).symlink_to(root / "elsewhere" / "gone.nii.gz")
    return [str(label(root)), "a broken symbolic link", "gone.nii.gz"]


DATA_FAULTS: list[Callable[[Path], list[str]]] = [
    broken_label_link,
    dataset_json_swaps_the_kidneys,
    dataset_json_is_not_nifti,
    pixdim_disagrees_with_affine,
    no_orientation_codes,
    raw_values_not_hu,
    second_label_file,
    origin_shifted,
    x_axis_flipped,
    nan_in_image,
    inf_in_image,
    truncated_image,
    truncated_lps_label,
    truncated_in_header,
    corrupt_deflate,
    bad_header,
    not_nifti,
    shape_mismatch,
    spacing_mismatch,
    unknown_label_ids,
    float_labels,
    missing_label,
    empty_folder,
]


@pytest.mark.parametrize("fault", DATA_FAULTS, ids=lambda f: f.__name__)
def test_bad_data_is_one_line_exit_2_and_nothing_written(flare, results, fault):
    expected = fault(flare)
    before = stored_rows(results)
    r = bench(flare, results)
    assert r.exit_code == 2, r.output
    line = error_line(r)
    for text in expected:
        assert text in line
    assert stored_rows(results) == before


# --------------------------------------------------------------------------- option faults


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("iterations=-5", "--set iterations=-5: iterations must be > 0"),
        ("batch_size=0", "--set batch_size=0: batch_size must be > 0"),
        ("lr=nan", "--set lr=nan: lr must be a finite number"),
    ],
)
def test_out_of_range_config_is_rejected_before_any_work(flare, results, isolated, option, message):
    before = stored_rows(results)
    r = bench(flare, results, "--set", option)
    assert r.exit_code == 2 and message in error_line(r)
    assert stored_rows(results) == before
    assert not (isolated / "slices").exists()  # no data was read


def flip_pages(db: Path) -> None:
    """Damage the b-tree pages after the first (the schema) so that queries hit them."""
    raw = bytearray(db.read_bytes())
    for i in range(4096, len(raw)):
        raw[i] ^= 0xFF
    db.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage", [flip_pages, lambda db: db.write_bytes(os.urandom(8192))], ids=["flipped", "random"]
)
def test_damaged_results_store_says_what_to_do(flare, results, isolated, damage):
    db = results / "labelbench.sqlite"
    damage(db)
    before = db.read_bytes()
    r = bench(flare, results)
    assert r.exit_code == 2
    line = error_line(r)
    assert str(db) in line and "damaged" in line and "move it away" in line
    assert db.read_bytes() == before
    assert not (isolated / "slices").exists()
    report = CliRunner().invoke(app, ["report", "-p", "tinypath", "--results", str(results)])
    assert report.exit_code == 2 and str(db) in error_line(report)


def test_results_path_that_is_a_file_fails_before_any_work(flare, tmp_path, isolated):
    file = tmp_path / "runs.txt"
    file.write_text("notes\n")
    for results, message in [
        (file, "the results path is a file"),
        (file / "runs", f"cannot create the results folder, {file} is a file"),
    ]:
        r = bench(flare, results)
        assert r.exit_code == 2
        line = error_line(r)
        assert str(results) in line and message in line
    assert file.read_text() == "notes\n"
    assert not (isolated / "slices").exists()


def test_missing_protocol_file_says_so(flare, results, tmp_path):
    before = stored_rows(results)
    missing = tmp_path / "path" / "that" / "does" / "not" / "exist.toml"
    r = bench(flare, results, protocol=str(missing))
    assert r.exit_code == 2
    assert f"{missing}: protocol file does not exist" in error_line(r)
    assert stored_rows(results) == before


# --------------------------------------------------------------------------- what still runs


def test_nonfinite_window_min_is_a_protocol_choice(flare, tmp_path):
    """`nonfinite = "window_min"` reads the NaN image, with the window's low end in place of
    NaN; the choice changes the protocol's hash, which every run records."""
    from benchmark.data.context import load_data
    from benchmark.progress import Progress
    from benchmark.protocol import load_protocol

    nan_in_image(flare)
    text = tiny_protocol_text("path")
    assert "[preprocess]\n" in text
    path = tmp_path / "window_min.toml"
    path.write_text(text.replace("[preprocess]\n", '[preprocess]\nnonfinite = "window_min"\n'))
    protocol = load_protocol(str(path))
    assert protocol.nonfinite == "window_min"
    default = load_protocol("tinypath")
    assert default.nonfinite == "error" and default.hash != protocol.hash
    ctx = load_data(protocol, flare, Progress(quiet=True))
    rows = ctx.store.rows_of_case(BAD)
    assert np.isfinite(np.asarray(ctx.store.images[rows], dtype=np.float32)).all()

    # Raw values with a NaN: the replacement (the window's low end, below 0) does not make
    # them pass for HU.
    data = np.asanyarray(nib.load(image(flare)).dataobj).astype(np.float32)
    data = data - np.nanmin(data) + 24
    resave(image(flare), data)
    with pytest.raises(DatasetError, match="no voxel below 0"):
        load_data(protocol, flare, Progress(quiet=True))

    path.write_text(text.replace("[preprocess]\n", '[preprocess]\nnonfinite = "zero"\n'))
    with pytest.raises(Exception, match="preprocess.nonfinite must be"):
        load_protocol(str(path))


def test_report_files_get_the_usual_permissions(tmp_path):
    from benchmark.report import write_report
    from tests.test_report import synthetic

    old = os.umask(0o022)
    try:
        write_report("tiny", *synthetic(), tmp_path / "report")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "report").iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes
