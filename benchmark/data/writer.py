"""Write a label volume back into the geometry of the file it was scored against."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np


def save_like(labels: np.ndarray, reference: Path, path: Path) -> Path:
    """Save an (X, Y, Z) label volume in canonical (RAS+) orientation as a NIfTI file on the
    voxel grid of `reference` (its axis order, affine and header), as uint8.

    Reading `path` back with `benchmark.data.reader` gives `labels` exactly. Written under a
    temporary name and renamed, so a killed run leaves no half file.
    """
    ref = nib.load(str(reference))
    original = nib.io_orientation(ref.affine)
    canonical = nib.orientations.axcodes2ornt(("R", "A", "S"))
    voxels = nib.orientations.apply_orientation(
        np.asarray(labels, dtype=np.uint8), nib.orientations.ornt_transform(canonical, original)
    )
    header = ref.header.copy()
    header.set_data_dtype(np.uint8)
    img = nib.Nifti1Image(np.ascontiguousarray(voxels), ref.affine, header)
    img.header.set_slope_inter(1, 0)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp.nii.gz")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
