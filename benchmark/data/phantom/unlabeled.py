"""Unlabeled structures painted between the organs: colon, mesenteric, renal and liver veins.

They carry label 0 and are painted only over background (or, for veins, inside the liver),
so that the organs are surrounded by realistic look-alikes a model must learn to leave out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from benchmark.data.phantom.shapes import Shape, Tube, Voxels

if TYPE_CHECKING:
    from benchmark.data.phantom.case import Case
    from benchmark.data.phantom.organs import Kidney, Levels, Point


def colon_and_tubes(case: Case, hu: Levels, right: Kidney, left: Kidney) -> None:
    """Colon, mesenteric and renal vessels: unlabeled, painted only into background."""
    u = case.u
    A, D, L, yv = case.A, case.D, case.L, case.y_vb
    # Colon: ascending (right flank), transverse (front, sagging), descending (left flank).
    r_c = u(16, 24)
    stool = u(-250, -80)
    colon_pts = [
        (0.72 * A, yv + 0.15 * D, -10),
        (0.72 * A, yv + 0.25 * D, L * 0.45),
        (0.55 * A, yv + 0.7 * D, L * 0.5),
        (0.0, case.y_ant - r_c - 4, L * u(0.4, 0.5)),
        (-0.6 * A, yv + 0.7 * D, L * 0.6),
        (-0.74 * A, yv + 0.25 * D, L * 0.58),
        (-0.74 * A, yv + 0.15 * D, -10),
    ]

    gas = u(0.6, 1.6)

    def colon_tex(c: Voxels) -> np.ndarray:
        # Mottled stool with gas bubbles, larger gas pockets in places.
        grain = c.noise(5.0)
        v = stool + 60 * grain
        v = np.where(grain > 1.4, -850.0, v)
        v = np.where(c.noise(15.0) > gas, -920.0, v)
        return np.where(c.f > 0.85, 40.0, v)

    case.paint(0, Shape([Tube(colon_pts, [r_c] * 7)], roughness=0.06), colon_tex, (0,), True)
    # Superior mesenteric artery and vein below the pancreas, in front of the aorta.
    y_front = case.y_ao + case.r_ao
    for dx, r, level in ((0.0, 4.0, hu.aorta), (14.0, 6.0, hu.ivc)):
        tube = Tube(
            [
                (case.x_ao + 2 + dx, case.y_ao, L * 0.52),
                (case.x_ao + 2 + dx, y_front + 18, L * 0.42),
                (case.x_ao + 4 + dx * 1.2, y_front + 30, -10),
            ],
            [r, r, r * 0.9],
        )
        case.paint(0, Shape([tube], warp=0.5, roughness=0), lambda c, h=level: h, (0,), True)
    # Renal veins into the IVC; the left one crosses in front of the aorta.
    for kc in (right[0], left[0]):
        tube = Tube(
            [
                (kc[0] * 0.6, yv + 8, kc[2] + 4),
                (
                    case.x_ao if kc[0] < 0 else case.x_ivc,
                    y_front + 4 if kc[0] < 0 else case.y_ivc,
                    kc[2],
                ),
                (case.x_ivc, case.y_ivc, kc[2] - 2),
            ],
            [5.5, 5.0, 5.0],
        )
        case.paint(0, Shape([tube], warp=0.5, roughness=0), lambda c: hu.ivc, (0,), True)


def veins(case: Case, hu: Levels, ivc_top: Point) -> None:
    """Portal, splenic and hepatic veins: bright tubes over fat and inside the liver."""
    A, D, L, yv = case.A, case.D, case.L, case.y_vb
    conf = (0.06 * A, case.y_ao + case.r_ao + 12, L * 0.47)
    portal = Tube(
        [conf, (0.28 * A, yv + 0.35 * D, L * 0.58), (0.45 * A, yv + 0.4 * D, L * 0.66)],
        [7, 7, 4],
    )
    case.paint(
        0, Shape([portal], roughness=0), lambda c: hu.ivc - 10 + 5 * c.noise(5.0), (0, 1), True
    )
    splenic = Tube(
        [conf, (-0.25 * A, case.y_ao + case.r_ao + 4, L * 0.5), (-0.55 * A, yv + 5, L * 0.6)],
        [5, 5, 4],
    )
    case.paint(0, Shape([splenic], roughness=0), lambda c: hu.ivc - 10.0, (0,), True)
    for tip in (
        (0.65 * A, yv + 0.1 * D, L * 0.82),
        (0.25 * A, case.y_ant - 0.3 * D, L * 0.8),
        (-0.2 * A, case.y_ant - 0.25 * D, L * 0.84),
    ):
        vein = Tube([ivc_top, tip], [6, 2.5])
        case.paint(0, Shape([vein], roughness=0), lambda c: hu.ivc - 15.0, (1,), True)
