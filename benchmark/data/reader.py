"""Read CT data sets in nnU-Net raw layout or FLARE22's own layout, validating as we go.

Volumes come back in one canonical orientation (nibabel's closest canonical, RAS+), as arrays
of shape (X, Y, Z) with Z the slice axis, and spacing in mm taken from the header.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.spatialimages import HeaderDataError

from benchmark.errors import DatasetError

IMAGE_DIRS = ("imagesTr", "images")
LABEL_DIRS = ("labelsTr", "labels")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class CaseFiles:
    """One case: its image file and, when labeled, its label file."""

    case_id: str
    image: Path
    label: Path | None = None


@dataclass(frozen=True)
class DatasetIndex:
    """The cases found under `root`. Case ids are sorted."""

    root: Path
    labeled: tuple[CaseFiles, ...]
    unlabeled: tuple[CaseFiles, ...]


@dataclass(frozen=True)
class Header:
    """Shape (X, Y, Z) in voxels and spacing (mm) of a volume in canonical orientation, and
    the affine of the file."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: tuple[tuple[float, ...], ...]
    """Voxel → world (mm) 4 × 4 affine as stored in the file (before reorientation)."""


def _strip_suffix(name: str) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and _strip_suffix(p.name) is not None)


def _image_case_id(path: Path) -> str:
    stem = _strip_suffix(path.name)
    match = _CHANNEL.match(stem or "")
    if not match:
        raise DatasetError(
            f"{path}: image files must be named <case>_0000.nii.gz (nnU-Net channel suffix)"
        )
    if match["channel"] != "0000":
        raise DatasetError(f"{path}: only single-channel CT (_0000) is supported")
    return match["case"]


