"""The phantom's 13 labeled organs, one function per organ group.

Each function places its organs by the body landmarks of the :class:`~.case.Case` (mm) and
paints them with :meth:`~.case.Case.paint`. :func:`paint_organs` calls them, and the unlabeled
colon and vessels of :mod:`.unlabeled` between them, in a fixed order:
every draw comes from the case's one random stream, so the order fixes the phantom's bytes,
and a later organ may cover an earlier one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from benchmark.data.phantom import unlabeled
from benchmark.data.phantom.settings import ORGANS
from benchmark.data.phantom.shapes import Ellipsoid, Shape, Tube, Voxels

if TYPE_CHECKING:
    from benchmark.data.phantom.case import Case

Point = tuple[float, float, float]
Kidney = tuple[Point, float]
"""A kidney's centre and its half-length along z (mm)."""


@dataclass(frozen=True)
class Levels:
    """HU levels of one case shared by several organ groups."""

    liver: float
    spleen: float
    cortex: float  # renal cortex
    aorta: float
    ivc: float
    fluid: float  # stomach and duodenum content (bright with oral contrast)
    wall: float  # stomach and duodenum wall

    @classmethod
    def draw(cls, case: Case) -> Levels:
        u = case.u
        liver, spleen, cortex, aorta = u(50, 70), u(45, 55), u(150, 200), u(150, 250)
        ivc = max(120.0, aorta - u(0, 60))
        fluid = u(150, 300) if case.contrast else u(5, 25)
        return cls(liver, spleen, cortex, aorta, ivc, fluid, u(45, 70))


@dataclass(frozen=True)
class Stomach:
    """Stomach landmarks the duodenum and the esophagus attach to (mm)."""

    pylorus: Point
    fundus: Point
    r_fundus: float


def _body_scale(case: Case) -> float:
    """Organs given in absolute mm follow the body size (a cavity half-width of ~118 mm is
    an average adult)."""
    return float(np.clip(case.A / 118.0, 0.8, 1.15))


def liver(case: Case, hu: Levels) -> None:
    """1 liver: big right lobe, left lobe reaching over the stomach, caudate, inferior tip."""
    u, jit = case.u, case.jit
    A, D, L, yv, y_ant = case.A, case.D, case.L, case.y_vb, case.y_ant
    y_pi = case.y_back + case.tf_back + case.tm  # inner posterior wall
    sc = u(0.9, 1.1)
    zc = L * u(0.68, 0.74)
    shape = Shape(
        [
            Ellipsoid(
                (0.5 * A + jit(), (y_pi + y_ant) / 2 + jit(), zc),
                (0.58 * A * sc, 0.55 * (y_ant - y_pi) * sc, 0.3 * L * sc),
                angle=u(-0.15, 0.15),
            ),
            Ellipsoid(
                (-0.18 * A + jit(), y_ant - 0.24 * D + jit(3), zc + 0.08 * L),
                (0.42 * A * sc, 0.24 * D * sc, 0.17 * L * sc),
                angle=u(-0.25, 0.05),
            ),
            Ellipsoid((0.1 * A, yv + 0.35 * D, zc + 0.02 * L), (0.15 * A, 0.14 * D, 0.1 * L)),
            Ellipsoid(
                (0.62 * A + jit(), yv + 0.2 * D + jit(), zc - 0.27 * L),
                (0.26 * A * sc, 0.28 * D * sc, 0.12 * L * sc),
            ),
        ],
        roughness=0.04,
    )

    def texture(c: Voxels) -> np.ndarray:
        return hu.liver + 4 * c.noise(10.0) + 2 * c.noise(4.0)

    case.paint(1, shape, texture)


