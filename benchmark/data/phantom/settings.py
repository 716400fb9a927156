"""The phantom's settings (case counts, ranges of the random geometry) and its organ table."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ORGANS: dict[int, str] = {
    1: "liver",
    2: "right_kidney",
    3: "spleen",
    4: "pancreas",
    5: "aorta",
    6: "ivc",
    7: "right_adrenal",
    8: "left_adrenal",
    9: "gallbladder",
    10: "esophagus",
    11: "stomach",
    12: "duodenum",
    13: "left_kidney",
}

FLOAT = np.float64
"""The phantom's arithmetic type. float64, so that a case has the same voxels on every machine:
in float32, numpy's SIMD kernels (AVX2 or not) and the BLAS kernel changed a few voxels of a
case by up to 171 HU; in float64 their differences stay far below the int16 rounding and the
label thresholds."""
AIR_HU = -1000.0


@dataclass(frozen=True)
class PhantomSettings:
    """How many phantom cases to make and the ranges their random geometry is drawn from."""

    cases: int = 30
    """Number of labeled cases (imagesTr + labelsTr)."""
    unlabeled: int = 20
    """Number of unlabeled cases (imagesUnlabeled, images only)."""
    seed: int = 0
    """Master seed; case i depends only on (seed, i, labeled or not)."""
    size: int = 512
    """In-plane matrix size in voxels (the volume is size x size x Z)."""
    fov_mm: tuple[float, float] = (360.0, 450.0)
    """Range of the square in-plane field of view in mm; in-plane spacing = fov / size."""
    thickness_mm: tuple[float, float] = (2.5, 5.0)
    """Range of the slice thickness (z spacing) in mm."""
    extent_mm: tuple[float, float] = (160.0, 220.0)
    """Range of the cranio-caudal extent of the volume in mm (Z = extent / thickness)."""
    noise_hu: tuple[float, float] = (10.0, 20.0)
    """Range of the standard deviation of the correlated image noise in HU."""
    deform_mm: float = 6.0
    """Largest in-plane displacement of the smooth random organ deformation in mm."""
    oral_contrast: float = 0.2
    """Probability that a case has positive oral contrast (bright stomach and bowel content)."""

    def __post_init__(self) -> None:
        if self.cases < 0 or self.unlabeled < 0 or self.seed < 0:
            raise ValueError("cases, unlabeled and seed must be >= 0")
        if self.size < 16:
            raise ValueError(f"size must be >= 16 voxels, got {self.size}")
        for name in ("fov_mm", "thickness_mm", "extent_mm", "noise_hu"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi or (name != "noise_hu" and lo <= 0):
                raise ValueError(f"{name} must be a range 0 < low <= high, got {(lo, hi)}")
        if self.deform_mm < 0 or not 0 <= self.oral_contrast <= 1:
            raise ValueError("deform_mm must be >= 0 and oral_contrast in [0, 1]")
