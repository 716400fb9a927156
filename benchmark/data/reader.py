"""Read CT data sets in nnU-Net raw layout or FLARE22's own layout, validating as we go.

Volumes come back in one canonical orientation (nibabel's closest canonical, RAS+), as arrays
of shape (X, Y, Z) with Z the slice axis, and spacing in mm taken from the header.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
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
log = logging.getLogger("labelbench.data")


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
    files = sorted(p for p in folder.iterdir() if _strip_suffix(p.name) is not None)
    for path in files:
        if path.is_symlink() and not path.exists():
            raise DatasetError(f"{path}: a broken symbolic link (to {os.readlink(path)})")
    return [p for p in files if p.is_file()]


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
    images = _by_case(_nifti_files(images_dir), _image_case_id, "image")
    labels = _by_case(_nifti_files(labels_dir), lambda p: _strip_suffix(p.name) or "", "label")
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
        folders = sorted(
            p
            for p in root.iterdir()
            if p.is_dir()
            and "unlabeled" in p.name.lower()
            and not p.name.lower().startswith("labels")  # labelsUnlabeled/: pseudo-labels
        )
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


def _by_case(files: list[Path], case_of: Callable[[Path], str], what: str) -> dict[str, Path]:
    """Files by case id; a second file of one case (`c0.nii` beside `c0.nii.gz`) is an error,
    never a silent choice between them."""
    out: dict[str, Path] = {}
    for path in files:
        case_id = case_of(path)
        if case_id in out:
            raise DatasetError(f"{path}: a second {what} file of case '{case_id}' ({out[case_id]})")
        out[case_id] = path
    return out


def check_dataset_json(root: Path, labels: Mapping[int, str], n_labeled: int) -> None:
    """An nnU-Net `dataset.json` beside the data must agree with what is read and how it is
    scored: its `file_ending` is NIfTI, and no label it names is another id's organ in the
    protocol (a left/right or other swap would score every organ under a wrong name). Names
    are compared without case, spaces or underscores; a name the protocol does not use is
    allowed (data sets spell organs their own way), and region-based entries (a name for a
    list of ids) are not labels of their own. A `numTraining` other than the number of
    labeled cases found is a warning (a partial copy, or a curated subset). No file, no
    check."""
    path = root / "dataset.json"
    if not path.is_file():
        return
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable JSON file ({_reason(exc)})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    ending = meta.get("file_ending")
    if ending is not None and ending not in NIFTI_SUFFIXES:
        raise DatasetError(f"{path}: file_ending {ending!r}: only NIfTI (.nii.gz, .nii) is read")
    n = meta.get("numTraining")
    if n is not None and n != n_labeled:  # a curated subset is legitimate: said, not refused
        log.warning(
            "%s: numTraining = %s, but %s found in %s (an incomplete copy, or a subset?)",
            path, n, plural(n_labeled, "labeled case"), root,
        )  # fmt: skip
    declared = _declared_labels(meta.get("labels", {}), path)
    ours = {_norm(name): i for i, name in labels.items()}
    for i, name in sorted(declared.items()):
        other = ours.get(_norm(name))
        if i != 0 and other is not None and other != i:
            raise DatasetError(
                f"{path}: label {i} is {name!r}, but the protocol scores id {i} as "
                f"{labels.get(i, '(none)')!r} and {name!r} as id {other}"
            )


def _declared_labels(raw: object, path: Path) -> dict[int, str]:
    """id → name from nnU-Net v2's `{"name": id}` or v1's `{"id": "name"}` labels."""
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: 'labels' must be an object")
    out: dict[int, str] = {}
    for key, value in raw.items():
        if isinstance(value, int) and not isinstance(value, bool):
            out[value] = str(key)
        elif isinstance(value, str) and str(key).isdigit():
            out[int(key)] = value
        elif isinstance(value, list):  # a region (nnU-Net v2): a union of ids, not one label
            continue
        else:
            raise DatasetError(f"{path}: label {key!r}: {value!r} is not an id")
    return out


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


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
    _check_geometry(img, path)
    return img


# How far the header's voxel size (pixdim) may be from the affine's: float32 storage and a
# qform's quaternion round trip stay below 1e-6 relative; a real disagreement is a wrong
# header (one of the two was edited), and which one a reader believes decides every distance.
SPACING_RTOL = 1e-4


def _check_geometry(img: nib.Nifti1Image, path: Path) -> None:
    """The header must say where the voxels are, one way: a qform or sform (with neither,
    nibabel assumes Analyze's mirrored x axis and ITK, hence nnU-Net, does not, so left and
    right would depend on the reader), and a voxel size (pixdim) that is finite, positive and
    equal to the affine's (FLARE's scoring reads pixdim, the reorientation reads the
    affine)."""
    header = img.header
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        raise DatasetError(
            f"{path}: orientation unknown (qform_code = sform_code = 0), so left and right "
            f"are ambiguous; set the qform or sform"
        )
    zooms = np.asarray(header.get_zooms()[:3], dtype=float)
    if not np.all(np.isfinite(zooms) & (zooms > 0)):
        raise DatasetError(f"{path}: voxel size (pixdim) {_mm(zooms)} is not finite and positive")
    voxel = np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0)
    if not np.allclose(zooms, voxel, rtol=SPACING_RTOL, atol=0):
        raise DatasetError(
            f"{path}: header voxel size (pixdim) {_mm(zooms)} differs from the affine's "
            f"{_mm(voxel)}; fix the header so both give the spacing"
        )


def _mm(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ") mm"


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

    Reads no voxel data.
    """
    raw = _load(path)
    return Header(_canonical_shape(raw), _spacing(raw), _as_tuple(raw.affine))


