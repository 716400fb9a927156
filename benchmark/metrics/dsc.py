"""DSC: the Dice similarity coefficient of one organ, as FLARE22 scores it.

1 when the organ is absent from both volumes, 0 when it is in one only.
"""

from __future__ import annotations

from benchmark.metrics.registry import Metric, OrganPair
from benchmark.metrics.segmentation import dice


def _compute(organ: OrganPair, params: None) -> float:
    return dice(organ.pred, organ.gt)


METRIC = Metric(
    name="dsc",
    display="DSC",
    higher_is_better=True,
    needs_spacing=False,
    compute=_compute,
    both_absent=1.0,
    doc="Dice similarity coefficient (0-1)",
)