def spleen(case: Case, hu: Levels) -> None:
    """3 spleen: crescent along the left posterolateral wall."""
    u, jit = case.u, case.jit
    A, L, yv = case.A, case.L, case.y_vb
    sc = u(0.85, 1.15) * _body_scale(case)
    sp_c = (-0.68 * A + jit(), yv + u(-5, 10), L * u(0.72, 0.78))
    shape = Shape(
        [
            Ellipsoid(
                sp_c,
                (52 * sc, 22 * sc, 0.17 * L * sc),
                angle=np.deg2rad(u(-60, -35)),
                power=2.2,
            )
        ],
        cuts=[Ellipsoid((sp_c[0] + 30, sp_c[1] + 28, sp_c[2]), (26, 26, 0.2 * L))],
        roughness=0.04,
    )
    case.paint(3, shape, lambda c: hu.spleen + 3 * c.noise(8.0))


def stomach(case: Case, hu: Levels) -> Stomach:
    """11 stomach: fundus high and posterior on the left, body, antrum sweeping right."""
    u, jit = case.u, case.jit
    A, D, L, yv, y_ant = case.A, case.D, case.L, case.y_vb, case.y_ant
    sc = u(0.85, 1.15)
    z_f = L * u(0.82, 0.88)
    pylorus = (0.14 * A + jit(), y_ant - 0.3 * D + jit(3), L * u(0.5, 0.56))
    fundus = (-0.42 * A + jit(), yv + 0.2 * D + jit(), z_f)
    body = (-0.36 * A + jit(), yv + 0.55 * D + jit(), L * 0.68)
    antrum = (-0.05 * A + jit(), y_ant - 0.27 * D + jit(3), L * u(0.53, 0.58))
    r_f = 0.27 * A * sc
    shape = Shape(
        [
            Ellipsoid(fundus, (r_f, r_f * 0.9, 0.11 * L * sc)),
            Tube([fundus, body, antrum, pylorus], [r_f * 0.9, 0.22 * A * sc, 0.13 * A * sc, 10]),
        ],
        roughness=0.05,
    )
    air_frac = u(-0.3, 1.0)  # < 0 -> no air
    y_level = body[1] + air_frac * 0.22 * A

    def texture(c: Voxels) -> np.ndarray:
        v = hu.fluid + 12 * c.noise(8.0)
        v = np.where((c.y > y_level) & (c.f < 0.8), -950 + 10 * c.noise(8.0), v)
        return np.where(c.f > 0.84, hu.wall + 5 * c.noise(5.0), v)

    case.paint(11, shape, texture)
    return Stomach(pylorus, fundus, r_f)


def kidneys(case: Case, hu: Levels) -> tuple[Kidney, Kidney]:
    """2 right / 13 left kidney: beside the spine, right one lower; hilum anteromedial.

    Returns (right, left) kidney centres and half-lengths, which the adrenals and renal
    veins are placed by.
    """
    u, jit = case.u, case.jit
    A, L, yv = case.A, case.L, case.y_vb
    kb = _body_scale(case)
    placed: list[Kidney] = []
    for label, side, zf in ((2, 1, u(0.33, 0.38)), (13, -1, u(0.38, 0.44))):
        sc = u(0.88, 1.12) * kb
        kc = (side * (0.48 * A + jit(4)), yv - u(0, 8), L * zf)
        ang = np.deg2rad(side * u(28, 45))
        normal = (-side * math.sin(abs(ang)), math.cos(ang))
        k_rz = u(45, 56) * sc
        shape = Shape(
            [
                Ellipsoid(
                    kc,
                    (30 * sc, 22 * sc, k_rz),
                    angle=float(ang),
                    lean=(-side * 0.15, -0.1),
                )
            ],
            cuts=[
                Ellipsoid(
                    (kc[0] + 19 * normal[0], kc[1] + 19 * normal[1], kc[2]),
                    (9, 9, 0.35 * k_rz),
                )
            ],
            warp=0.6,
            roughness=0.03,
        )
        medulla = hu.cortex - u(25, 70)

        def texture(c: Voxels, medulla: float = medulla) -> np.ndarray:
            v = np.where(c.f > 0.7, hu.cortex, medulla + 15 * c.noise(5.0))
            v = np.where((c.f < 0.7) & (c.noise(4.0) > 0.9), hu.cortex - 10, v)
            return v + 4 * c.noise(6.0)

        case.paint(label, shape, texture)
        placed.append((kc, k_rz))
    return placed[0], placed[1]


