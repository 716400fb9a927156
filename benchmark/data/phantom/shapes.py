"""Shape primitives of the phantom in millimetres: smooth random fields, ellipsoids and tubes.

Fields are normalised radii (< 1 inside a shape); :class:`Shape` unites primitives, cuts some
away and roughens the surface; :class:`Voxels` is what an organ's intensity function sees.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from benchmark.data.phantom.settings import FLOAT


def _bspline_weights(u: np.ndarray, origin: float, step: float, count: int) -> np.ndarray:
    """Cubic B-spline weights, shape (len(u), count), of knots ``origin + j * step`` (mm)."""
    t = np.abs((u[:, None] - (origin + step * np.arange(count))[None, :]) / step)
    w = np.where(t < 1, (4 - 6 * t**2 + 3 * t**3) / 6, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    return w.astype(FLOAT)


class Lattice:
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
        self.coef = (rng.standard_normal((fields, *counts)) * scale).astype(FLOAT)
        self.normed = False

    def eval(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """Fields at the grid ``xs x ys x zs`` (mm), shape (fields, nx, ny, nz), `FLOAT`."""
        c = self.coef
        wx, wy, wz = (
            _bspline_weights(np.asarray(u, FLOAT), o, s, n)
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
            self.coef = self.coef[:1] * FLOAT(self._NORM)
            self.normed = True
        return self.eval(xs, ys, zs)[0]


# --------------------------------------------------------------------------------------------
# Shape primitives (all in mm; fields are normalised radii, < 1 inside)
# --------------------------------------------------------------------------------------------


@dataclass
class Ellipsoid:
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
        dz = z - FLOAT(cz)
        u0 = x - (FLOAT(cx) + FLOAT(self.lean[0]) * dz)
        v0 = y - (FLOAT(cy) + FLOAT(self.lean[1]) * dz)
        c, s = FLOAT(math.cos(self.angle)), FLOAT(math.sin(self.angle))
        u = (c * u0 + s * v0) * FLOAT(1 / self.radii[0])
        v = (c * v0 - s * u0) * FLOAT(1 / self.radii[1])
        w = dz * FLOAT(1 / self.radii[2])
        if self.power == 2.0:
            return np.sqrt(u * u + v * v + w * w)
        p = FLOAT(self.power)
        return (np.abs(u) ** p + np.abs(v) ** p + np.abs(w) ** p) ** FLOAT(1 / self.power)


@dataclass
class Tube:
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

    def segments(self) -> list[Tube]:
        """One tube per polyline segment, so each is evaluated only in its own box."""
        return [
            Tube(self.points[i : i + 2], self.radii[i : i + 2], self.squash)
            for i in range(len(self.points) - 1)
        ]

    def field(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        k = FLOAT(1 / self.squash)
        best = None
        for (a, b), (ra, rb) in zip(
            zip(self.points[:-1], self.points[1:], strict=True),
            zip(self.radii[:-1], self.radii[1:], strict=True),
            strict=True,
        ):
            d = b - a
            d[1] /= self.squash
            dd = float(d @ d) or 1e-9
            qx, qy, qz = x - FLOAT(a[0]), (y - FLOAT(a[1])) * k, z - FLOAT(a[2])
            t = np.clip(
                (qx * FLOAT(d[0]) + qy * FLOAT(d[1]) + qz * FLOAT(d[2])) * FLOAT(1 / dd), 0, 1
            )
            ex, ey, ez = qx - t * FLOAT(d[0]), qy - t * FLOAT(d[1]), qz - t * FLOAT(d[2])
            f = np.sqrt(ex * ex + ey * ey + ez * ez) / (FLOAT(ra) + t * FLOAT(rb - ra))
            best = f if best is None else np.minimum(best, f)
        return best


Primitive = Ellipsoid | Tube


@dataclass
class Shape:
    """Union of primitives minus ``cuts``, with a rough surface and a share of the deformation."""

    parts: list[Primitive]
    cuts: list[Primitive] = field(default_factory=list)
    warp: float = 1.0
    roughness: float = 0.05

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = zip(*(p.bounds() for p in self.parts), strict=True)
        return np.min(lo, axis=0), np.max(hi, axis=0)


@dataclass
class Voxels:
    """Voxels of one organ handed to its intensity function (1D arrays over the mask)."""

    f: np.ndarray  # normalised radius of the shape field (0 centre, 1 surface)
    x: np.ndarray  # undeformed voxel coordinates in mm
    y: np.ndarray
    z: np.ndarray
    noise: Callable[[float], np.ndarray]  # unit smooth noise of a given knot step (mm)


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One draw from U(lo, hi) as a Python float."""
    return float(rng.uniform(lo, hi))


def smoothstep(v: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, a smooth cubic ramp between."""
    v = np.clip(v, 0, 1)
    return v * v * (3 - 2 * v)