def _canonical_axes(affine) -> np.ndarray:
    """For each of a file's stored axes, the canonical (RAS+) axis it becomes."""
    return nib.io_orientation(np.asarray(affine))[:, 0].astype(int)


def _in_canonical_order(values, affine) -> list:
    """Per-axis values in the file's stored axis order → in canonical order."""
    out = list(values)
    for stored, axis in enumerate(_canonical_axes(affine)):
        out[axis] = values[stored]
    return out


def _stored(values: tuple, affine: tuple[tuple[float, ...], ...]) -> np.ndarray:
    """Per-axis values in canonical order (a `Header`'s shape or spacing) → in the file's
    stored axis order."""
    return np.array(values)[_canonical_axes(affine)]


def _corners(shape) -> np.ndarray:
    """(3, 8) voxel indices of the eight corners of a volume of `shape`."""
    return np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1)


def _canonical_shape(raw: nib.Nifti1Image) -> tuple[int, int, int]:
    """The shape of a volume read in canonical orientation, from its header alone."""
    x, y, z = _in_canonical_order([int(n) for n in raw.shape[:3]], raw.affine)
    return x, y, z


def _spacing(raw: nib.Nifti1Image) -> tuple[float, float, float]:
    """The header's voxel size (pixdim), as FLARE's scoring reads it, in canonical axis order.

    Not the reoriented image's zooms: nibabel recomputes those from the affine when it has to
    reorient, and the affine's voxel size may differ from pixdim by float32 rounding
    (`SPACING_RTOL` allows that much), which moves a distance off an exact tie with an NSD
    tolerance. A file stored in RAS+ order already kept pixdim, so both orders agree.
    """
    x, y, z = _in_canonical_order([float(s) for s in raw.header.get_zooms()[:3]], raw.affine)
    return x, y, z


def grid_signature(path: Path) -> str:
    """Shape and voxel size in canonical axis order, from the header alone (no voxel is
    decoded): what a volume saved again (other compression, data type or axis order) keeps.
    A header nibabel cannot read, or without a usable orientation, gives a signature of its
    own (no other file shares it): it is the reading of that file that refuses it."""
    try:
        raw = nib.load(path)
        spacing = ", ".join(f"{s:.5g}" for s in _spacing(raw))
        shape = "x".join(map(str, _canonical_shape(raw)))
    except Exception as exc:  # nibabel raises many types for a damaged header
        return f"unreadable {path}: {_reason(exc)}"
    return f"{shape} @ ({spacing}) mm"


def voxel_digest(path: Path) -> str:
    """SHA-256 of the voxel values as float32 in canonical orientation, with the shape: the
    same for a volume saved again with another header, compression, data type or axis
    order, as long as its values are the same."""
    data, _ = read_volume(path, dtype=np.float32)
    digest = hashlib.sha256(str(data.shape).encode())
    digest.update(memoryview(np.ascontiguousarray(data)).cast("B"))
    return digest.hexdigest()


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
    raw = _load(path, verified=True)
    img = _canonical(raw, path)
    with _decoding(path):
        data = np.asanyarray(img.dataobj).astype(dtype, copy=False)
    return np.ascontiguousarray(data), _spacing(raw)


# nnU-Net's tolerance: nnunetv2 2.8 (experiment_planning/verify_dataset_integrity.py,
# check_cases) compares spacing, affine, origin and direction of image and label with
# `np.allclose` at numpy's defaults, rtol=1e-5 and atol=1e-8. It fails a case on shape or
# spacing and only warns on origin or direction; we fail on all four, because the label's
# voxels are scored against the image's voxels one by one.
GEOMETRY_RTOL = 1e-5
GEOMETRY_ATOL = 1e-8
# Direction cosines are compared by what they move instead: atol=1e-8 on a near-zero
# component of an oblique matrix refused a tilt of 1e-6 rad (a qform quaternion read against
# an sform), which moves no voxel by a micrometre. A direction passes when no voxel of the
# volume moves by more than this fraction of the smallest voxel spacing.
DIRECTION_TOL_VOXELS = 1e-3


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, rtol=GEOMETRY_RTOL, atol=GEOMETRY_ATOL))


