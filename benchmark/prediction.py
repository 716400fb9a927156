"""What `Method.predict` must return, checked wherever the harness scores a prediction.

A label map that is not one (scores, probabilities, ids outside the protocol's, another
size) would otherwise be cast on its way to the scorer: to uint8 for the test volumes (id
256 becomes 0, -1 becomes 255, 1.7 becomes 1) and clipped for validation. So the test and
validation scores of one output could disagree, and a wrong output could still be ranked.
"""

from __future__ import annotations

import torch

from benchmark.errors import PredictionError


def check_labels(pred: object, images: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`pred`, the output of `predict(images)`, when it is what `Method.predict` promises:
    an integer tensor of shape (N, S, S) for (N, 1, S, S) images, with ids in
    0..`num_classes` - 1. `PredictionError` saying what it is otherwise."""
    if not isinstance(pred, torch.Tensor):
        raise PredictionError(f"predict returned {type(pred).__name__}, not a torch.Tensor")
    n, size = images.shape[0], tuple(images.shape[-2:])
    if tuple(pred.shape) != (n, *size):
        raise PredictionError(
            f"predict returned shape {tuple(pred.shape)} for {n} slices of {size[0]} x "
            f"{size[1]}: expected ({n}, {size[0]}, {size[1]}) label maps"
        )
    if pred.dtype.is_floating_point or pred.dtype.is_complex or pred.dtype == torch.bool:
        raise PredictionError(
            f"predict returned {pred.dtype}: expected integer label ids (int64), not scores, "
            "probabilities or masks"
        )
    if pred.numel():
        wide = pred.to(torch.int64)  # min/max are not implemented for every unsigned dtype
        low, high = int(wide.min()), int(wide.max())
        if low < 0 or high >= num_classes:
            raise PredictionError(
                f"predict returned label ids {low}..{high}: the protocol's are 0..{num_classes - 1}"
            )
    return pred