def _first_dir(root: Path, names: Collection[str]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def discover(root: Path, unlabeled_dir: Path | None = None) -> DatasetIndex:
    """Find labeled and unlabeled cases under `root` (nnU-Net raw or FLARE22 layout).

    Labeled images live in `imagesTr/` or `images/` as `<case>_0000.nii.gz`, labels in
    `labelsTr/` or `labels/` as `<case>.nii.gz`; unlabeled images in every subfolder whose
    name contains "unlabeled" (`imagesUnlabeled/`, FLARE22's `FLARE22_UnlabeledCase1-1000/`),
    or in `unlabeled_dir`. Every image needs a label and every label an image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: data folder does not exist")
    images_dir = _first_dir(root, IMAGE_DIRS)
    labels_dir = _first_dir(root, LABEL_DIRS)
    if images_dir is None or labels_dir is None:
        raise DatasetError(
            f"{root}: expected nnU-Net raw layout (imagesTr/ and labelsTr/) or FLARE22 layout "
            f"(images/ and labels/)"
        )
    images = {_image_case_id(p): p for p in _nifti_files(images_dir)}
    labels = {_strip_suffix(p.name): p for p in _nifti_files(labels_dir)}
    if not images:
        raise DatasetError(f"{images_dir}: empty folder, no .nii.gz images found")
    for case_id, path in images.items():
        if case_id not in labels:
            raise DatasetError(
                f"{path}: image has no label (expected {labels_dir / (case_id + '.nii.gz')})"
            )
    for case_id, path in labels.items():
        if case_id not in images:
            raise DatasetError(f"{path}: label has no image (expected {case_id}_0000.nii.gz)")
    labeled = tuple(CaseFiles(c, images[c], labels[c]) for c in sorted(images))
    if unlabeled_dir is not None:
        if not Path(unlabeled_dir).is_dir():
            raise DatasetError(f"{unlabeled_dir}: unlabeled folder does not exist")
        folders = [Path(unlabeled_dir)]
    else:  # FLARE22 ships its pool as FLARE22_UnlabeledCase1-1000/, ...1001-2000/
        folders = sorted(p for p in root.iterdir() if p.is_dir() and "unlabeled" in p.name.lower())
    found: dict[str, Path] = {}
    for folder in folders:
        files = _nifti_files(folder)
        if not files:
            raise DatasetError(f"{folder}: empty folder, no .nii.gz images found")
        for path in files:
            case_id = _image_case_id(path)
            if case_id in found:
                raise DatasetError(f"{path}: unlabeled case '{case_id}' also in {found[case_id]}")
            found[case_id] = path
    unlabeled = tuple(CaseFiles(c, found[c]) for c in sorted(found))
    return DatasetIndex(root=root, labeled=labeled, unlabeled=unlabeled)


def _load(path: Path, verified: bool = False) -> nib.Nifti1Image:
    """The image (header, lazy voxels). `verified`: for a .nii.gz, decompress the whole file
    first, which checks the gzip stream's CRC-32 and length. nibabel reads exactly the voxel
    bytes and never reaches the stream's end where the check happens, so a flipped bit that
    still inflates would otherwise be read as voxels."""
    try:
        if verified and path.name.endswith(".gz"):
            with _decoding(path):
                raw = gzip.decompress(path.read_bytes())
            img = nib.Nifti1Image.from_bytes(raw)
        else:
            img = nib.load(str(path))
    except DatasetError:
        raise
    except Exception as exc:  # nibabel raises many types for non-NIfTI input
        raise DatasetError(f"{path}: not a readable NIfTI file ({_reason(exc)})") from None
    if len(img.shape) != 3 and not (len(img.shape) == 4 and img.shape[3] == 1):
        raise DatasetError(f"{path}: expected a 3D volume, got shape {img.shape}")
    return img


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


# What decoding a damaged file raises: EOFError for a truncated gzip stream, zlib.error for
# corrupt deflate blocks, OSError for a bad gzip header or CRC and for short reads, ValueError
# and HeaderDataError for impossible header fields. Each names the file as a DatasetError.
_DECODE_ERRORS = (OSError, EOFError, zlib.error, ValueError, HeaderDataError)


@contextmanager
def _decoding(path: Path) -> Iterator[None]:
    try:
        yield
    except _DECODE_ERRORS as exc:
        raise DatasetError(f"{path}: corrupt NIfTI data ({_reason(exc)})") from None


def _canonical(img: nib.Nifti1Image, path: Path) -> nib.Nifti1Image:
    if len(img.shape) == 4:
        img = img.slicer[..., 0]
    with _decoding(path):  # reorienting a non-RAS volume reads (decodes) its voxels
        return nib.as_closest_canonical(img)


def read_header(path: Path) -> Header:
    """Shape and spacing in canonical orientation, and the stored affine.

    Reads no voxel data when the file is stored in RAS+ order already.
    """
    raw = _load(path)
    img = _canonical(raw, path)
    zooms = img.header.get_zooms()[:3]
    return Header(
        tuple(int(s) for s in img.shape[:3]),
        tuple(float(z) for z in zooms),
        _as_tuple(raw.affine),
    )


def slice_order(affine: tuple[tuple[float, ...], ...]) -> tuple[int, bool]:
    """Where a file's third voxel axis (its slice axis) lies in the canonical (RAS+) volume,
    and whether its indices run against that axis: ``(axis, reversed)``.

    FLARE's z-range rule is defined in the file's own slice order; the volumes we score are
    canonical, so the order is kept from the header.
    """
    axis, flip = nib.io_orientation(np.asarray(affine))[2]
    return int(axis), bool(flip < 0)


def _as_tuple(affine: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in np.asarray(affine))


def read_volume(
    path: Path, dtype: type = np.float32
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Voxel array (X, Y, Z) in canonical orientation and its spacing (mm); a compressed
    file's checksum is verified."""
    img = _canonical(_load(path, verified=True), path)
    with _decoding(path):
        data = np.asanyarray(img.dataobj).astype(dtype, copy=False)
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return np.ascontiguousarray(data), spacing  # type: ignore[return-value]


# nnU-Net's tolerance: nnunetv2 2.8 (experiment_planning/verify_dataset_integrity.py,
# check_cases) compares spacing, affine, origin and direction of image and label with
# `np.allclose` at numpy's defaults, rtol=1e-5 and atol=1e-8. It fails a case on shape or
# spacing and only warns on origin or direction; we fail on all four, because the label's
# voxels are scored against the image's voxels one by one.
GEOMETRY_RTOL = 1e-5
GEOMETRY_ATOL = 1e-8


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, rtol=GEOMETRY_RTOL, atol=GEOMETRY_ATOL))