def duodenum(case: Case, hu: Levels, pylorus: Point) -> None:
    """12 duodenum: C-loop from the pylorus around the pancreatic head to the DJ flexure."""
    u, jit = case.u, case.jit
    A, D, L, yv = case.A, case.D, case.L, case.y_vb
    r_d = u(9, 12)
    x_d2 = 0.42 * A + jit(3)
    y_d3 = case.y_ao + case.r_ao + r_d + 2
    points = [
        pylorus,
        (0.3 * A, yv + 0.45 * D, L * 0.53),
        (x_d2, yv + 0.3 * D, L * 0.5),
        (x_d2 + jit(2), yv + 0.25 * D, L * 0.36),
        (0.12 * A, y_d3, L * 0.3),
        (-0.2 * A, y_d3 + 3, L * 0.32),
        (-0.26 * A, yv + 0.4 * D, L * 0.42),
    ]
    shape = Shape([Tube(points, [r_d] * len(points))], roughness=0.05)
    air = u(0, 1) < 0.4

    def texture(c: Voxels) -> np.ndarray:
        v = hu.fluid + 10 * c.noise(6.0)
        if air:
            v = np.where((c.noise(10.0) > 1.0) & (c.f < 0.6), -900, v)
        return np.where(c.f > 0.72, hu.wall + 5 * c.noise(5.0), v)

    case.paint(12, shape, texture)


def pancreas(case: Case) -> None:
    """4 pancreas: head in the duodenal C, neck and body in front of the aorta, tail to spleen."""
    u, jit = case.u, case.jit
    A, D, L, yv = case.A, case.D, case.L, case.y_vb
    sc = u(0.85, 1.15) * _body_scale(case)
    y_pb = case.y_ao + case.r_ao + u(14, 20)
    head = (0.22 * A + jit(3), yv + 0.3 * D, L * 0.42)
    shape = Shape(
        [
            Tube(
                [
                    head,
                    (0.04 * A, y_pb + 4, L * 0.46),
                    (-0.2 * A, y_pb, L * 0.5),
                    (-0.5 * A + jit(3), yv + u(0, 12), L * 0.55),
                ],
                np.array([16, 11, 11, 9]) * sc,
            ),
            Tube([head, (0.03 * A, case.y_ao + case.r_ao + 6, L * 0.4)], np.array([14, 7]) * sc),
        ],
        roughness=0.08,
    )
    level = u(35, 50)

    def texture(c: Voxels) -> np.ndarray:
        lob = c.noise(3.0)
        return np.where(lob > 1.6, -40.0, level + 8 * lob)

    case.paint(4, shape, texture)


def gallbladder(case: Case) -> None:
    """9 gallbladder: pear under the liver, neck up and back, fundus down and forward."""
    u, jit = case.u, case.jit
    sc = u(0.8, 1.2) * _body_scale(case)
    shape = Shape(
        [
            Ellipsoid(
                (
                    0.33 * case.A + jit(4),
                    case.y_ant - 0.28 * case.D + jit(3),
                    case.L * u(0.42, 0.48),
                ),
                (14 * sc, 17 * sc, u(17, 24) * sc),
                angle=u(-0.4, 0.4),
                lean=(0.1, -0.5),
            )
        ],
        roughness=0.02,
    )
    bile = u(0, 20)
    case.paint(9, shape, lambda c: np.where(c.f > 0.9, 40.0, bile + 2 * c.noise(8.0)))


def esophagus(case: Case, fundus: Point, r_fundus: float) -> None:
    """10 esophagus: in front of the aorta high up, swinging left into the cardia."""
    u, L = case.u, case.L
    r_e = u(8, 11)
    shape = Shape(
        [
            Tube(
                [
                    (case.x_ao + 6, case.y_ao + case.r_ao + r_e - 2, L + 10),
                    (case.x_ao - 6, case.y_ao + case.r_ao + r_e + 4, L * 0.9),
                    (
                        fundus[0] + 0.35 * r_fundus,
                        fundus[1] + 0.5 * r_fundus,
                        L * u(0.78, 0.84),
                    ),
                ],
                [r_e, r_e, r_e * 1.2],
            )
        ],
        warp=0.5,
        roughness=0.03,
    )
    air, level = u(0, 1) < 0.5, u(35, 50)
    case.paint(10, shape, lambda c: np.where((c.f < 0.3) & air, -900.0, level + 4 * c.noise(4.0)))


