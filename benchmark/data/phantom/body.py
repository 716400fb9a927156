"""The phantom's body around the organs: outline, skin, fat, muscle wall, spine, ribs, bowel, table.

:func:`draw_body` draws the outline and the landmarks the organs are placed by (cavity
width, vertebral body, aorta, IVC) onto the :class:`~.case.Case`; :func:`background` paints
everything that is not a labeled organ and leaves ``case.space``, where organs may lie.
All lengths are in mm, intensities in HU.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from benchmark.data.phantom.settings import AIR_HU, FLOAT
from benchmark.data.phantom.shapes import smoothstep, uniform

if TYPE_CHECKING:
    from benchmark.data.phantom.case import Case


def outline(case: Case, phi: np.ndarray) -> np.ndarray:
    """Skin radius (mm) from the body centre at polar angle phi (0 = patient right)."""
    c, s = np.abs(np.cos(phi)), np.sin(phi)
    b = np.where(s >= 0, case.b_ant, case.b_post)
    p = np.where(s >= 0, case.p_ant, case.p_post)
    r = ((c / case.a) ** p + (np.abs(s) / b) ** p) ** (-1 / p)
    for k, amp, ph in case.harmonics:
        r = r * (1 + amp * np.cos(k * phi + ph))
    # Shallow furrow over the spine.
    d = np.angle(np.exp(1j * (phi + np.pi / 2)))
    return r * (1 - 0.03 * np.exp(-((d / 0.15) ** 2)))


def fat(case: Case, phi: np.ndarray) -> np.ndarray:
    """Subcutaneous fat thickness (mm); thicker on the flanks and the back."""
    c, s = np.cos(phi), np.sin(phi)
    return case.tf * (0.7 + 0.45 * c * c + 0.25 * np.clip(-s, 0, 1))


def muscle(case: Case, phi: np.ndarray) -> np.ndarray:
    """Abdominal wall muscle thickness (mm)."""
    c = np.cos(phi)
    return case.tm * (0.9 + 0.35 * c * c)


def draw_body(case: Case) -> None:
    """Draw the outline, wall thicknesses and the landmarks organs are placed by (mm)."""
    rng = case.rng
    half = case.fov / 2
    case.a = half * uniform(rng, 0.70, 0.84)
    case.b_ant = case.a * uniform(rng, 0.64, 0.78)
    case.b_post = case.b_ant * uniform(rng, 0.86, 1.0)
    case.p_ant = uniform(rng, 2.0, 2.3)
    case.p_post = uniform(rng, 2.4, 3.0)
    case.y0 = uniform(rng, -12, 4)
    case.harmonics = [
        (k, float(rng.normal(0, 0.012)), uniform(rng, 0, 2 * np.pi)) for k in (2, 3, 4)
    ]
    case.tf = uniform(rng, 8, 30)
    case.tm = uniform(rng, 9, 13)
    # Cross-section breathes slowly along z.
    za = uniform(rng, 0, 2 * np.pi)
    case.scale_z = (
        1
        + 0.03 * np.sin(2 * np.pi * case.z / uniform(rng, 250, 400) + za)
        + 0.02 * (case.z / case.L)
    ).astype(FLOAT)

    # Landmarks (mm): inner wall, vertebral body, aorta.
    right, ant, post = 0.0, np.pi / 2, -np.pi / 2

    def wall(phi: float) -> float:
        return float(fat(case, np.float64(phi)) + muscle(case, np.float64(phi)))

    case.A = float(outline(case, np.float64(right))) - wall(right)  # cavity half-width
    case.y_ant = case.y0 + float(outline(case, np.float64(ant))) - wall(ant)
    case.y_back = case.y0 - float(outline(case, np.float64(post)))
    case.tf_back = float(fat(case, np.float64(post)))
    case.rx_vb, case.ry_vb = uniform(rng, 21, 26), uniform(rng, 15, 19)
    case.r_canal = uniform(rng, 8, 10)
    case.y_vb = case.y_back + case.tf_back + uniform(rng, 56, 66)
    case.y_canal = case.y_vb - case.ry_vb - case.r_canal + 1
    case.D = case.y_ant - case.y_vb  # depth from vertebral body centre to anterior wall
    case.r_ao = uniform(rng, 9.5, 12.5)
    case.x_ao = -uniform(rng, 8, 16)
    case.y_ao = case.y_vb + case.ry_vb + case.r_ao + uniform(rng, 2, 5)
    case.r_ivc = uniform(rng, 10, 13)
    case.x_ivc = uniform(rng, 18, 26)
    case.y_ivc = case.y_vb + case.ry_vb + uniform(rng, 4, 9)


def background(case: Case) -> None:
    """Paint air, skin, fat, muscle wall, table, lungs, diaphragm, spine, ribs and bowel into
    ``case.img`` and leave ``case.space``, the voxels organs may occupy."""
    rng = case.rng
    xg, yg = case.x[:, None], case.y[None, :] - FLOAT(case.y0)
    phi = np.arctan2(yg, xg).astype(FLOAT)
    r2 = np.hypot(xg, yg).astype(FLOAT)
    R2 = outline(case, phi).astype(FLOAT)
    T1 = fat(case, phi).astype(FLOAT)
    T2 = (T1 + muscle(case, phi)).astype(FLOAT)
    # Linea alba: the muscle wall thins to a fascia at the anterior midline.
    alba = (np.exp(-((xg / 4.0) ** 2)) * (yg > 0)).astype(FLOAT)
    T2 = T2 - alba * FLOAT(0.5 * case.tm)

    # A voxel lies at depth t (mm) or deeper below the skin along the ray from the body
    # centre when (r + t) / R <= scale(z); counting the thresholds passed gives the layer
    # (0 air, 1 skin, 2 subcutaneous fat, 3 muscle wall, 4 abdominal cavity).
    scale = case.scale_z[None, None, :]
    inv = 1 / R2
    layer = np.zeros(case.shape, np.uint8)
    for t in (0.0, 1.6, T1, T2):
        layer += ((r2 + t) * inv)[:, :, None] <= scale
    fat_hu, muscle_hu = uniform(rng, -115, -90), uniform(rng, 40, 60)
    lut = np.array([AIR_HU, uniform(rng, 0, 40), fat_hu, muscle_hu, uniform(rng, -110, -85)], FLOAT)
    img = lut[layer]
    table(case, img, layer)
    cavity = layer == 4
    del layer
    case.muscle_hu = muscle_hu

    # Lung bases and diaphragm at the top, behind and beside the liver and spleen dome.
    lung = np.zeros(case.shape, bool)
    dia = np.zeros(case.shape, bool)
    top = case.L * uniform(rng, 0.80, 0.9)
    w_max = uniform(rng, 30, 60)
    for side, onset in ((1, top), (-1, top - uniform(rng, 0, 15))):
        mid = -np.pi / 2 + side * uniform(rng, 0.8, 1.1)
        g = np.exp(-((np.angle(np.exp(1j * (phi - mid))) / 0.9) ** 2)).astype(FLOAT)
        wz = (w_max * np.clip((case.z - onset) / max(case.L - onset, 1.0), 0, 1) ** 0.7).astype(
            FLOAT
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
    spine_and_muscles(case, img, cavity)
    ribs(case, img)

    # Where organs may lie: abdominal cavity, not lung or diaphragm, not spine or back.
    keepout = case.keepout[:, :, None]
    lung &= ~keepout
    dia &= ~keepout
    space = cavity & ~keepout
    space &= ~lung
    space &= ~dia
    case.space = space

    bowel(case, img, space)
    half = case.fov / 2
    got = case.box_noise((15.0, 15.0, 15.0), (-half, -half, top - 20), (half, half, case.L))
    dia_hu = uniform(rng, 30, 50)
    if got is not None:
        lung_tex, ks = got
        sub, lg = img[ks], lung[ks]
        sub[lg] = -860 + 30 * lung_tex[lg]
        sub[dia[ks]] = dia_hu
    case.img = img


def table(case: Case, img: np.ndarray, layer: np.ndarray) -> None:
    """Curved CT couch under the back: two thin shells around low-density foam."""
    rng = case.rng
    y_top = case.y_back * 1.04 - uniform(rng, 4, 12)
    xg, yg = case.x[:, None], case.y[None, :]
    curve = y_top + 0.0006 * xg**2
    inside = np.abs(xg) < case.fov * 0.42
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


def spine_and_muscles(case: Case, img: np.ndarray, cavity: np.ndarray) -> None:
    """Back muscles, psoas and vertebrae (segmented along z); sets ``case.keepout``."""
    rng = case.rng
    xg, yg = case.x[:, None], case.y[None, :]
    yv, rx, ry, rc, yc = case.y_vb, case.rx_vb, case.ry_vb, case.r_canal, case.y_canal

    # Back muscles (erector spinae) fill the space between skin fat and the transverse
    # processes beside the spinous process.
    back_in = case.y_back + case.tf_back + 1
    ps_ry = (yc + 6 - back_in) / 2
    ps_rx = uniform(rng, 22, 28)
    ps_cx = rc + ps_rx * 0.85
    ps_cy = back_in + ps_ry
    para = np.abs((np.abs(xg) - ps_cx) / ps_rx) ** 3 + np.abs((yg - ps_cy) / ps_ry) ** 3 < 1
    # Quadratus lumborum: flat muscle lateral to the back muscles, lower half only.
    ql = ((np.abs(xg) - (ps_cx + ps_rx + 6)) / 18.0) ** 2 + ((yg - (ps_cy + 8)) / 11.0) ** 2 < 1
    m_hu = case.muscle_hu
    img[para] = m_hu + 4
    kq = slice(0, int(np.searchsorted(case.z, case.L * 0.55)))
    img[:, :, kq][ql[:, :, None] & cavity[:, :, kq]] = m_hu

    # Psoas: grows from a thin strip high up to a thick muscle at the bottom.
    z_top = case.L * uniform(rng, 0.5, 0.65)
    r_bot = uniform(rng, 18, 26)
    frac = np.clip((z_top - case.z) / z_top, 0, 1)
    r_ps = (4 + (r_bot - 4) * frac**0.8).astype(FLOAT)
    kk = np.nonzero(frac > 0)[0]
    if len(kk):
        ks = slice(int(kk[0]), int(kk[-1]) + 1)
        for side in (1, -1):
            lo = (side * (rx - 4) - 60, yv - 40, 0)
            hi = (side * (rx - 4) + 60, yv + 40, case.L)
            sl = case.slices(np.minimum(lo, hi), np.maximum(lo, hi))
            if sl is None:
                continue
            sl = (sl[0], sl[1], ks)
            r = r_ps[ks][None, None, :]
            cx = side * (rx - 2 + r)
            m = ((case.x[sl[0]][:, None, None] - cx) / r) ** 2 + (
                (case.y[sl[1]][None, :, None] - (yv - 3)) / (0.85 * r)
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
    pedicle = (np.abs(xg) >= rc - 1) & (np.abs(xg) < rc + 6) & (yg >= yc - 2) & (yg < yv - ry + 4)
    sp_tip = case.y_back + case.tf_back + uniform(rng, 5, 12)
    spinous = (np.abs(xg) < 3.5 + 0.04 * (yg - sp_tip)) & (yg >= sp_tip) & (yg < yc - rc - 3)
    x_tp = uniform(rng, 36, 48)
    # Transverse processes taper and sweep slightly backwards toward their tips.
    ax = np.abs(xg)
    tp_frac = np.clip((ax - rc - 2) / (x_tp - rc - 2), 0, 1)
    transverse = (np.abs(yg - (yc + 3 - 6 * tp_frac)) < 3.5 - 1.5 * tp_frac) & (
        (ax >= rc + 2) & (ax < x_tp)
    )
    case.keepout = (
        (vb_f < 1.25) | canal | (rr < rc + 8) | (para & (yg < yc + 4)) | transverse | pedicle
    )
    case.keepout |= (yg < yc + 2) & (np.abs(xg) < ps_cx + ps_rx)

    period, disc = uniform(rng, 32, 38), uniform(rng, 7, 10)
    offset = uniform(rng, 0, period)
    cortical, cancellous = uniform(rng, 700, 1000), uniform(rng, 180, 300)
    disc_hu, csf_hu = uniform(rng, 70, 100), uniform(rng, 0, 20)
    got = case.box_noise(
        (3.0, 3.0, 4.0), (-x_tp - 5, sp_tip - 5, 0), (x_tp + 5, yv + ry + 5, case.L)
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
    for k, zk in enumerate(case.z):
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
            edt = ndimage.distance_transform_edt(m, sampling=case.dxy)
            rim_cache[on] = (m, edt < 1.6)
        m, rim = rim_cache[on]
        sl_img[m] = cancellous + 40
        sl_img[m & rim] = cortical


def ribs(case: Case, img: np.ndarray) -> None:
    """Partial ring of rib cross-sections in the upper wall; ribs run down anteriorly."""
    rng = case.rng
    spacing = uniform(rng, 24, 30)
    drop = uniform(rng, 70, 100)  # mm a rib descends from the back to the front
    top = case.L + uniform(rng, 40, 80)
    # The last (floating) rib starts somewhat above the middle of the volume.
    n_ribs = max(2, int((top - case.L * uniform(rng, 0.5, 0.62)) / spacing) + 1)
    rib_hu, marrow_hu = uniform(rng, 600, 900), uniform(rng, 200, 320)
    cart_hu = uniform(rng, 80, 200)
    for k, zk in enumerate(case.z):
        s = float(case.scale_z[k])
        for j in range(n_ribs):
            z_head = top - j * spacing
            # The lowest two are short floating ribs.
            psi_end = np.deg2rad(150 if j < n_ribs - 2 else 85)
            psi = np.deg2rad(30) + (z_head - float(zk)) / drop * np.deg2rad(120)
            if not np.deg2rad(32) <= psi <= psi_end:
                continue
            for side in (1, -1):
                phi = -np.pi / 2 + side * psi
                rad = s * float(outline(case, np.float64(phi))) - float(
                    fat(case, np.float64(phi)) + 0.5 * muscle(case, np.float64(phi))
                )
                cx, cy = rad * math.cos(phi), case.y0 + rad * math.sin(phi)
                sl = case.slices((cx - 10, cy - 10, zk), (cx + 10, cy + 10, zk))
                if sl is None:
                    continue
                u0 = case.x[sl[0]][:, None] - cx
                v0 = case.y[sl[1]][None, :] - cy
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


def bowel(case: Case, img: np.ndarray, space: np.ndarray) -> None:
    """Textured bowel loops in the intraperitoneal space, mostly low and anterior."""
    rng = case.rng
    z_fade = case.L * uniform(rng, 0.55, 0.7)
    wall_hu = uniform(rng, 30, 60)
    fluid = uniform(rng, 150, 300) if case.contrast else uniform(rng, 0, 25)
    lo, hi = (-case.A - 5, case.y_vb - 30, 0), (case.A + 5, case.y_ant + 5, case.L)
    got, got_air = (
        case.box_noise((13.0, 13.0, 16.0), lo, hi),
        case.box_noise((22.0, 22.0, 25.0), lo, hi),
    )
    if got is None or got_air is None:
        return
    (f, sl), (air_f, _) = got, got_air
    xs, ys, zs = case.x[sl[0]], case.y[sl[1]], case.z[sl[2]]
    # Loops fade out behind the front of the spine (retroperitoneal fat) and toward the top
    # (liver and stomach live there).
    y_front = case.y_vb + 12 - 0.35 * np.abs(xs)[:, None]
    wy = smoothstep((ys[None, :] - y_front) / 20.0)
    wz = smoothstep((z_fade - zs) / 30.0)
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
