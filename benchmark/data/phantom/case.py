"""One phantom case: its acquisition grid, random streams, the painter of shapes, and the build.

:class:`Case` owns the voxel grid (mm coordinates, spacing), the per-purpose random streams,
the volumes being painted and :meth:`Case.paint`, which rasterises a :class:`Shape` into them.
The anatomy is drawn by :mod:`.body` (outline, wall, spine, ribs, bowel) and :mod:`.organs`
(the 13 labeled organs and the unlabeled vessels); :meth:`Case.build` runs them in a fixed
order, because every draw comes from streams whose order fixes the phantom's bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from benchmark.data.phantom import body, organs
from benchmark.data.phantom.settings import FLOAT, PhantomSettings
from benchmark.data.phantom.shapes import Lattice, Primitive, Shape, Tube, Voxels, uniform


class Case:
    """Builds one phantom volume; see :func:`generate_case`."""

    # Body outline and landmarks in mm, drawn by `body.draw_body`.
    a: float  # half-width of the skin outline
    b_ant: float
    b_post: float
    p_ant: float
    p_post: float
    y0: float  # y of the body centre
    harmonics: list[tuple[int, float, float]]
    tf: float  # subcutaneous fat thickness
    tm: float  # muscle wall thickness
    scale_z: np.ndarray  # cross-section scale per slice
    A: float  # cavity half-width
    D: float  # depth from the vertebral body centre to the anterior wall
    y_ant: float
    y_back: float
    tf_back: float
    rx_vb: float
    ry_vb: float
    y_vb: float
    r_canal: float
    y_canal: float
    r_ao: float
    x_ao: float
    y_ao: float
    r_ivc: float
    x_ivc: float
    y_ivc: float
    # Set by `body.background`: the volumes painted and where organs may lie.
    muscle_hu: float
    keepout: np.ndarray  # (x, y): spine and back, never an organ
    space: np.ndarray  # (x, y, z) bool: abdominal cavity left for organs
    img: np.ndarray  # (x, y, z) float64 HU
    # Set by `build`: labels and, per organ, one painted voxel and its HU.
    lab: np.ndarray
    seeds: dict[int, tuple[int, int, int, float]]

    def __init__(self, settings: PhantomSettings, index: int, labeled: bool):
        self.s = settings
        self.key = [int(settings.seed), 1 if labeled else 2, int(index)]
        self.rng = self.stream(0)
        self._tags = 100
        rng = self.rng

        # Acquisition geometry.
        n = settings.size
        # Round like a scanner protocol would, but never out of the configured ranges.
        self.fov = float(np.clip(round(uniform(rng, *settings.fov_mm), 1), *settings.fov_mm))
        th_lo, th_hi = settings.thickness_mm
        self.dz = float(np.clip(round(uniform(rng, th_lo, th_hi), 2), th_lo, th_hi))
        ext = uniform(rng, *settings.extent_mm)
        nz_lo = math.ceil(settings.extent_mm[0] / self.dz - 1e-6)
        nz_hi = max(nz_lo, math.floor(settings.extent_mm[1] / self.dz + 1e-6))
        self.nz = int(np.clip(round(ext / self.dz), nz_lo, nz_hi))
        self.dxy = self.fov / n
        self.spacing = (self.dxy, self.dxy, self.dz)
        self.L = self.nz * self.dz
        # Voxel centres in mm; (0, 0) in-plane is the image centre, z = 0 the lowest slice.
        self.x = ((np.arange(n) - (n - 1) / 2) * self.dxy).astype(FLOAT)
        self.y = self.x.copy()
        self.z = (np.arange(self.nz) * self.dz).astype(FLOAT)
        self.shape = (n, n, self.nz)
        self.noise_sd = uniform(rng, *settings.noise_hu)
        self.contrast = bool(rng.random() < settings.oral_contrast)

        half = self.fov / 2
        self.deform = Lattice(
            self.stream(1),
            (-half, -half, 0),
            (half, half, self.L),
            (70.0, 70.0, 60.0),
            fields=2,
            scale=settings.deform_mm / 2.5,
        )
        np.clip(self.deform.coef, -settings.deform_mm, settings.deform_mm, out=self.deform.coef)

    # ---- helpers ---------------------------------------------------------------------------

    def stream(self, tag: int) -> np.random.Generator:
        """Independent generator per purpose so that draws never shift each other."""
        return np.random.default_rng(np.random.SeedSequence([*self.key, tag]))

    def next_stream(self) -> np.random.Generator:
        """A fresh stream for the next shape or texture painted."""
        self._tags += 1
        return self.stream(self._tags)

    def u(self, lo: float, hi: float) -> float:
        """One draw from U(lo, hi) of the case's main stream."""
        return uniform(self.rng, lo, hi)

    def jit(self, sd: float = 5.0) -> float:
        """Random offset (mm) of a landmark, from the case's main stream."""
        return float(self.rng.normal(0, sd))

    def slices(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[slice, ...] | None:
        """Index slices of the voxels whose centres lie in the mm box [lo, hi], or None."""
        out = []
        for axis, a, b in zip((self.x, self.y, self.z), lo, hi, strict=True):
            i0 = int(np.searchsorted(axis, a, "left"))
            i1 = int(np.searchsorted(axis, b, "right"))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)

    def index(self, p: Sequence[float]) -> tuple[int, int, int]:
        """Nearest voxel of a point in mm."""
        return tuple(
            int(np.clip(np.abs(axis - v).argmin(), 0, len(axis) - 1))
            for axis, v in zip((self.x, self.y, self.z), p, strict=True)
        )

    def box_noise(
        self, step: Sequence[float], lo: Sequence[float], hi: Sequence[float]
    ) -> tuple[np.ndarray, tuple[slice, ...]] | None:
        """Unit smooth noise of knot ``step`` (mm) over the voxels in the mm box [lo, hi].

        Returns (noise, slices) or None when the box holds no voxel. The lattice spans the
        physical box, so its random draws do not depend on the matrix size.
        """
        rng = self.next_stream()
        sl = self.slices(lo, hi)
        if sl is None:
            return None
        lat = Lattice(rng, lo, hi, step)
        return lat.noise(self.x[sl[0]], self.y[sl[1]], self.z[sl[2]]), sl

    def paint(
        self,
        label: int,
        shape: Shape,
        hu: Callable[[Voxels], np.ndarray],
        allowed: np.ndarray | None = None,
        image_only: bool = False,
    ) -> None:
        """Rasterise ``shape`` in its bounding box and paint label (unless image_only) and HU.

        ``allowed`` (label ids) restricts painting to voxels that currently carry one of them;
        by default a shape may cover background and earlier organs inside the organ space.
        """
        rough_lat_rng = self.next_stream()
        tex_rng = self.next_stream()
        lo, hi = shape.bounds()
        margin = self.s.deform_mm * shape.warp + 6.0
        m3 = np.array([margin, margin, 2.0])
        sl = self.slices(lo - m3, hi + m3)
        nom_lo, nom_hi = lo - m3, hi + m3
        if sl is not None:
            xs, ys, zs = self.x[sl[0]], self.y[sl[1]], self.z[sl[2]]
            bshape = (len(xs), len(ys), len(zs))
            if shape.warp > 0 and self.s.deform_mm > 0:
                d = self.deform.eval(xs, ys, zs) * FLOAT(shape.warp)
                X = xs[:, None, None] + d[0]
                Y = ys[None, :, None] + d[1]
            else:
                X = np.broadcast_to(xs[:, None, None], bshape)
                Y = np.broadcast_to(ys[None, :, None], bshape)
            Z = np.broadcast_to(zs[None, None, :], bshape)
            X, Y = np.broadcast_to(X, bshape), np.broadcast_to(Y, bshape)

            def local(p: Primitive) -> tuple[slice, ...] | None:
                plo, phi_ = p.bounds()
                g = self.slices(plo - m3, phi_ + m3)
                if g is None:
                    return None
                out = []
                for gs, bs in zip(g, sl, strict=True):
                    a, b = max(gs.start, bs.start), min(gs.stop, bs.stop)
                    if b <= a:
                        return None
                    out.append(slice(a - bs.start, b - bs.start))
                return tuple(out)

            f = np.full(bshape, np.inf, FLOAT)
            pieces = [
                q for p in shape.parts for q in (p.segments() if isinstance(p, Tube) else [p])
            ]
            for p in pieces:
                ls = local(p)
                if ls is not None:
                    np.minimum(f[ls], p.field(X[ls], Y[ls], Z[ls]), out=f[ls])
            if shape.roughness > 0:
                step = float(np.clip(0.25 * (hi - lo)[:2].min(), 6.0, 25.0))
                lat = Lattice(rough_lat_rng, nom_lo, nom_hi, (step, step, step))
                f += FLOAT(shape.roughness) * lat.noise(xs, ys, zs)
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
                i, j, k = self.index((plo + phi_) / 2)
            sl = (slice(i, i + 1), slice(j, j + 1), slice(k, k + 1))
            xs, ys, zs = self.x[sl[0]], self.y[sl[1]], self.z[sl[2]]
            f = np.zeros((1, 1, 1), FLOAT)
            mask = np.ones((1, 1, 1), bool)

        idx = np.nonzero(mask)
        tex_cache: dict[float, np.ndarray] = {}

        def noise(step: float) -> np.ndarray:
            if step not in tex_cache:
                lat = Lattice(tex_rng, nom_lo, nom_hi, (step, step, step))
                tex_cache[step] = lat.noise(xs, ys, zs)[idx]
            return tex_cache[step]

        ctx = Voxels(f[idx], xs[idx[0]], ys[idx[1]], zs[idx[2]], noise)
        values = np.asarray(hu(ctx), FLOAT)
        self.img[sl][idx] = values
        if not image_only:
            self.lab[sl][idx] = label
            self.seeds[label] = (
                sl[0].start + int(idx[0][0]),
                sl[1].start + int(idx[1][0]),
                sl[2].start + int(idx[2][0]),
                float(values.flat[0]),
            )

    def build(self) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
        """Body, organs, then noise and blur: ``(image, label, spacing)``, see generate_case."""
        body.draw_body(self)
        body.background(self)
        self.lab = np.zeros(self.shape, np.uint8)
        self.seeds = {}
        organs.paint_organs(self)
        img = self.img
        # One in-plane Gaussian both blurs the edges a little (partial volume) and correlates the
        # white noise added before it, like a reconstruction kernel does.
        sigma = float(np.clip(0.8 / self.dxy, 0.6, 1.0))
        kernel = np.exp(-0.5 * (np.arange(-4 * sigma, 4 * sigma + 1) / sigma) ** 2)
        gain = float(np.sum((kernel / kernel.sum()) ** 2))  # noise std factor per axis
        noise_rng = self.stream(2)
        white = noise_rng.standard_normal(self.shape, dtype=FLOAT)
        white *= FLOAT(self.noise_sd / gain)
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
    return Case(settings, index, labeled).build()
