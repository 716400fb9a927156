"""Model selection and trust: validation scores, learning curves, the sanity gate.

`Validator` scores a model on the protocol's validation cases exactly as the runner scores
test cases (predicted slices stacked into the volume at its original size, the protocol's
DSC rules, the z-range cut in the file's own slice order), DSC only, so selection is cheap
enough to run many times during training. It never builds the volume: the ground truth is
grouped once into (predicted pixel, true label, voxel count) triples, since resizing label
slices gives every voxel the label of one predicted pixel, and each validation is then one
weighted count over those triples.
`Selection` is what a training loop calls after each step: it validates every
`validate_every` samples, records the curve and keeps the best weights. `sanity_dsc` is the
gate after `fit`: a model must segment the slices it was trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from benchmark.data.slicestore import SliceStore, source_pixels
from benchmark.metrics.segmentation import dice_case, dice_from_confusion
from benchmark.prediction import check_labels

if TYPE_CHECKING:
    from benchmark.method import RunContext, SliceSet
    from benchmark.protocol import Protocol

BEST_VALIDATED = "best validation DSC"
"""The selection rule of `Selection` (and the default `Method.selection_rule`)."""

UNDERTRAINED_TAIL = 0.10
"""A best validation score in this last fraction of training, above everything before it,
means the curve was still rising: the run "may be undertrained"."""
UNDERTRAINED_MIN_GAIN = 0.01
"""How much (mean DSC) the tail must beat the rest by to count as still rising."""


@dataclass(frozen=True)
class CurvePoint:
    """One validation during training."""

    samples: int
    """Labeled samples seen so far (steps × batch size)."""
    train_loss: float
    """Mean training loss since the previous point."""
    val_dsc: float
    """Mean DSC over the validation cases and organs."""


@dataclass(frozen=True)
class _GroupedTruth:
    """A validation case's ground truth as counts per (predicted pixel, true label): the
    voxels of label `label[i]` that take their prediction from pixel `pixel[i]` of the case's
    flattened (Z, S, S) slices number `count[i]`."""

    pixel: np.ndarray
    label: np.ndarray
    count: np.ndarray
    slice_of: np.ndarray
    """The slice (index along the canonical z axis) of each pixel."""
    slices: int


class Validator:
    """Scores predictions of the protocol's validation cases (labeled, in the slice store).

    `slices` holds every slice of every validation case in case order; `score_slices` takes
    the predictions of exactly those slices. Ground truth is read once, at original size.
    """

    def __init__(self, store: SliceStore, case_ids: Sequence[str], protocol: Protocol):
        from benchmark.method import SliceSet

        self.store, self.case_ids, self.protocol = store, list(case_ids), protocol
        rows = [store.rows_of_case(c) for c in self.case_ids]
        self._bounds = np.cumsum([0, *(len(r) for r in rows)])
        self.slices = SliceSet(store, np.concatenate(rows), labeled=False)
        self._n_labels = max(protocol.labels, default=0) + 2  # the last bin: any other value
        self._truth: list[_GroupedTruth | np.ndarray] | None = None
        self._images: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.case_ids)

    def _ground_truth(self) -> list[_GroupedTruth | np.ndarray]:
        if self._truth is None:
            self._truth = [self._group(c) for c in self.case_ids]
        return self._truth

    def _group(self, case: str) -> _GroupedTruth | np.ndarray:
        """The case's truth grouped by predicted pixel, or the volume itself when its file's
        slice axis is not the store's (the z-range cut then runs across slices)."""
        truth = self.store.ground_truth(case)[0]
        if self.store.slice_order(case).axis != 2:
            return truth
        nx, ny, nz = truth.shape
        size = self.store.slice_size
        pixels = size * size
        source = source_pixels((size, size), (nx, ny)).reshape(-1) * self._n_labels
        labels = np.clip(truth.reshape(nx * ny, nz), 0, self._n_labels - 1)
        groups = []
        for z in range(nz):  # slice by slice: a dense count over every slice at once is large
            counts = np.bincount(source + labels[:, z], minlength=pixels * self._n_labels)
            found = np.flatnonzero(counts)
            groups.append((found + z * pixels * self._n_labels, counts[found]))
        found = np.concatenate([g[0] for g in groups])
        pixel, label = np.divmod(found, self._n_labels)
        count = np.concatenate([g[1] for g in groups])
        return _GroupedTruth(pixel, label, count, pixel // pixels, nz)

    def _case_dice(self, case: str, truth: _GroupedTruth | np.ndarray, pred: np.ndarray) -> dict:
        labels, zrange = self.protocol.labels, self.protocol.scoring.zrange_labels
        order = self.store.slice_order(case)
        if isinstance(truth, np.ndarray):
            return dice_case(self.store.to_volume(case, pred), truth, labels, zrange, order)
        n = self._n_labels
        predicted = np.clip(pred.reshape(-1)[truth.pixel], 0, n - 1)
        key = (truth.slice_of * n + predicted) * n + truth.label
        counts = np.bincount(key, weights=truth.count, minlength=truth.slices * n * n)
        confusion = counts.round().astype(np.int64).reshape(truth.slices, n, n)
        return dice_from_confusion(confusion, labels, zrange, order)

    def score_slices(self, pred: torch.Tensor | np.ndarray) -> float:
        """Mean DSC over cases and organs of (N, S, S) predicted labels of `slices`."""
        if not isinstance(pred, torch.Tensor):  # any array: flipped views (negative strides) too
            pred = torch.as_tensor(np.ascontiguousarray(pred))
        if len(pred) != len(self.slices):
            raise ValueError(f"expected {len(self.slices)} predicted slices, got {len(pred)}")
        size = self.store.slice_size
        check_labels(pred, torch.empty(len(pred), 1, size, size), self.protocol.num_classes)
        pred = pred.cpu().numpy()
        scores = []
        for i, (case, truth) in enumerate(zip(self.case_ids, self._ground_truth(), strict=True)):
            part = pred[self._bounds[i] : self._bounds[i + 1]]
            scores.extend(self._case_dice(case, truth, part).values())
        return float(np.mean(scores))

    def score(self, predict: Callable[[torch.Tensor], torch.Tensor], batch: int = 64) -> float:
        """Mean validation DSC of a predictor ((n, 1, S, S) images → (n, S, S) labels)."""
        if self._images is None:  # read once: validation runs many times in a fit
            self._images = self.slices.images()
        parts = self._images.split(batch)
        n = self.protocol.num_classes
        return self.score_slices(torch.cat([check_labels(predict(x), x, n).cpu() for x in parts]))


@dataclass
class Selection:
    """Validation during training: call `step(loss)` after every optimizer step, `finish()`
    at the end. Records the curve in `ctx.curve` and, when the protocol selects, restores the
    weights of the best validation score (the first one on ties)."""

    model: torch.nn.Module
    score: Callable[[], float]
    """Mean validation DSC of `model` as it is now (called in eval mode)."""
    batch_size: int
    steps: int
    every_samples: int
    """Labeled samples between validations (the protocol's `validate_every`)."""
    select: bool
    curve: list[CurvePoint]
    _step: int = 0
    _losses: list[float] = field(default_factory=list)
    _best: tuple[float, int, dict[str, torch.Tensor]] | None = None

    @classmethod
    def for_context(
        cls,
        ctx: RunContext,
        model: torch.nn.Module,
        score: Callable[[], float],
        batch_size: int,
        steps: int,
    ) -> Selection | None:
        """The selection the protocol asks for, or None when the run has no validator."""
        if ctx.validator is None or ctx.training is None:
            return None
        every = ctx.training.validate_every
        return cls(model, score, batch_size, steps, every, ctx.training.select, ctx.curve)

    def due(self, step: int) -> bool:
        """Whether step `step` (counted from 1) ends with a validation: the step whose
        samples pass a multiple of `every_samples`, and the last one. So every batch size
        gets the same validations (20 at the phantom's 38,400 samples every 1,920), where a
        step interval rounded from samples / batch could add one."""
        b, every = self.batch_size, self.every_samples
        return step * b // every > (step - 1) * b // every or step == self.steps

    def step(self, loss: float) -> None:
        self._step += 1
        self._losses.append(loss)
        if self.due(self._step):
            self._validate()

    def _validate(self) -> None:
        # Each module's own mode comes back: `train(True)` on the whole model would put a part
        # the method keeps in eval mode (frozen batch norm statistics) back into training.
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        with torch.no_grad():
            dsc = float(self.score())
        for module, training in modes:
            module.training = training
        samples = self._step * self.batch_size
        self.curve.append(CurvePoint(samples, float(np.mean(self._losses)), dsc))
        self._losses = []
        if self._best is None or dsc > self._best[0]:
            # Weights are only copied when they may be restored.
            state = (
                {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                if self.select
                else {}
            )
            self._best = (dsc, samples, state)

    def finish(self, info: dict) -> float | None:
        """Restore the best weights (when selecting); record the choice in `info`.

        Returns the validation DSC of the model kept (None when no step was taken).
        """
        if self._step == 0:
            return None
        validated = bool(self.curve) and self.curve[-1].samples == self._step * self.batch_size
        if not validated:  # training ended between two validations: the last weights count too
            self._validate()
        assert self._best is not None
        best, samples, state = self._best
        last = self.curve[-1]
        if self.select:
            self.model.load_state_dict(state)
        kept = best if self.select else last.val_dsc
        info["selection"] = {
            "rule": BEST_VALIDATED if self.select else "last weights",
            "kept_samples": samples if self.select else last.samples,
            "val_dsc": kept,
            "validations": len(self.curve),
        }
        return kept


def may_be_undertrained(curve: Sequence[CurvePoint]) -> bool:
    """Whether the best validation score came in the last 10 % of training while still rising.

    Rising: the best score of the tail beats every earlier score by `UNDERTRAINED_MIN_GAIN`.
    """
    if len(curve) < 2:
        return False
    total = curve[-1].samples
    tail = [p.val_dsc for p in curve if p.samples > (1 - UNDERTRAINED_TAIL) * total]
    head = [p.val_dsc for p in curve if p.samples <= (1 - UNDERTRAINED_TAIL) * total]
    if not head or not tail:
        return False
    return max(tail) >= max(head) + UNDERTRAINED_MIN_GAIN


def sanity_dsc(
    method_predict: Callable[[torch.Tensor], torch.Tensor], labeled: SliceSet, num_classes: int
) -> float:
    """Mean 2D DSC of a fitted model on its own labeled slices, over the organs present.

    Every (slice, organ present in its ground truth) pair counts once, so a model that
    predicts background everywhere scores 0 however much background there is.
    """
    scores: list[float] = []
    batch = 64
    for start in range(0, len(labeled), batch):
        idx = np.arange(start, min(start + batch, len(labeled)))
        truth = labeled.labels(idx).numpy()
        images = labeled.images(idx)
        pred = check_labels(method_predict(images), images, num_classes).cpu().numpy()
        for t, p in zip(truth, pred, strict=True):
            for organ in np.unique(t[t > 0]):
                gt, pr = t == organ, p == organ
                scores.append(2 * np.count_nonzero(gt & pr) / (gt.sum() + pr.sum()))
    return float(np.mean(scores)) if scores else 0.0
