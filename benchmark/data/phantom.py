"""Deterministic synthetic abdominal CT phantom with the 13 FLARE22 organs.

Each case is an axial abdominal CT volume of ``size x size x Z`` voxels in RAS+ voxel order
(index x grows toward the patient's right, y toward anterior, z toward superior, so that
``affine = diag(spacing)`` is already nibabel-canonical). Images are int16 HU (air -1000),
labels uint8 with the FLARE22 ids of :data:`ORGANS` (0 = background).

The anatomy is built from analytic shapes in millimetres around the body centre: an elliptical
body outline with subcutaneous fat and a muscle wall, spine and ribs, back muscles, psoas,
intra-abdominal fat with textured bowel loops and colon, unlabeled vessels, and the 13 organs,
each with its own HU range and texture. A smooth random deformation, per-case body and organ
sizes and positions, and correlated noise make every case different. Case ``i`` depends only on
``(seed, i, labeled)``, never on how many cases are generated or on the matrix size.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from benchmark.data.cache import write_manifest

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

F32 = np.float32
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


# --------------------------------------------------------------------------------------------
# Smooth random fields
# --------------------------------------------------------------------------------------------


def _bspline_weights(u: np.ndarray, origin: float, step: float, count: int) -> np.ndarray:
    """Cubic B-spline weights, shape (len(u), count), of knots ``origin + j * step`` (mm)."""
    t = np.abs((u[:, None] - (origin + step * np.arange(count))[None, :]) / step)
    w = np.where(t < 1, (4 - 6 * t**2 + 3 * t**3) / 6, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    return w.astype(F32)


class _Lattice:
    """Random cubic B-spline fields on a regular knot lattice over a box in mm.

    The knot count depends only on the physical box and step, so the random coefficients (and
    the field at a given point) do not depend on the voxel grid it is evaluated on. Evaluation
    is a tensor product, i.e. three small matrix products, which is far cheaper than
    interpolating a coarse volume voxel by voxel.
    """

    # Std of a 3D cubic B-spline field with unit normal coefficients is about 0.33.
    _NORM = 1.0 / 0.33

    def __init__(
        self,
        rng: np.random.Generator,
        lo: Sequence[float],
        hi: Sequence[float],
        step: Sequence[float],
        fields: int = 1,
        scale: float = 1.0,
    ):
        self.step = [float(s) for s in step]
        self.origin = [float(a) - 1.5 * s for a, s in zip(lo, self.step, strict=True)]
        counts = [
            math.ceil((float(b) - float(a)) / s) + 4
            for a, b, s in zip(lo, hi, self.step, strict=True)
        ]
        self.coef = (rng.standard_normal((fields, *counts)) * scale).astype(F32)
        self.normed = False

    def eval(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """Fields at the grid ``xs x ys x zs`` (mm), shape (fields, nx, ny, nz), float32."""
        c = self.coef
        wx, wy, wz = (
            _bspline_weights(np.asarray(u, F32), o, s, n)
            for u, o, s, n in zip((xs, ys, zs), self.origin, self.step, c.shape[1:], strict=True)
        )
        t = c @ wz.T  # (f, kx, ky, nz)
        t = wy @ t  # (f, kx, ny, nz)
        f, kx, ny, nz = t.shape
        out = wx @ t.reshape(f, kx, ny * nz)  # (f, nx, ny * nz)
        return out.reshape(f, len(xs), ny, nz)

    def noise(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """First field scaled to about unit standard deviation, shape (nx, ny, nz)."""
        if not self.normed:
            self.coef = self.coef[:1] * F32(self._NORM)
            self.normed = True
        return self.eval(xs, ys, zs)[0]


# --------------------------------------------------------------------------------------------
# Shape primitives (all in mm; fields are normalised radii, < 1 inside)
# --------------------------------------------------------------------------------------------


@dataclass
class _Ellipsoid:
    """Superellipsoid rotated by ``angle`` (rad, from +x toward +y) about z.

    ``lean`` shifts the in-plane centre by (dx, dy) mm per mm of z above the centre, which
    tilts the long axis the way kidneys and the gallbladder are tilted.
    """

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    angle: float = 0.0
    lean: tuple[float, float] = (0.0, 0.0)
    power: float = 2.0

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        rx, ry, rz = self.radii
        c, s = math.cos(self.angle), math.sin(self.angle)
        hx, hy = math.hypot(rx * c, ry * s), math.hypot(rx * s, ry * c)
        if self.power > 2:  # a superellipsoid reaches into the corners of its box
            hx = hy = max(rx, ry) * 1.26
        ext = np.array([hx + abs(self.lean[0]) * rz, hy + abs(self.lean[1]) * rz, rz])
        centre = np.asarray(self.center, float)
        return centre - ext, centre + ext

    def field(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        cx, cy, cz = self.center
        dz = z - F32(cz)
        u0 = x - (F32(cx) + F32(self.lean[0]) * dz)
        v0 = y - (F32(cy) + F32(self.lean[1]) * dz)
        c, s = F32(math.cos(self.angle)), F32(math.sin(self.angle))
        u = (c * u0 + s * v0) * F32(1 / self.radii[0])
        v = (c * v0 - s * u0) * F32(1 / self.radii[1])
        w = dz * F32(1 / self.radii[2])
        if self.power == 2.0:
            return np.sqrt(u * u + v * v + w * w)
        p = F32(self.power)
        return (np.abs(u) ** p + np.abs(v) ** p + np.abs(w) ** p) ** F32(1 / self.power)


@dataclass
class _Tube:
    """Swept sphere along a 3D polyline with linearly varying radius (mm).

    ``squash`` < 1 flattens the cross-section in y (e.g. the oval IVC).
    """

    points: np.ndarray
    radii: np.ndarray
    squash: float = 1.0

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, float)
        self.radii = np.asarray(self.radii, float)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        r = self.radii[:, None] * np.array([1.0, self.squash, 1.0])[None, :]
        return (self.points - r).min(0), (self.points + r).max(0)

    def segments(self) -> list[_Tube]:
        """One tube per polyline segment, so each is evaluated only in its own box."""
        return [
            _Tube(self.points[i : i + 2], self.radii[i : i + 2], self.squash)
            for i in range(len(self.points) - 1)
        ]

    def field(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        k = F32(1 / self.squash)
        best = None
        for (a, b), (ra, rb) in zip(
            zip(self.points[:-1], self.points[1:], strict=True),
            zip(self.radii[:-1], self.radii[1:], strict=True),
            strict=True,
        ):
            d = b - a
            d[1] /= self.squash
            dd = float(d @ d) or 1e-9
            qx, qy, qz = x - F32(a[0]), (y - F32(a[1])) * k, z - F32(a[2])
            t = np.clip((qx * F32(d[0]) + qy * F32(d[1]) + qz * F32(d[2])) * F32(1 / dd), 0, 1)
            ex, ey, ez = qx - t * F32(d[0]), qy - t * F32(d[1]), qz - t * F32(d[2])
            f = np.sqrt(ex * ex + ey * ey + ez * ez) / (F32(ra) + t * F32(rb - ra))
            best = f if best is None else np.minimum(best, f)
        return best


_Primitive = _Ellipsoid | _Tube


@dataclass
class _Shape:
    """Union of primitives minus ``cuts``, with a rough surface and a share of the deformation."""

    parts: list[_Primitive]
    cuts: list[_Primitive] = field(default_factory=list)
    warp: float = 1.0
    roughness: float = 0.05

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = zip(*(p.bounds() for p in self.parts), strict=True)
        return np.min(lo, axis=0), np.max(hi, axis=0)


@dataclass
class _Ctx:
    """Voxels of one organ handed to its intensity function (1D arrays over the mask)."""

    f: np.ndarray  # normalised radius of the shape field (0 centre, 1 surface)
    x: np.ndarray  # undeformed voxel coordinates in mm
    y: np.ndarray
    z: np.ndarray
    noise: Callable[[float], np.ndarray]  # unit smooth noise of a given knot step (mm)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _smoothstep(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0, 1)
    return v * v * (3 - 2 * v)


# --------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------


class _Case:
    """Builds one phantom volume; see :func:`generate_case`."""

    def __init__(self, settings: PhantomSettings, index: int, labeled: bool):
        self.s = settings
        self.key = [int(settings.seed), 1 if labeled else 2, int(index)]
        self.rng = self._stream(0)
        self._tags = 100
        rng = self.rng

        # Acquisition geometry.
        n = settings.size
        # Round like a scanner protocol would, but never out of the configured ranges.
        self.fov = float(np.clip(round(_u(rng, *settings.fov_mm), 1), *settings.fov_mm))
        th_lo, th_hi = settings.thickness_mm
        self.dz = float(np.clip(round(_u(rng, th_lo, th_hi), 2), th_lo, th_hi))
        ext = _u(rng, *settings.extent_mm)
        nz_lo = math.ceil(settings.extent_mm[0] / self.dz - 1e-6)
        nz_hi = max(nz_lo, math.floor(settings.extent_mm[1] / self.dz + 1e-6))
        self.nz = int(np.clip(round(ext / self.dz), nz_lo, nz_hi))
        self.dxy = self.fov / n
        self.spacing = (self.dxy, self.dxy, self.dz)
        self.L = self.nz * self.dz
        # Voxel centres in mm; (0, 0) in-plane is the image centre, z = 0 the lowest slice.
        self.x = ((np.arange(n) - (n - 1) / 2) * self.dxy).astype(F32)
        self.y = self.x.copy()
        self.z = (np.arange(self.nz) * self.dz).astype(F32)
        self.shape = (n, n, self.nz)
        self.noise_sd = _u(rng, *settings.noise_hu)
        self.contrast = bool(rng.random() < settings.oral_contrast)

        half = self.fov / 2
        self.deform = _Lattice(
            self._stream(1),
            (-half, -half, 0),
            (half, half, self.L),
            (70.0, 70.0, 60.0),
            fields=2,
            scale=settings.deform_mm / 2.5,
        )
        np.clip(self.deform.coef, -settings.deform_mm, settings.deform_mm, out=self.deform.coef)

    # ---- helpers ---------------------------------------------------------------------------

    def _stream(self, tag: int) -> np.random.Generator:
        """Independent generator per purpose so that draws never shift each other."""
        return np.random.default_rng(np.random.SeedSequence([*self.key, tag]))

    def _next_stream(self) -> np.random.Generator:
        self._tags += 1
        return self._stream(self._tags)

    def _slices(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[slice, ...] | None:
        """Index slices of the voxels whose centres lie in the mm box [lo, hi], or None."""
        out = []
        for axis, a, b in zip((self.x, self.y, self.z), lo, hi, strict=True):
            i0 = int(np.searchsorted(axis, a, "left"))
            i1 = int(np.searchsorted(axis, b, "right"))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)

    def _index(self, p: Sequence[float]) -> tuple[int, int, int]:
        """Nearest voxel of a point in mm."""
        return tuple(
            int(np.clip(np.abs(axis - v).argmin(), 0, len(axis) - 1))
            for axis, v in zip((self.x, self.y, self.z), p, strict=True)
        )

    # ---- body outline ----------------------------------------------------------------------

    def _outline(self, phi: np.ndarray) -> np.ndarray:
        """Skin radius (mm) from the body centre at polar angle phi (0 = patient right)."""
        c, s = np.abs(np.cos(phi)), np.sin(phi)
        b = np.where(s >= 0, self.b_ant, self.b_post)
        p = np.where(s >= 0, self.p_ant, self.p_post)
        r = ((c / self.a) ** p + (np.abs(s) / b) ** p) ** (-1 / p)
        for k, amp, ph in self.harmonics:
            r = r * (1 + amp * np.cos(k * phi + ph))
        # Shallow furrow over the spine.
        d = np.angle(np.exp(1j * (phi + np.pi / 2)))
        return r * (1 - 0.03 * np.exp(-((d / 0.15) ** 2)))

    def _fat(self, phi: np.ndarray) -> np.ndarray:
        """Subcutaneous fat thickness (mm); thicker on the flanks and the back."""
        c, s = np.cos(phi), np.sin(phi)
        return self.tf * (0.7 + 0.45 * c * c + 0.25 * np.clip(-s, 0, 1))

    def _muscle(self, phi: np.ndarray) -> np.ndarray:
        """Abdominal wall muscle thickness (mm)."""
        c = np.cos(phi)
        return self.tm * (0.9 + 0.35 * c * c)

    # ---- geometry draws --------------------------------------------------------------------

    def _draw_body(self) -> None:
        rng = self.rng
        half = self.fov / 2
        self.a = half * _u(rng, 0.70, 0.84)
        self.b_ant = self.a * _u(rng, 0.64, 0.78)
        self.b_post = self.b_ant * _u(rng, 0.86, 1.0)
        self.p_ant = _u(rng, 2.0, 2.3)
        self.p_post = _u(rng, 2.4, 3.0)
        self.y0 = _u(rng, -12, 4)
        self.harmonics = [
            (k, float(rng.normal(0, 0.012)), _u(rng, 0, 2 * np.pi)) for k in (2, 3, 4)
        ]
        self.tf = _u(rng, 8, 30)
        self.tm = _u(rng, 9, 13)
        # Cross-section breathes slowly along z.
        za = _u(rng, 0, 2 * np.pi)
        self.scale_z = (
            1
            + 0.03 * np.sin(2 * np.pi * self.z / _u(rng, 250, 400) + za)
            + 0.02 * (self.z / self.L)
        ).astype(F32)

        # Landmarks (mm): inner wall, vertebral body, aorta.
        right, ant, post = 0.0, np.pi / 2, -np.pi / 2

        def wall(phi: float) -> float:
            return float(self._fat(np.float64(phi)) + self._muscle(np.float64(phi)))

        self.A = float(self._outline(np.float64(right))) - wall(right)  # cavity half-width
        self.y_ant = self.y0 + float(self._outline(np.float64(ant))) - wall(ant)
        self.y_back = self.y0 - float(self._outline(np.float64(post)))
        self.tf_back = float(self._fat(np.float64(post)))
        self.rx_vb, self.ry_vb = _u(rng, 21, 26), _u(rng, 15, 19)
        self.r_canal = _u(rng, 8, 10)
        self.y_vb = self.y_back + self.tf_back + _u(rng, 56, 66)
        self.y_canal = self.y_vb - self.ry_vb - self.r_canal + 1
        self.D = self.y_ant - self.y_vb  # depth from vertebral body centre to anterior wall
        self.r_ao = _u(rng, 9.5, 12.5)
        self.x_ao = -_u(rng, 8, 16)
        self.y_ao = self.y_vb + self.ry_vb + self.r_ao + _u(rng, 2, 5)
        self.r_ivc = _u(rng, 10, 13)
        self.x_ivc = _u(rng, 18, 26)
        self.y_ivc = self.y_vb + self.ry_vb + _u(rng, 4, 9)

    # ---- background anatomy ----------------------------------------------------------------

    def _background(self) -> None:
        rng = self.rng
        xg, yg = self.x[:, None], self.y[None, :] - F32(self.y0)
        phi = np.arctan2(yg, xg).astype(F32)
        r2 = np.hypot(xg, yg).astype(F32)
        R2 = self._outline(phi).astype(F32)
        T1 = self._fat(phi).astype(F32)
        T2 = (T1 + self._muscle(phi)).astype(F32)
        # Linea alba: the muscle wall thins to a fascia at the anterior midline.
        alba = (np.exp(-((xg / 4.0) ** 2)) * (yg > 0)).astype(F32)
        T2 = T2 - alba * F32(0.5 * self.tm)

        # A voxel lies at depth t (mm) or deeper below the skin along the ray from the body
        # centre when (r + t) / R <= scale(z); counting the thresholds passed gives the layer
        # (0 air, 1 skin, 2 subcutaneous fat, 3 muscle wall, 4 abdominal cavity).
        scale = self.scale_z[None, None, :]
        inv = 1 / R2
        layer = np.zeros(self.shape, np.uint8)
        for t in (0.0, 1.6, T1, T2):
            layer += ((r2 + t) * inv)[:, :, None] <= scale
        fat_hu, muscle_hu = _u(rng, -115, -90), _u(rng, 40, 60)
        lut = np.array([AIR_HU, _u(rng, 0, 40), fat_hu, muscle_hu, _u(rng, -110, -85)], F32)
        img = lut[layer]
        self._table(img, layer)
        cavity = layer == 4
        del layer
        self.muscle_hu = muscle_hu

        # Lung bases and diaphragm at the top, behind and beside the liver and spleen dome.
        lung = np.zeros(self.shape, bool)
        dia = np.zeros(self.shape, bool)
        top = self.L * _u(rng, 0.80, 0.9)
        w_max = _u(rng, 30, 60)
        for side, onset in ((1, top), (-1, top - _u(rng, 0, 15))):
            mid = -np.pi / 2 + side * _u(rng, 0.8, 1.1)
            g = np.exp(-((np.angle(np.exp(1j * (phi - mid))) / 0.9) ** 2)).astype(F32)
            wz = (w_max * np.clip((self.z - onset) / max(self.L - onset, 1.0), 0, 1) ** 0.7).astype(
                F32
            )
            ks = np.nonzero(wz > 0)[0]
            if len(ks) == 0:
                continue
            k0 = int(ks[0])
            W = g[:, :, None] * wz[None, None, k0:]
            # Depth below the inner surface of the muscle wall (mm).
            dc = scale[:, :, k0:] * R2[:, :, None] - (r2 + T2)[:, :, None]
            cav = cavity[:, :, k0:]
            lung[:, :, k0:] |= cav & (dc < W)
            dia[:, :, k0:] |= cav & (dc < W + 5) & (W > 1)
        dia &= ~lung
        self._spine_and_muscles(img, cavity)
        self._ribs(img)

        # Where organs may lie: abdominal cavity, not lung or diaphragm, not spine or back.
        keepout = self.keepout[:, :, None]
        lung &= ~keepout
        dia &= ~keepout
        space = cavity & ~keepout
        space &= ~lung
        space &= ~dia
        self.space = space

        self._bowel(img, space)
        half = self.fov / 2
        got = self._box_noise((15.0, 15.0, 15.0), (-half, -half, top - 20), (half, half, self.L))
        dia_hu = _u(rng, 30, 50)
        if got is not None:
            lung_tex, ks = got
            sub, lg = img[ks], lung[ks]
            sub[lg] = -860 + 30 * lung_tex[lg]
            sub[dia[ks]] = dia_hu
        self.img = img

    def _table(self, img: np.ndarray, layer: np.ndarray) -> None:
        """Curved CT couch under the back: two thin shells around low-density foam."""
        rng = self.rng
        y_top = self.y_back * 1.04 - _u(rng, 4, 12)
        xg, yg = self.x[:, None], self.y[None, :]
        curve = y_top + 0.0006 * xg**2
        inside = np.abs(xg) < self.fov * 0.42
        shell = inside & (
            ((yg <= curve) & (yg > curve - 2.5)) | ((yg <= curve - 16) & (yg > curve - 19))
        )
        foam = inside & (yg <= curve - 2.5) & (yg > curve - 16)
        rows = np.nonzero((foam | shell).any(axis=0))[0]
        if len(rows) == 0:
            return
        b = slice(int(rows[0]), int(rows[-1]) + 1)
        outside = layer[:, b] == 0  # never paint over the body
        sub = img[:, b]
        sub[foam[:, b, None] & outside] = -750.0
        sub[shell[:, b, None] & outside] = 150.0

    def _box_noise(
        self, step: Sequence[float], lo: Sequence[float], hi: Sequence[float]
    ) -> tuple[np.ndarray, tuple[slice, ...]] | None:
        """Unit smooth noise of knot ``step`` (mm) over the voxels in the mm box [lo, hi].

        Returns (noise, slices) or None when the box holds no voxel. The lattice spans the
        physical box, so its random draws do not depend on the matrix size.
        """
        rng = self._next_stream()
        sl = self._slices(lo, hi)
        if sl is None:
            return None
        lat = _Lattice(rng, lo, hi, step)
        return lat.noise(self.x[sl[0]], self.y[sl[1]], self.z[sl[2]]), sl

    def _spine_and_muscles(self, img: np.ndarray, cavity: np.ndarray) -> None:
        rng = self.rng
        xg, yg = self.x[:, None], self.y[None, :]
        yv, rx, ry, rc, yc = self.y_vb, self.rx_vb, self.ry_vb, self.r_canal, self.y_canal

        # Back muscles (erector spinae) fill the space between skin fat and the transverse
        # processes beside the spinous process.
        back_in = self.y_back + self.tf_back + 1
        ps_ry = (yc + 6 - back_in) / 2
        ps_rx = _u(rng, 22, 28)
        ps_cx = rc + ps_rx * 0.85
        ps_cy = back_in + ps_ry
        para = np.abs((np.abs(xg) - ps_cx) / ps_rx) ** 3 + np.abs((yg - ps_cy) / ps_ry) ** 3 < 1
        # Quadratus lumborum: flat muscle lateral to the back muscles, lower half only.
        ql = ((np.abs(xg) - (ps_cx + ps_rx + 6)) / 18.0) ** 2 + ((yg - (ps_cy + 8)) / 11.0) ** 2 < 1
        m_hu = self.muscle_hu
        img[para] = m_hu + 4
        kq = slice(0, int(np.searchsorted(self.z, self.L * 0.55)))
        img[:, :, kq][ql[:, :, None] & cavity[:, :, kq]] = m_hu

        # Psoas: grows from a thin strip high up to a thick muscle at the bottom.
        z_top = self.L * _u(rng, 0.5, 0.65)
        r_bot = _u(rng, 18, 26)
        frac = np.clip((z_top - self.z) / z_top, 0, 1)
        r_ps = (4 + (r_bot - 4) * frac**0.8).astype(F32)
        kk = np.nonzero(frac > 0)[0]
        if len(kk):
            ks = slice(int(kk[0]), int(kk[-1]) + 1)
            for side in (1, -1):
                lo = (side * (rx - 4) - 60, yv - 40, 0)
                hi = (side * (rx - 4) + 60, yv + 40, self.L)
                sl = self._slices(np.minimum(lo, hi), np.maximum(lo, hi))
                if sl is None:
                    continue
                sl = (sl[0], sl[1], ks)
                r = r_ps[ks][None, None, :]
                cx = side * (rx - 2 + r)
                m = ((self.x[sl[0]][:, None, None] - cx) / r) ** 2 + (
                    (self.y[sl[1]][None, :, None] - (yv - 3)) / (0.85 * r)
                ) ** 2 < 1
                m &= cavity[sl]
                img[sl][m] = m_hu - 2

        # Vertebrae: 2D templates switched on and off along z by the segment phase.
        vb_f = (xg / rx) ** 2 + ((yg - yv) / ry) ** 2
        notch = xg**2 + (yg - (yv - ry - rc * 0.4)) ** 2 < (rc * 1.1) ** 2
        vb = (vb_f < 1) & ~notch
        vb_core = ((xg / (rx - 2.0)) ** 2 + ((yg - yv) / (ry - 2.0)) ** 2 < 1) & ~notch
        canal = xg**2 + (yg - yc) ** 2 < rc**2
        rr = np.sqrt(xg**2 + (yg - yc) ** 2)
        lamina = (rr >= rc) & (rr < rc + 6.5) & (yg < yc - 1)
        pedicle = (
            (np.abs(xg) >= rc - 1) & (np.abs(xg) < rc + 6) & (yg >= yc - 2) & (yg < yv - ry + 4)
        )
        sp_tip = self.y_back + self.tf_back + _u(rng, 5, 12)
        spinous = (np.abs(xg) < 3.5 + 0.04 * (yg - sp_tip)) & (yg >= sp_tip) & (yg < yc - rc - 3)
        x_tp = _u(rng, 36, 48)
        # Transverse processes taper and sweep slightly backwards toward their tips.
        ax = np.abs(xg)
        tp_frac = np.clip((ax - rc - 2) / (x_tp - rc - 2), 0, 1)
        transverse = (np.abs(yg - (yc + 3 - 6 * tp_frac)) < 3.5 - 1.5 * tp_frac) & (
            (ax >= rc + 2) & (ax < x_tp)
        )
        self.keepout = (
            (vb_f < 1.25) | canal | (rr < rc + 8) | (para & (yg < yc + 4)) | transverse | pedicle
        )
        self.keepout |= (yg < yc + 2) & (np.abs(xg) < ps_cx + ps_rx)

        period, disc = _u(rng, 32, 38), _u(rng, 7, 10)
        offset = _u(rng, 0, period)
        cortical, cancellous = _u(rng, 700, 1000), _u(rng, 180, 300)
        disc_hu, csf_hu = _u(rng, 70, 100), _u(rng, 0, 20)
        got = self._box_noise(
            (3.0, 3.0, 4.0), (-x_tp - 5, sp_tip - 5, 0), (x_tp + 5, yv + ry + 5, self.L)
        )
        if got is None:
            return
        trab, sl2 = got
        a, b = sl2[0], sl2[1]
        vb_, core_, canal_ = vb[a, b], vb_core[a, b], canal[a, b]
        parts = {
            "lamina": lamina[a, b],
            "pedicle": pedicle[a, b],
            "spinous": spinous[a, b],
            "transverse": transverse[a, b],
        }
        rim_cache: dict[tuple[bool, ...], tuple[np.ndarray, np.ndarray]] = {}
        for k, zk in enumerate(self.z):
            ph = (float(zk) - offset) % period
            sl_img = img[a, b, k]
            sl_img[canal_] = csf_hu
            if ph < disc:
                sl_img[vb_] = disc_hu + 15 * (~core_[vb_])
            else:
                endplate = ph < disc + 1.8 or ph > period - 1.8
                sl_img[vb_] = cortical if endplate else cortical * 0.85
                inner = core_ if not endplate else np.zeros_like(core_)
                sl_img[inner] = cancellous + 40 * trab[:, :, k][inner]
            on = (
                disc + 2 < ph < period - 3,  # lamina
                disc + 2 < ph < 0.65 * period,  # pedicles
                ph > 0.45 * period or ph < 0.2 * disc,  # spinous process slopes down
                0.35 * period < ph < 0.7 * period,  # transverse processes
            )
            if not any(on):
                continue
            if on not in rim_cache:
                m = np.zeros_like(vb_)
                for flag, part in zip(on, parts.values(), strict=True):
                    if flag:
                        m |= part
                m &= ~canal_
                edt = ndimage.distance_transform_edt(m, sampling=self.dxy)
                rim_cache[on] = (m, edt < 1.6)
            m, rim = rim_cache[on]
            sl_img[m] = cancellous + 40
            sl_img[m & rim] = cortical

    def _ribs(self, img: np.ndarray) -> None:
        """Partial ring of rib cross-sections in the upper wall; ribs run down anteriorly."""
        rng = self.rng
        spacing = _u(rng, 24, 30)
        drop = _u(rng, 70, 100)  # mm a rib descends from the back to the front
        top = self.L + _u(rng, 40, 80)
        # The last (floating) rib starts somewhat above the middle of the volume.
        n_ribs = max(2, int((top - self.L * _u(rng, 0.5, 0.62)) / spacing) + 1)
        rib_hu, marrow_hu = _u(rng, 600, 900), _u(rng, 200, 320)
        cart_hu = _u(rng, 80, 200)
        for k, zk in enumerate(self.z):
            s = float(self.scale_z[k])
            for j in range(n_ribs):
                z_head = top - j * spacing
                # The lowest two are short floating ribs.
                psi_end = np.deg2rad(150 if j < n_ribs - 2 else 85)
                psi = np.deg2rad(30) + (z_head - float(zk)) / drop * np.deg2rad(120)
                if not np.deg2rad(32) <= psi <= psi_end:
                    continue
                for side in (1, -1):
                    phi = -np.pi / 2 + side * psi
                    rad = s * float(self._outline(np.float64(phi))) - float(
                        self._fat(np.float64(phi)) + 0.5 * self._muscle(np.float64(phi))
                    )
                    cx, cy = rad * math.cos(phi), self.y0 + rad * math.sin(phi)
                    sl = self._slices((cx - 10, cy - 10, zk), (cx + 10, cy + 10, zk))
                    if sl is None:
                        continue
                    u0 = self.x[sl[0]][:, None] - cx
                    v0 = self.y[sl[1]][None, :] - cy
                    ct, st = -math.sin(phi), math.cos(phi)  # tangent direction
                    u, v = u0 * ct + v0 * st, -u0 * st + v0 * ct
                    out = (u / 7.5) ** 2 + (v / 4.8) ** 2 < 1
                    inn = (u / 5.8) ** 2 + (v / 3.2) ** 2 < 1
                    tile = img[sl[0], sl[1], k]
                    if psi > np.deg2rad(115):
                        tile[out] = cart_hu
                    else:
                        tile[out] = rib_hu
                        tile[inn] = marrow_hu

    def _bowel(self, img: np.ndarray, space: np.ndarray) -> None:
        """Textured bowel loops in the intraperitoneal space, mostly low and anterior."""
        rng = self.rng
        z_fade = self.L * _u(rng, 0.55, 0.7)
        wall_hu = _u(rng, 30, 60)
        fluid = _u(rng, 150, 300) if self.contrast else _u(rng, 0, 25)
        lo, hi = (-self.A - 5, self.y_vb - 30, 0), (self.A + 5, self.y_ant + 5, self.L)
        got, got_air = (
            self._box_noise((13.0, 13.0, 16.0), lo, hi),
            self._box_noise((22.0, 22.0, 25.0), lo, hi),
        )
        if got is None or got_air is None:
            return
        (f, sl), (air_f, _) = got, got_air
        xs, ys, zs = self.x[sl[0]], self.y[sl[1]], self.z[sl[2]]
        # Loops fade out behind the front of the spine (retroperitoneal fat) and toward the top
        # (liver and stomach live there).
        y_front = self.y_vb + 12 - 0.35 * np.abs(xs)[:, None]
        wy = _smoothstep((ys[None, :] - y_front) / 20.0)
        wz = _smoothstep((z_fade - zs) / 30.0)
        weight = wy[:, :, None] * wz[None, None, :]
        level = 0.25 + 2.0 * (1 - weight)
        lumen = f > level
        wall = (f > level - 0.28) & ~lumen
        reg = space[sl]
        lumen &= reg
        wall &= reg
        sub = img[sl]
        sub[wall] = wall_hu
        sub[lumen] = fluid + 10 * air_f[lumen]
        sub[lumen & (air_f > 1.1)] = -900.0

    # ---- organs ----------------------------------------------------------------------------

    def _paint(
        self,
        label: int,
        shape: _Shape,
        hu: Callable[[_Ctx], np.ndarray],
        allowed: np.ndarray | None = None,
        image_only: bool = False,
    ) -> None:
        """Rasterise ``shape`` in its bounding box and paint label (unless image_only) and HU.

        ``allowed`` (label ids) restricts painting to voxels that currently carry one of them;
        by default a shape may cover background and earlier organs inside the organ space.
        """
        rough_lat_rng = self._next_stream()
        tex_rng = self._next_stream()
        lo, hi = shape.bounds()
        margin = self.s.deform_mm * shape.warp + 6.0
        m3 = np.array([margin, margin, 2.0])
        sl = self._slices(lo - m3, hi + m3)
        nom_lo, nom_hi = lo - m3, hi + m3
        if sl is not None:
            xs, ys, zs = self.x[sl[0]], self.y[sl[1]], self.z[sl[2]]
            bshape = (len(xs), len(ys), len(zs))
            if shape.warp > 0 and self.s.deform_mm > 0:
                d = self.deform.eval(xs, ys, zs) * F32(shape.warp)
                X = xs[:, None, None] + d[0]
                Y = ys[None, :, None] + d[1]
            else:
                X = np.broadcast_to(xs[:, None, None], bshape)
                Y = np.broadcast_to(ys[None, :, None], bshape)
            Z = np.broadcast_to(zs[None, None, :], bshape)
            X, Y = np.broadcast_to(X, bshape), np.broadcast_to(Y, bshape)

            def local(p: _Primitive) -> tuple[slice, ...] | None:
                plo, phi_ = p.bounds()
                g = self._slices(plo - m3, phi_ + m3)
                if g is None:
                    return None
                out = []
                for gs, bs in zip(g, sl, strict=True):
                    a, b = max(gs.start, bs.start), min(gs.stop, bs.stop)
                    if b <= a:
                        return None
                    out.append(slice(a - bs.start, b - bs.start))
                return tuple(out)

            f = np.full(bshape, np.inf, F32)
            pieces = [
                q for p in shape.parts for q in (p.segments() if isinstance(p, _Tube) else [p])
            ]
            for p in pieces:
                ls = local(p)
                if ls is not None:
                    np.minimum(f[ls], p.field(X[ls], Y[ls], Z[ls]), out=f[ls])
            if shape.roughness > 0:
                step = float(np.clip(0.25 * (hi - lo)[:2].min(), 6.0, 25.0))
                lat = _Lattice(rough_lat_rng, nom_lo, nom_hi, (step, step, step))
                f += F32(shape.roughness) * lat.noise(xs, ys, zs)
            mask = f < 1
            for c in shape.cuts:
                ls = local(c)
                if ls is not None:
                    mask[ls] &= c.field(X[ls], Y[ls], Z[ls]) >= 1
            ok = self.space[sl]
            if allowed is not None:
                ok = ok & np.isin(self.lab[sl], allowed)  # never modify self.space in place
            mask &= ok
        if sl is None or not mask.any():
            if image_only:
                return
            # Coarse grids can miss a small organ entirely: keep the voxel deepest inside the
            # shape (or nearest to its first part) so every organ is present.
            if sl is not None and ok.any():
                ijk = np.unravel_index(int(np.argmin(np.where(ok, f, np.inf))), f.shape)
                i, j, k = (int(v) + s.start for v, s in zip(ijk, sl, strict=True))
            else:
                plo, phi_ = shape.parts[0].bounds()
                i, j, k = self._index((plo + phi_) / 2)
            sl = (slice(i, i + 1), slice(j, j + 1), slice(k, k + 1))
            xs, ys, zs = self.x[sl[0]], self.y[sl[1]], self.z[sl[2]]
            f = np.zeros((1, 1, 1), F32)
            mask = np.ones((1, 1, 1), bool)

        idx = np.nonzero(mask)
        tex_cache: dict[float, np.ndarray] = {}

        def noise(step: float) -> np.ndarray:
            if step not in tex_cache:
                lat = _Lattice(tex_rng, nom_lo, nom_hi, (step, step, step))
                tex_cache[step] = lat.noise(xs, ys, zs)[idx]
            return tex_cache[step]

        ctx = _Ctx(f[idx], xs[idx[0]], ys[idx[1]], zs[idx[2]], noise)
        values = np.asarray(hu(ctx), F32)
        self.img[sl][idx] = values
        if not image_only:
            self.lab[sl][idx] = label
            self.seeds[label] = (
                sl[0].start + int(idx[0][0]),
                sl[1].start + int(idx[1][0]),
                sl[2].start + int(idx[2][0]),
                float(values.flat[0]),
            )

    def _organs(self) -> None:
        rng = self.rng
        A, D, L = self.A, self.D, self.L
        yv, y_ant = self.y_vb, self.y_ant
        y_pi = self.y_back + self.tf_back + self.tm  # inner posterior wall

        def u(lo: float, hi: float) -> float:
            return _u(rng, lo, hi)

        def jit(sd: float = 5.0) -> float:
            """Random offset (mm) of a landmark."""
            return float(rng.normal(0, sd))

        # Organs given in absolute mm follow the body size (a cavity half-width of ~118 mm is
        # an average adult).
        kb = float(np.clip(A / 118.0, 0.8, 1.15))

        # HU levels for this case.
        liver_hu = u(50, 70)
        spleen_hu = u(45, 55)
        cortex_hu = u(150, 200)
        aorta_hu = u(150, 250)
        ivc_hu = max(120.0, aorta_hu - u(0, 60))
        fluid_hu = u(150, 300) if self.contrast else u(5, 25)
        wall_hu = u(45, 70)

        # 1 liver: big right lobe, left lobe reaching over the stomach, caudate, inferior tip.
        sc = u(0.9, 1.1)
        zc = L * u(0.68, 0.74)
        liver = _Shape(
            [
                _Ellipsoid(
                    (0.5 * A + jit(), (y_pi + y_ant) / 2 + jit(), zc),
                    (0.58 * A * sc, 0.55 * (y_ant - y_pi) * sc, 0.3 * L * sc),
                    angle=u(-0.15, 0.15),
                ),
                _Ellipsoid(
                    (-0.18 * A + jit(), y_ant - 0.24 * D + jit(3), zc + 0.08 * L),
                    (0.42 * A * sc, 0.24 * D * sc, 0.17 * L * sc),
                    angle=u(-0.25, 0.05),
                ),
                _Ellipsoid((0.1 * A, yv + 0.35 * D, zc + 0.02 * L), (0.15 * A, 0.14 * D, 0.1 * L)),
                _Ellipsoid(
                    (0.62 * A + jit(), yv + 0.2 * D + jit(), zc - 0.27 * L),
                    (0.26 * A * sc, 0.28 * D * sc, 0.12 * L * sc),
                ),
            ],
            roughness=0.04,
        )

        def liver_tex(c: _Ctx) -> np.ndarray:
            return liver_hu + 4 * c.noise(10.0) + 2 * c.noise(4.0)

        self._paint(1, liver, liver_tex)

        # 3 spleen: crescent along the left posterolateral wall.
        sc = u(0.85, 1.15) * kb
        sp_c = (-0.68 * A + jit(), yv + u(-5, 10), L * u(0.72, 0.78))
        spleen = _Shape(
            [
                _Ellipsoid(
                    sp_c,
                    (52 * sc, 22 * sc, 0.17 * L * sc),
                    angle=np.deg2rad(u(-60, -35)),
                    power=2.2,
                )
            ],
            cuts=[_Ellipsoid((sp_c[0] + 30, sp_c[1] + 28, sp_c[2]), (26, 26, 0.2 * L))],
            roughness=0.04,
        )
        self._paint(3, spleen, lambda c: spleen_hu + 3 * c.noise(8.0))

        # 11 stomach: fundus high and posterior on the left, body, antrum sweeping right.
        sc = u(0.85, 1.15)
        z_f = L * u(0.82, 0.88)
        pylorus = (0.14 * A + jit(), y_ant - 0.3 * D + jit(3), L * u(0.5, 0.56))
        fundus = (-0.42 * A + jit(), yv + 0.2 * D + jit(), z_f)
        body = (-0.36 * A + jit(), yv + 0.55 * D + jit(), L * 0.68)
        antrum = (-0.05 * A + jit(), y_ant - 0.27 * D + jit(3), L * u(0.53, 0.58))
        r_f = 0.27 * A * sc
        stomach = _Shape(
            [
                _Ellipsoid(fundus, (r_f, r_f * 0.9, 0.11 * L * sc)),
                _Tube(
                    [fundus, body, antrum, pylorus], [r_f * 0.9, 0.22 * A * sc, 0.13 * A * sc, 10]
                ),
            ],
            roughness=0.05,
        )
        air_frac = u(-0.3, 1.0)  # < 0 -> no air
        y_level = body[1] + air_frac * 0.22 * A

        def stomach_tex(c: _Ctx) -> np.ndarray:
            v = fluid_hu + 12 * c.noise(8.0)
            v = np.where((c.y > y_level) & (c.f < 0.8), -950 + 10 * c.noise(8.0), v)
            return np.where(c.f > 0.84, wall_hu + 5 * c.noise(5.0), v)

        self._paint(11, stomach, stomach_tex)

        # 2 right / 13 left kidney: beside the spine, right one lower; hilum anteromedial.
        for label, side, zf in ((2, 1, u(0.33, 0.38)), (13, -1, u(0.38, 0.44))):
            sc = u(0.88, 1.12) * kb
            kc = (side * (0.48 * A + jit(4)), yv - u(0, 8), L * zf)
            ang = np.deg2rad(side * u(28, 45))
            normal = (-side * math.sin(abs(ang)), math.cos(ang))
            k_rz = u(45, 56) * sc
            kidney = _Shape(
                [
                    _Ellipsoid(
                        kc,
                        (30 * sc, 22 * sc, k_rz),
                        angle=float(ang),
                        lean=(-side * 0.15, -0.1),
                    )
                ],
                cuts=[
                    _Ellipsoid(
                        (kc[0] + 19 * normal[0], kc[1] + 19 * normal[1], kc[2]),
                        (9, 9, 0.35 * k_rz),
                    )
                ],
                warp=0.6,
                roughness=0.03,
            )
            medulla = cortex_hu - u(25, 70)

            def kidney_tex(c: _Ctx, medulla: float = medulla) -> np.ndarray:
                v = np.where(c.f > 0.7, cortex_hu, medulla + 15 * c.noise(5.0))
                v = np.where((c.f < 0.7) & (c.noise(4.0) > 0.9), cortex_hu - 10, v)
                return v + 4 * c.noise(6.0)

            self._paint(label, kidney, kidney_tex)
            if label == 2:
                self.rk = (kc, k_rz)
            else:
                self.lk = (kc, k_rz)

        # 12 duodenum: C-loop from the pylorus around the pancreatic head to the DJ flexure.
        r_d = u(9, 12)
        x_d2 = 0.42 * A + jit(3)
        y_d3 = self.y_ao + self.r_ao + r_d + 2
        duo_pts = [
            pylorus,
            (0.3 * A, yv + 0.45 * D, L * 0.53),
            (x_d2, yv + 0.3 * D, L * 0.5),
            (x_d2 + jit(2), yv + 0.25 * D, L * 0.36),
            (0.12 * A, y_d3, L * 0.3),
            (-0.2 * A, y_d3 + 3, L * 0.32),
            (-0.26 * A, yv + 0.4 * D, L * 0.42),
        ]
        duodenum = _Shape([_Tube(duo_pts, [r_d] * len(duo_pts))], roughness=0.05)
        duo_air = u(0, 1) < 0.4

        def duo_tex(c: _Ctx) -> np.ndarray:
            v = fluid_hu + 10 * c.noise(6.0)
            if duo_air:
                v = np.where((c.noise(10.0) > 1.0) & (c.f < 0.6), -900, v)
            return np.where(c.f > 0.72, wall_hu + 5 * c.noise(5.0), v)

        self._paint(12, duodenum, duo_tex)

        # 4 pancreas: head in the duodenal C, neck and body in front of the aorta, tail to spleen.
        sc = u(0.85, 1.15) * kb
        y_pb = self.y_ao + self.r_ao + u(14, 20)
        head = (0.22 * A + jit(3), yv + 0.3 * D, L * 0.42)
        pancreas = _Shape(
            [
                _Tube(
                    [
                        head,
                        (0.04 * A, y_pb + 4, L * 0.46),
                        (-0.2 * A, y_pb, L * 0.5),
                        (-0.5 * A + jit(3), yv + u(0, 12), L * 0.55),
                    ],
                    np.array([16, 11, 11, 9]) * sc,
                ),
                _Tube(
                    [head, (0.03 * A, self.y_ao + self.r_ao + 6, L * 0.4)], np.array([14, 7]) * sc
                ),
            ],
            roughness=0.08,
        )
        panc_hu = u(35, 50)

        def panc_tex(c: _Ctx) -> np.ndarray:
            lob = c.noise(3.0)
            return np.where(lob > 1.6, -40.0, panc_hu + 8 * lob)

        self._paint(4, pancreas, panc_tex)

        # 9 gallbladder: pear under the liver, neck up and back, fundus down and forward.
        sc = u(0.8, 1.2) * kb
        gb = _Shape(
            [
                _Ellipsoid(
                    (0.33 * A + jit(4), y_ant - 0.28 * D + jit(3), L * u(0.42, 0.48)),
                    (14 * sc, 17 * sc, u(17, 24) * sc),
                    angle=u(-0.4, 0.4),
                    lean=(0.1, -0.5),
                )
            ],
            roughness=0.02,
        )
        bile = u(0, 20)
        self._paint(9, gb, lambda c: np.where(c.f > 0.9, 40.0, bile + 2 * c.noise(8.0)))

        # 10 esophagus: in front of the aorta high up, swinging left into the cardia.
        r_e = u(8, 11)
        eso = _Shape(
            [
                _Tube(
                    [
                        (self.x_ao + 6, self.y_ao + self.r_ao + r_e - 2, L + 10),
                        (self.x_ao - 6, self.y_ao + self.r_ao + r_e + 4, L * 0.9),
                        (fundus[0] + 0.35 * r_f, fundus[1] + 0.5 * r_f, L * u(0.78, 0.84)),
                    ],
                    [r_e, r_e, r_e * 1.2],
                )
            ],
            warp=0.5,
            roughness=0.03,
        )
        eso_air, eso_hu = u(0, 1) < 0.5, u(35, 50)
        self._paint(
            10,
            eso,
            lambda c: np.where((c.f < 0.3) & eso_air, -900.0, eso_hu + 4 * c.noise(4.0)),
        )

        # 7 right / 8 left adrenal: thin inverted-V limbs above and medial to the kidneys.
        (rkc, rk_rz), (lkc, lk_rz) = self.rk, self.lk
        adr_hu = u(30, 55)
        spots = (
            (7, (self.x_ivc + u(0, 8), self.y_ivc - self.r_ivc - u(6, 12), rkc[2] + rk_rz * 0.85)),
            (8, (self.x_ao - self.r_ao - u(12, 18), self.y_ao - u(0, 8), lkc[2] + lk_rz * 0.6)),
        )
        for label, (ax, ay, az) in spots:
            rz = u(8, 12)
            limbs = []
            for spread in (-1, 1):
                ang = -np.pi / 2 + spread * np.deg2rad(u(18, 35))
                ln = u(10, 16)
                limbs.append(
                    _Ellipsoid(
                        (ax + 0.8 * ln * math.cos(ang), ay + 0.8 * ln * math.sin(ang), az),
                        (ln, u(2.5, 3.5), rz),
                        angle=float(ang),
                    )
                )
            self._paint(
                label, _Shape(limbs, warp=0.4, roughness=0.03), lambda c: adr_hu + 5 * c.noise(4.0)
            )

        # Colon, mesenteric and renal vessels into the fat that is left (label 0 only).
        self.vessel_hu = (aorta_hu, ivc_hu)
        self._unlabeled_tubes()

        # 6 IVC: right of the aorta, moving forward into the liver, ending below the dome.
        ivc = _Shape(
            [
                _Tube(
                    [
                        (self.x_ivc, self.y_ivc, -10),
                        (self.x_ivc + 3, self.y_ivc + 6, L * 0.55),
                        (self.x_ivc + 5, self.y_ivc + u(14, 24), L * u(0.88, 0.94)),
                    ],
                    [self.r_ivc, self.r_ivc * 1.1, self.r_ivc * 1.2],
                    squash=u(0.65, 0.85),
                )
            ],
            warp=0.3,
            roughness=0.0,
        )
        self._paint(6, ivc, lambda c: ivc_hu + 4 * c.noise(6.0))
        self.ivc_top = (self.x_ivc + 5, self.y_ivc + 18, L * 0.9)

        # 5 aorta: left-anterior of the spine, full height, slightly wider at the top.
        aorta = _Shape(
            [
                _Tube(
                    [
                        (self.x_ao, self.y_ao, -10),
                        (self.x_ao - 1, self.y_ao - 1, L * 0.6),
                        (self.x_ao - 3, self.y_ao - 3, L + 10),
                    ],
                    [self.r_ao * 0.9, self.r_ao, self.r_ao * 1.05],
                )
            ],
            warp=0.2,
            roughness=0.0,
        )
        self._paint(5, aorta, lambda c: aorta_hu + 3 * c.noise(6.0))
        self._unlabeled_veins()
        # A later organ may have covered all of a tiny one on a coarse grid: give it back
        # one voxel.
        counts = np.bincount(self.lab.ravel(), minlength=len(ORGANS) + 1)
        for label in ORGANS:
            if counts[label] == 0:
                i, j, k, value = self.seeds[label]
                self.lab[i, j, k], self.img[i, j, k] = label, value

    def _unlabeled_tubes(self) -> None:
        """Colon, mesenteric and renal vessels: unlabeled, painted only into background."""
        rng = self.rng
        A, D, L, yv = self.A, self.D, self.L, self.y_vb
        aorta_hu, ivc_hu = self.vessel_hu

        def u(lo: float, hi: float) -> float:
            return _u(rng, lo, hi)

        # Colon: ascending (right flank), transverse (front, sagging), descending (left flank).
        r_c = u(16, 24)
        stool = u(-250, -80)
        colon_pts = [
            (0.72 * A, yv + 0.15 * D, -10),
            (0.72 * A, yv + 0.25 * D, L * 0.45),
            (0.55 * A, yv + 0.7 * D, L * 0.5),
            (0.0, self.y_ant - r_c - 4, L * u(0.4, 0.5)),
            (-0.6 * A, yv + 0.7 * D, L * 0.6),
            (-0.74 * A, yv + 0.25 * D, L * 0.58),
            (-0.74 * A, yv + 0.15 * D, -10),
        ]

        gas = u(0.6, 1.6)

        def colon_tex(c: _Ctx) -> np.ndarray:
            # Mottled stool with gas bubbles, larger gas pockets in places.
            grain = c.noise(5.0)
            v = stool + 60 * grain
            v = np.where(grain > 1.4, -850.0, v)
            v = np.where(c.noise(15.0) > gas, -920.0, v)
            return np.where(c.f > 0.85, 40.0, v)

        self._paint(0, _Shape([_Tube(colon_pts, [r_c] * 7)], roughness=0.06), colon_tex, (0,), True)
        # Superior mesenteric artery and vein below the pancreas, in front of the aorta.
        y_front = self.y_ao + self.r_ao
        for dx, r, hu in ((0.0, 4.0, aorta_hu), (14.0, 6.0, ivc_hu)):
            tube = _Tube(
                [
                    (self.x_ao + 2 + dx, self.y_ao, L * 0.52),
                    (self.x_ao + 2 + dx, y_front + 18, L * 0.42),
                    (self.x_ao + 4 + dx * 1.2, y_front + 30, -10),
                ],
                [r, r, r * 0.9],
            )
            self._paint(0, _Shape([tube], warp=0.5, roughness=0), lambda c, h=hu: h, (0,), True)
        # Renal veins into the IVC; the left one crosses in front of the aorta.
        for kc in (self.rk[0], self.lk[0]):
            tube = _Tube(
                [
                    (kc[0] * 0.6, yv + 8, kc[2] + 4),
                    (
                        self.x_ao if kc[0] < 0 else self.x_ivc,
                        y_front + 4 if kc[0] < 0 else self.y_ivc,
                        kc[2],
                    ),
                    (self.x_ivc, self.y_ivc, kc[2] - 2),
                ],
                [5.5, 5.0, 5.0],
            )
            self._paint(0, _Shape([tube], warp=0.5, roughness=0), lambda c: ivc_hu, (0,), True)

    def _unlabeled_veins(self) -> None:
        """Portal, splenic and hepatic veins: bright tubes over fat and inside the liver."""
        A, D, L, yv = self.A, self.D, self.L, self.y_vb
        _, ivc_hu = self.vessel_hu
        conf = (0.06 * A, self.y_ao + self.r_ao + 12, L * 0.47)
        portal = _Tube(
            [conf, (0.28 * A, yv + 0.35 * D, L * 0.58), (0.45 * A, yv + 0.4 * D, L * 0.66)],
            [7, 7, 4],
        )
        self._paint(
            0, _Shape([portal], roughness=0), lambda c: ivc_hu - 10 + 5 * c.noise(5.0), (0, 1), True
        )
        splenic = _Tube(
            [conf, (-0.25 * A, self.y_ao + self.r_ao + 4, L * 0.5), (-0.55 * A, yv + 5, L * 0.6)],
            [5, 5, 4],
        )
        self._paint(0, _Shape([splenic], roughness=0), lambda c: ivc_hu - 10.0, (0,), True)
        top = self.ivc_top
        for tip in (
            (0.65 * A, yv + 0.1 * D, L * 0.82),
            (0.25 * A, self.y_ant - 0.3 * D, L * 0.8),
            (-0.2 * A, self.y_ant - 0.25 * D, L * 0.84),
        ):
            vein = _Tube([top, tip], [6, 2.5])
            self._paint(0, _Shape([vein], roughness=0), lambda c: ivc_hu - 15.0, (1,), True)

    # ---- assemble ----------------------------------------------------------------------------

    def build(self) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
        self._draw_body()
        self._background()
        self.lab = np.zeros(self.shape, np.uint8)
        self.seeds: dict[int, tuple[int, int, int, float]] = {}
        self._organs()
        img = self.img
        # One in-plane Gaussian both blurs the edges a little (partial volume) and correlates the
        # white noise added before it, like a reconstruction kernel does.
        sigma = float(np.clip(0.8 / self.dxy, 0.6, 1.0))
        kernel = np.exp(-0.5 * (np.arange(-4 * sigma, 4 * sigma + 1) / sigma) ** 2)
        gain = float(np.sum((kernel / kernel.sum()) ** 2))  # noise std factor per axis
        noise_rng = self._stream(2)
        white = noise_rng.standard_normal(self.shape, dtype=F32)
        white *= F32(self.noise_sd / gain)
        img += white
        del white
        ndimage.gaussian_filter(img, (sigma, sigma, 0), output=img, truncate=4.0)
        np.clip(img, -1024, 3071, out=img)
        np.rint(img, out=img)
        # Return Fortran-ordered (x fastest) arrays: NIfTI stores that order, so nibabel then
        # writes without a slow strided copy of its own. Casting and reordering share a pass.
        out = np.empty(self.shape, np.int16, order="F")
        out[...] = img
        lab = np.empty(self.shape, np.uint8, order="F")
        lab[...] = self.lab
        return out, lab, tuple(float(v) for v in self.spacing)


def generate_case(
    settings: PhantomSettings, index: int, labeled: bool = True
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Build one phantom case.

    Returns ``(image, label, spacing)``: image int16 HU of shape (size, size, Z) in RAS+ voxel
    order (air -1000), label uint8 of the same shape with the ids of :data:`ORGANS`, and the
    voxel spacing (x, y, z) in mm. The result depends only on ``(settings, index, labeled)``.
    """
    return _Case(settings, index, labeled).build()