def _origin(affine: tuple[tuple[float, ...], ...]) -> np.ndarray:
    """World position (mm) of voxel (0, 0, 0)."""
    return np.asarray(affine)[:3, 3]


def _direction(affine: tuple[tuple[float, ...], ...]) -> np.ndarray:
    """Unit vectors of the voxel axes in world space (the affine's normalised columns)."""
    m = np.asarray(affine)[:3, :3]
    return m / np.linalg.norm(m, axis=0)


def _tilt_mm(
    a: tuple[tuple[float, ...], ...], b: tuple[tuple[float, ...], ...], header: Header
) -> float:
    """Largest shift (mm) that the difference of two affines' directions gives any voxel of a
    volume of `header`'s size and spacing. The shift is linear in the voxel index, so it is
    largest at one of the volume's eight corners (in the stored axis order of `a`)."""
    shape, spacing = _stored(header.shape, a), _stored(header.spacing, a)
    change = (_direction(a) - _direction(b)) * spacing  # (3, 3): mm per stored voxel step
    return float(np.linalg.norm(change @ _corners(shape), axis=0).max())


def _show(field: str, affine: tuple[tuple[float, ...], ...], matrix: bool) -> str:
    if field == "origin":
        return "(" + ", ".join(f"{v:.2f}" for v in _origin(affine)) + ") mm"
    codes = "".join(nib.aff2axcodes(np.asarray(affine)))
    return f"{codes} {np.round(_direction(affine), 4).tolist()}" if matrix else codes


def check_pair(case: CaseFiles, image: Header, label: Header) -> None:
    """Image and label must lie on one voxel grid: the same shape, spacing and origin, within
    nnU-Net's tolerance (`GEOMETRY_RTOL`, `GEOMETRY_ATOL`), and directions that move no voxel
    by more than `DIRECTION_TOL_VOXELS` of a voxel.

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
    tilt = _tilt_mm(ref.affine, header.affine, ref)
    if tilt > DIRECTION_TOL_VOXELS * min(ref.spacing):
        # Axis codes (RAS, LPS, ...) say it when they differ; an oblique tilt needs the matrix.
        matrix = nib.aff2axcodes(np.asarray(ref.affine)) == nib.aff2axcodes(
            np.asarray(header.affine)
        )
        raise DatasetError(
            f"{path}: {what} direction {_show('direction', header.affine, matrix)} differs "
            f"from {of} direction {_show('direction', ref.affine, matrix)} ({reference}), "
            f"moving voxels by up to {tilt:.2g} mm; the {what} must be on the {of}'s voxel grid"
        )
    if not _close(_origin(ref.affine), _origin(header.affine)):
        gap = float(np.max(np.abs(_origin(ref.affine) - _origin(header.affine))))
        raise DatasetError(
            f"{path}: {what} origin {_show('origin', header.affine, False)} differs from "
            f"{of} origin {_show('origin', ref.affine, False)} ({reference}) by up to "
            f"{gap:.2g} mm; the {what} must be on the {of}'s voxel grid"
        )


def same_voxels_reordered(header: Header, ref: Header) -> bool:
    """Whether a file of `header` holds the voxels of `ref`'s grid stored in another axis
    order (LPS against RAS, slices head first): every voxel centre lands on one of `ref`'s,
    to `DIRECTION_TOL_VOXELS` of a voxel, through a signed permutation of the axes. Such a
    file fails `check_same_grid` (its affine differs), and this says why in plain words."""
    if ref.shape != header.shape or not _close(np.array(ref.spacing), np.array(header.spacing)):
        return False
    # Voxel index of the file → voxel index of `ref`.
    to_ref = np.linalg.inv(np.asarray(ref.affine)) @ np.asarray(header.affine)
    stored, ref_stored = _stored(header.shape, header.affine), _stored(ref.shape, ref.affine)
    axes, shift = np.round(to_ref[:3, :3]), np.round(to_ref[:3, 3:])
    if not (np.all(np.abs(axes).sum(axis=0) == 1) and np.all(np.abs(axes).sum(axis=1) == 1)):
        return False
    if np.array_equal(axes, np.eye(3)) and not shift.any():
        return False  # the same axis order: what differs is not the order
    corners = _corners(stored)
    target = axes @ corners + shift
    off = np.abs(to_ref[:3, :3] @ corners + to_ref[:3, 3:] - target).max()
    inside = np.all(target >= 0) and np.all(target <= (ref_stored - 1)[:, None])
    return bool(inside and off <= DIRECTION_TOL_VOXELS)


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
