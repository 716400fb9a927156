"""The sanity gate: what the runner checks of a fitted model before it trusts its scores.

`check_fitted` takes the validation score of the fitted model (the one its selection kept, or
the runner's own), scores it on its own labeled slices (below the protocol's threshold the
run is `unfit`: recorded and shown, never ranked), marks a run off-protocol that kept no
validated model where the protocol selects, and collects the learning curve; `Trust` holds
what it found.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.method import Method, RunContext, SliceSet
from benchmark.protocol import Protocol
from benchmark.validation import sanity_dsc


@dataclass
class Trust:
    """What the runner checks of a fitted model: validation score, sanity gate, curve."""

    val_dsc: float | None = None
    train_dsc: float | None = None
    unfit: str | None = None
    """Why the model fails the sanity gate (None when it passes)."""
    unselected: str | None = None
    """Why the run is off-protocol although its compute matched (no validated model)."""
    curve: list[tuple[int, float, float]] = field(default_factory=list)


def recorded_curve(ctx: RunContext) -> list[tuple[int, float, float]]:
    """The learning curve the method recorded, as the store keeps it."""
    return [(p.samples, p.train_loss, p.val_dsc) for p in ctx.curve]


def check_fitted(method: Method, labeled: SliceSet, ctx: RunContext, protocol: Protocol) -> Trust:
    """Validation score of the fitted model, the sanity gate on its own labeled slices, and
    the learning curve the method recorded.

    The validation score is the one `Selection` kept when the method selected (the same
    scorer on the same model), else the runner scores the fitted model itself. A method that
    kept no validated model, where the protocol selects and the method declares no rule of
    its own, is off-protocol; the reason says so when it validated (a curve) but never
    called `Selection.finish(ctx.info)`.
    """
    trust = Trust(curve=recorded_curve(ctx))
    selection = ctx.info.get("selection")
    if selection is not None:
        trust.val_dsc = round(selection["val_dsc"], 6)
    elif ctx.validator is not None:
        trust.val_dsc = round(ctx.validator.score(method.predict), 6)
        if protocol.training.select and type(method).selection_rule == Method.selection_rule:
            trust.unselected = (
                # Only a Selection appends to ctx.curve: it validated, and was never finished.
                "the method called Selection.step but never finish(ctx.info), so it kept no "
                "validated model where the protocol selects on validation"
                if ctx.curve
                else "the protocol selects on validation, but the method kept no validated model"
            )
    ctx.info["selection_rule"] = selection["rule"] if selection else type(method).selection_rule
    trust.train_dsc = round(sanity_dsc(method.predict, labeled, protocol.num_classes), 6)
    threshold = protocol.training.sanity_min_dsc
    if trust.train_dsc < threshold:
        trust.unfit = (
            f"unfit: mean 2D DSC {trust.train_dsc:.3f} on its own {len(labeled)} labeled slices "
            f"is below the protocol's sanity threshold {threshold:g}"
        )
    return trust