# --------------------------------------------------------------------------------------------
# Writing the data set
# --------------------------------------------------------------------------------------------


def _affine(shape: tuple[int, ...], spacing: tuple[float, float, float]) -> np.ndarray:
    """RAS+ affine: diag(spacing), with the in-plane centre of the image at x = y = 0 mm."""
    affine = np.diag([*spacing, 1.0])
    affine[0, 3] = -(shape[0] - 1) / 2 * spacing[0]
    affine[1, 3] = -(shape[1] - 1) / 2 * spacing[1]
    return affine


def _save(data: np.ndarray, spacing: tuple[float, float, float], path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, _affine(data.shape, spacing))
    img.header.set_zooms(spacing)
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, str(path))


def _case_name(index: int, labeled: bool) -> str:
    return f"phantom_{index + 1:04d}" if labeled else f"phantom_u{index + 1:04d}"


def _write_one(root: str, settings: PhantomSettings, index: int, labeled: bool) -> float:
    """Generate and write one case; returns the seconds it took."""
    t0 = time.perf_counter()
    image, label, spacing = generate_case(settings, index, labeled)
    name = _case_name(index, labeled)
    base = Path(root)
    if labeled:
        _save(image, spacing, base / "imagesTr" / f"{name}_0000.nii.gz")
        _save(label, spacing, base / "labelsTr" / f"{name}.nii.gz")
    else:
        _save(image, spacing, base / "imagesUnlabeled" / f"{name}_0000.nii.gz")
    return time.perf_counter() - t0