def _origin(affine: tuple[tuple[float, ...], ...]) -> np.ndarray:
    """World position (mm) of voxel (0, 0, 0)."""
    return np.asarray(affine)[:3, 3]


def _direction(affine: tuple[tuple[float, ...], ...]) -> np.ndarray:
    """Unit vectors of the voxel axes in world space (the affine's normalised columns)."""
    m = np.asarray(affine)[:3, :3]
    return m / np.linalg.norm(m, axis=0)


def _show(field: str, affine: tuple[tuple[float, ...], ...], matrix: bool) -> str:
    if field == "origin":
        return "(" + ", ".join(f"{v:.2f}" for v in _origin(affine)) + ") mm"
    codes = "".join(nib.aff2axcodes(np.asarray(affine)))
    return f"{codes} {np.round(_direction(affine), 4).tolist()}" if matrix else codes


def check_pair(case: CaseFiles, image: Header, label: Header) -> None:
    """Image and label must lie on one voxel grid: the same shape, spacing, direction and
    origin, within nnU-Net's tolerance (`GEOMETRY_RTOL`, `GEOMETRY_ATOL`).

    Direction and origin are those of the stored affines, as nnU-Net compares them: in
    canonical orientation the far corner of a flipped axis becomes the origin, and float32
    header rounding would then differ by more than the tolerance. So a label must also be
    stored in its image's axis order.
    """
    assert case.label is not None
    check_same_grid(case.label, label, case.image, image)


def check_same_grid(
    path: Path, header: Header, reference: Path, ref: Header, what: str = "label",
    of: str = "image",
) -> None:  # fmt: skip
    """`path` (a `what`) must lie on the voxel grid of `reference` (an `of`); `DatasetError`
    naming both files otherwise. See `check_pair` for what is compared."""
    if ref.shape != header.shape:
        raise DatasetError(
            f"{path}: {what} shape {header.shape} differs from {of} shape {ref.shape} ({reference})"
        )
    if not _close(np.array(ref.spacing), np.array(header.spacing)):
        raise DatasetError(
            f"{path}: {what} spacing {header.spacing} mm differs from {of} spacing "
            f"{ref.spacing} mm ({reference})"
        )
    for field, part in (("direction", _direction), ("origin", _origin)):
        if not _close(part(ref.affine), part(header.affine)):
            # Axis codes (RAS, LPS, ...) say it when they differ; an oblique tilt needs the
            # matrix.
            matrix = nib.aff2axcodes(np.asarray(ref.affine)) == nib.aff2axcodes(
                np.asarray(header.affine)
            )
            raise DatasetError(
                f"{path}: {what} {field} {_show(field, header.affine, matrix)} differs "
                f"from {of} {field} {_show(field, ref.affine, matrix)} ({reference}); "
                f"the {what} must be on the {of}'s voxel grid"
            )


def read_label(path: Path, known: Collection[int]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Label volume (X, Y, Z) as uint8; every id must be 0 or one of `known`."""
    data, spacing = read_volume(path, dtype=np.float32)
    ids = np.unique(data)
    if not np.all(ids == np.round(ids)):
        raise DatasetError(f"{path}: label volume holds non-integer values")
    unknown = sorted(int(i) for i in ids if int(i) != 0 and int(i) not in known)
    if unknown:
        raise DatasetError(
            f"{path}: label ids {unknown} are not in the protocol's labels "
            f"({min(known)}..{max(known)})"
        )
    return data.astype(np.uint8), spacing