def adrenals(case: Case, right: Kidney, left: Kidney) -> None:
    """7 right / 8 left adrenal: thin inverted-V limbs above and medial to the kidneys."""
    u = case.u
    (rkc, rk_rz), (lkc, lk_rz) = right, left
    level = u(30, 55)
    spots = (
        (7, (case.x_ivc + u(0, 8), case.y_ivc - case.r_ivc - u(6, 12), rkc[2] + rk_rz * 0.85)),
        (8, (case.x_ao - case.r_ao - u(12, 18), case.y_ao - u(0, 8), lkc[2] + lk_rz * 0.6)),
    )
    for label, (ax, ay, az) in spots:
        rz = u(8, 12)
        limbs = []
        for spread in (-1, 1):
            ang = -np.pi / 2 + spread * np.deg2rad(u(18, 35))
            ln = u(10, 16)
            limbs.append(
                Ellipsoid(
                    (ax + 0.8 * ln * math.cos(ang), ay + 0.8 * ln * math.sin(ang), az),
                    (ln, u(2.5, 3.5), rz),
                    angle=float(ang),
                )
            )
        shape = Shape(limbs, warp=0.4, roughness=0.03)
        case.paint(label, shape, lambda c: level + 5 * c.noise(4.0))


def ivc(case: Case, hu: Levels) -> Point:
    """6 IVC: right of the aorta, moving forward into the liver, ending below the dome.

    Returns the point (mm) the hepatic veins drain into.
    """
    u, L = case.u, case.L
    x, y, r = case.x_ivc, case.y_ivc, case.r_ivc
    shape = Shape(
        [
            Tube(
                [(x, y, -10), (x + 3, y + 6, L * 0.55), (x + 5, y + u(14, 24), L * u(0.88, 0.94))],
                [r, r * 1.1, r * 1.2],
                squash=u(0.65, 0.85),
            )
        ],
        warp=0.3,
        roughness=0.0,
    )
    case.paint(6, shape, lambda c: hu.ivc + 4 * c.noise(6.0))
    return (x + 5, y + 18, L * 0.9)


def aorta(case: Case, hu: Levels) -> None:
    """5 aorta: left-anterior of the spine, full height, slightly wider at the top."""
    L, x, y, r = case.L, case.x_ao, case.y_ao, case.r_ao
    shape = Shape(
        [
            Tube(
                [(x, y, -10), (x - 1, y - 1, L * 0.6), (x - 3, y - 3, L + 10)],
                [r * 0.9, r, r * 1.05],
            )
        ],
        warp=0.2,
        roughness=0.0,
    )
    case.paint(5, shape, lambda c: hu.aorta + 3 * c.noise(6.0))


def restore_missing(case: Case) -> None:
    """A later organ may have covered all of a tiny one on a coarse grid: give it back one
    voxel, the first it was painted with."""
    counts = np.bincount(case.lab.ravel(), minlength=len(ORGANS) + 1)
    for label in ORGANS:
        if counts[label] == 0:
            i, j, k, value = case.seeds[label]
            case.lab[i, j, k], case.img[i, j, k] = label, value


def paint_organs(case: Case) -> None:
    """Paint every organ group in the order that fixes the phantom's bytes."""
    hu = Levels.draw(case)
    liver(case, hu)
    spleen(case, hu)
    st = stomach(case, hu)
    right, left = kidneys(case, hu)
    duodenum(case, hu, st.pylorus)
    pancreas(case)
    gallbladder(case)
    esophagus(case, st.fundus, st.r_fundus)
    adrenals(case, right, left)
    unlabeled.colon_and_tubes(case, hu, right, left)
    top = ivc(case, hu)
    aorta(case, hu)
    unlabeled.veins(case, hu, top)
    restore_missing(case)