def _limit_threads() -> None:
    # One BLAS thread per worker process: the pool already uses every core it is given.
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """End this worker when process `parent` dies, even by SIGKILL, which runs no cleanup.

    Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG); it is
    tied to the thread that spawned the worker, which is the one that submits to the pool
    and lives until the pool is shut down. Elsewhere a daemon thread polls the parent id.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # it died before the request took effect
                    os._exit(1)
                return
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _init_worker(parent: int) -> None:
    _die_with_parent(parent)
    _limit_threads()


def _dataset_json(settings: PhantomSettings) -> dict:
    return {
        "name": "phantom",
        "description": "Synthetic abdominal CT phantom with the 13 FLARE22 organs (HU, RAS+).",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{name: i for i, name in ORGANS.items()}},
        "numTraining": settings.cases,
        "file_ending": ".nii.gz",
        "phantom_settings": asdict(settings),
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_phantom(
    out: Path,
    settings: PhantomSettings,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write an nnU-Net raw data set of phantom cases to ``out`` and return ``out``.

    Layout: ``imagesTr/phantom_0001_0000.nii.gz`` + ``labelsTr/phantom_0001.nii.gz`` per labeled
    case, ``imagesUnlabeled/phantom_u0001_0000.nii.gz`` per unlabeled case, and
    ``dataset.json``, and last ``manifest.json`` (size and SHA-256 of every file, checked by
    whoever reuses the set: `benchmark.data.cache`). The set is built in a hidden sibling
    directory and moved into place at the end, replacing an existing ``out``, so an
    interrupted run never leaves a partial data set.
    ``progress(done, total)`` is called after each case; ``workers`` processes generate cases
    in parallel (1 = in this process). Workers are spawned, not forked, so a script calling
    this with ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard. Workers end
    with this process, even when it is killed; the next call removes what a killed call left.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Clear leftovers of killed runs (their owning process is gone).
    for stale in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
        pid = stale.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    jobs = [(i, True) for i in range(settings.cases)] + [
        (i, False) for i in range(settings.unlabeled)
    ]
    total = len(jobs)
    try:
        (tmp / "imagesTr").mkdir(parents=True)
        (tmp / "labelsTr").mkdir()
        if settings.unlabeled:
            (tmp / "imagesUnlabeled").mkdir()
        done = 0
        if workers <= 1 or total <= 1:
            for i, labeled in jobs:
                _write_one(str(tmp), settings, i, labeled)
                done += 1
                if progress:
                    progress(done, total)
        else:
            # Fresh interpreters: forking a parent that already runs threads (torch, BLAS) can
            # deadlock.
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                max_workers=min(workers, total),
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(os.getpid(),),
            ) as pool:
                futures = [pool.submit(_write_one, str(tmp), settings, i, lab) for i, lab in jobs]
                try:
                    for fut in as_completed(futures):
                        fut.result()
                        done += 1
                        if progress:
                            progress(done, total)
                except BaseException:
                    # Do not make the remaining cases of a run that has already failed.
                    for fut in futures:
                        fut.cancel()
                    raise
        (tmp / "dataset.json").write_text(json.dumps(_dataset_json(settings), indent=2) + "\n")
        write_manifest(tmp)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------


def _radiological(slice_xy: np.ndarray) -> np.ndarray:
    """(X, Y) RAS+ slice -> (rows, cols) with anterior up and patient right on image left."""
    return slice_xy[::-1, ::-1].T


def render_examples(dataset: Path, out_png: Path, n: int = 4) -> Path:
    """Draw ``n`` labeled axial slices of a phantom data set and save them as a PNG.

    Each row shows the slice in an abdominal window (W400/L40 HU) in radiological display
    (anterior up, patient right on image left) next to the same slice with a colour overlay of
    the organ labels; a legend names the organs. Slices are taken at different heights so that
    different organs show. Returns ``out_png``.
    """
    # A bare Figure renders with Agg and leaves the caller's pyplot backend alone.
    import matplotlib
    import nibabel as nib
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    dataset = Path(dataset)
    labels = sorted((dataset / "labelsTr").glob("*.nii.gz"))
    if not labels:
        raise FileNotFoundError(f"no labeled cases in {dataset / 'labelsTr'}")
    colors = matplotlib.colormaps["tab20"](np.linspace(0, 1, 20))[: len(ORGANS)]
    cmap = ListedColormap(np.vstack([[0, 0, 0, 0], colors]))
    fracs = np.linspace(0.92, 0.3, n) if n > 1 else np.array([0.6])
    fig = Figure(figsize=(10, 5 * n + 0.8))
    axes = fig.subplots(n, 2, squeeze=False)
    for row, frac in enumerate(fracs):
        lab_path = labels[row % len(labels)]
        name = lab_path.name.removesuffix(".nii.gz")
        img_path = dataset / "imagesTr" / f"{name}_0000.nii.gz"
        # Canonical (RAS+) orientation: a no-op for the phantom, needed for other data sets.
        lab_nii = nib.as_closest_canonical(nib.load(str(lab_path)))
        img_nii = nib.as_closest_canonical(nib.load(str(img_path)))
        lab = np.asarray(lab_nii.dataobj)
        img = np.asarray(img_nii.dataobj)
        nz = lab.shape[2]
        # Within a window around the requested height take the slice showing most organs.
        lo, hi = int(max(0, (frac - 0.08) * nz)), int(min(nz, (frac + 0.08) * nz + 1))
        counts = [len(np.unique(lab[:, :, k])) for k in range(lo, hi)]
        k = lo + int(np.argmax(counts))
        gray = _radiological(img[:, :, k].astype(np.float32))
        over = _radiological(lab[:, :, k])
        zooms = img_nii.header.get_zooms()
        for ax in axes[row]:
            ax.imshow(gray, cmap="gray", vmin=40 - 200, vmax=40 + 200, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.02, 0.5, "R", color="yellow", transform=ax.transAxes, va="center")
            ax.text(0.5, 0.97, "A", color="yellow", transform=ax.transAxes, ha="center", va="top")
        masked = np.ma.masked_where(over == 0, over)
        axes[row, 1].imshow(
            masked, cmap=cmap, vmin=-0.5, vmax=len(ORGANS) + 0.5, alpha=0.5, interpolation="nearest"
        )
        present = ", ".join(ORGANS[i] for i in np.unique(over) if i)
        axes[row, 0].set_title(
            f"{name}  z={k}/{nz}  {zooms[0]:.2f}x{zooms[1]:.2f}x{zooms[2]:.2f} mm", fontsize=9
        )
        axes[row, 1].set_title(present, fontsize=7, wrap=True)
    handles = [Patch(color=colors[i - 1], label=f"{i} {nm}") for i, nm in ORGANS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.8 / (5 * n + 0.8) + 0.02, 1, 1))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    return out_png
