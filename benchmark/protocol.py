"""Protocols: declarative TOML files that fix data, preprocessing, split, budgets and metrics.

Everything that decides which numbers a run produces lives here, so that two results are
comparable exactly when their protocol hashes are equal. Splitting and budget drawing are
pure functions of (case ids, slice ids, seeds).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from benchmark.errors import BudgetError, ProtocolError, did_you_mean
from benchmark.metrics.registry import Scoring

PROTOCOLS_DIR = Path(str(resources.files("benchmark.protocols")))
"""Built-in protocol files: `protocols/*.toml`, package data found through
`importlib.resources`, so an installed package (editable or not) finds them."""


def protocol_dirs() -> list[Path]:
    """Folders searched for `NAME.toml`: `$LABELBENCH_PROTOCOLS` (os.pathsep-separated) first."""
    extra = [Path(p) for p in os.environ.get("LABELBENCH_PROTOCOLS", "").split(os.pathsep) if p]
    return [*extra, PROTOCOLS_DIR]


def available_protocols() -> dict[str, Path]:
    """Protocol name → file, earlier folders shadowing later ones."""
    found: dict[str, Path] = {}
    for folder in reversed(protocol_dirs()):
        if folder.is_dir():
            found.update({p.stem: p for p in sorted(folder.glob("*.toml"))})
    return dict(sorted(found.items()))


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hex digest of the canonical JSON of `obj` (sorted keys), `n` characters long."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


@dataclass(frozen=True)
class Budget:
    """A named label budget: how many labeled slices (or cases) a method may train on."""

    name: str
    unit: Literal["slices", "cases"]
    count: int | None = None
    fraction: float | None = None

    def size(self, pool: int) -> int:
        """Number of units drawn from a pool of `pool` units (at least 1 for fractions)."""
        if self.count is not None:
            return self.count
        assert self.fraction is not None
        return max(1, math.floor(self.fraction * pool + 0.5))


@dataclass(frozen=True)
class Training:
    """How much every method may learn, and how a fitted model is checked (`[training]`).

    Budgets count samples seen (optimizer steps × batch size), so a method's batch size
    does not change its compute. The same numbers hold for every label budget and method.
    """

    finetune_samples: int
    """Labeled slices seen in fine-tuning (supervised training, a head, nnU-Net)."""
    pretrain_samples: int
    """Unlabeled slices seen in pretraining (DDPM, SimCLR, MAE alike)."""
    validate_every: int
    """Labeled samples between two validations of the model being fine-tuned."""
    select: bool = True
    """Keep the weights of the best validation score (else the last weights)."""
    sanity_min_dsc: float = 0.5
    """A fitted model whose mean 2D DSC on its own labeled slices (organs present) is below
    this is `unfit` and never ranked."""


@dataclass(frozen=True)
class Dataset:
    """Where the data comes from: the built-in phantom or a folder the user gives."""

    source: Literal["phantom", "path"]
    phantom: dict[str, Any] = field(default_factory=dict)
    path_env: str = ""
    """Environment variable that holds the data folder when `--data` is not given."""


@dataclass(frozen=True)
class Protocol:
    """A parsed protocol file. `hash` identifies its content."""

    name: str
    path: Path
    description: str
    dataset: Dataset
    labels: dict[int, str]
    window_hu: tuple[float, float]
    slice_size: int
    split_seed: int
    n_test: int
    n_val: int
    budgets: dict[str, Budget]
    draw_from: Literal["foreground", "all"]
    scoring: Scoring
    """The declared metrics (`[metrics] names`), their parameters and the z-range rule."""
    training: Training
    raw: dict[str, Any]
    hash: str
    nonfinite: Literal["error", "window_min"] = "error"
    """NaN or ±Inf image voxels: an error naming the file, or replaced by the window's low end
    (`[preprocess] nonfinite`; part of the raw TOML and so of `hash`)."""

    @property
    def num_classes(self) -> int:
        """Classes including background 0."""
        return max(self.labels) + 1

    def budget(self, name: str) -> Budget:
        if name not in self.budgets:
            raise BudgetError(
                f"protocol '{self.name}' ({self.path}) has no budget '{name}'"
                f"{did_you_mean(name, self.budgets)}; known: {', '.join(self.budgets)}"
            )
        return self.budgets[name]


def load_protocol(name_or_path: str) -> Protocol:
    """Load a protocol by name (see `available_protocols`) or by path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or len(path.parts) > 1:  # a path, not a name
        if not path.exists():
            raise ProtocolError(f"{path}: protocol file does not exist")
        if not path.is_file():
            raise ProtocolError(f"{path}: protocol path is not a file")
    else:
        known = available_protocols()
        if name_or_path not in known:
            raise ProtocolError(
                f"unknown protocol '{name_or_path}'{did_you_mean(name_or_path, known)}; "
                f"known: {', '.join(known) or 'none'} (or give a path to a .toml file)"
            )
        path = known[name_or_path]
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProtocolError(f"{path}: not a readable TOML protocol ({exc})") from None
    try:
        return _parse(raw, path)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"{path}: invalid protocol ({type(exc).__name__}: {exc})") from None


def _is_whole(value: Any, minimum: int) -> bool:
    """An integer of at least `minimum` (TOML's floats and booleans are not)."""
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum


def _whole(table: dict[str, Any], key: str, where: str, minimum: int) -> int:
    """`table[key]`, an integer of at least `minimum` (a float, a bool or a smaller number is
    refused: `test_cases = -1` would otherwise put every test case into the train pool)."""
    value = table[key]
    if not _is_whole(value, minimum):
        raise ValueError(f"{where}.{key} must be an integer >= {minimum}, not {value!r}")
    return value


def _phantom(table: dict[str, Any]) -> dict[str, Any]:
    """`[dataset.phantom]`, checked as the generator will take it: known settings only, whole
    counts and seed (`seed = 1.7` would make seed 1's phantom under another hash), ranges
    the generator accepts."""
    from dataclasses import fields

    from benchmark.data.phantom.settings import PhantomSettings

    known = [f.name for f in fields(PhantomSettings)]
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ValueError(
            f"dataset.phantom: unknown setting {', '.join(unknown)} (known: {', '.join(known)})"
        )
    for key, minimum in (("cases", 0), ("unlabeled", 0), ("seed", 0), ("size", 16)):
        if key in table:
            _whole(table, key, "dataset.phantom", minimum)
    try:
        PhantomSettings(**table)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"dataset.phantom: {exc}") from None
    return dict(table)


def _parse(raw: dict[str, Any], path: Path) -> Protocol:
    ds = raw["dataset"]
    source = ds["source"]
    if source not in ("phantom", "path"):
        raise ValueError(f"dataset.source must be 'phantom' or 'path', not {source!r}")
    dataset = Dataset(
        source=source, phantom=_phantom(ds.get("phantom", {})), path_env=ds.get("path_env", "")
    )
    labels = {int(k): str(v) for k, v in raw["labels"].items()}
    if 0 in labels or sorted(labels) != list(range(1, len(labels) + 1)):
        raise ValueError("labels must be consecutive ids 1..K (0 is background)")
    if len(labels) > 255:  # label slices are stored as uint8
        raise ValueError(f"labels: {len(labels)} ids, at most 255 are supported")
    prep = raw["preprocess"]
    lo, hi = (float(v) for v in prep["window_hu"])
    if not lo < hi:
        raise ValueError("preprocess.window_hu must be [low, high] with low < high")
    nonfinite = prep.get("nonfinite", "error")
    if nonfinite not in ("error", "window_min"):
        raise ValueError(f"preprocess.nonfinite must be 'error' or 'window_min', not {nonfinite!r}")
    split = raw["split"]
    slice_size = _whole(prep, "slice_size", "preprocess", 16)
    split_seed = _whole(split, "seed", "split", 0)
    n_test = _whole(split, "test_cases", "split", 1)
    n_val = _whole(split, "val_cases", "split", 0) if "val_cases" in split else 0
    budgets: dict[str, Budget] = {}
    for bname, b in raw["budgets"].items():
        unit = b.get("unit", "slices")
        if unit not in ("slices", "cases"):
            raise ValueError(f"budgets.{bname}.unit must be 'slices' or 'cases'")
        if ("count" in b) == ("fraction" in b):
            raise ValueError(f"budgets.{bname} needs exactly one of 'count' or 'fraction'")
        if "fraction" in b and not 0 < float(b["fraction"]) <= 1:
            raise ValueError(f"budgets.{bname}.fraction must be in (0, 1]")
        if "count" in b and int(b["count"]) < 1:
            raise ValueError(f"budgets.{bname}.count must be at least 1")
        budgets[bname] = Budget(
            name=bname,
            unit=unit,
            count=int(b["count"]) if "count" in b else None,
            fraction=float(b["fraction"]) if "fraction" in b else None,
        )
    scoring = Scoring.parse(raw["metrics"], labels)
    draw_from = raw.get("budget_draw", {}).get("from", "foreground")
    if draw_from not in ("foreground", "all"):
        raise ValueError("budget_draw.from must be 'foreground' or 'all'")
    training = _parse_training(raw.get("training"), n_val)
    return Protocol(
        name=raw.get("name", path.stem),
        path=path,
        description=raw.get("description", ""),
        dataset=dataset,
        labels=labels,
        window_hu=(lo, hi),
        slice_size=slice_size,
        split_seed=split_seed,
        n_test=n_test,
        n_val=n_val,
        budgets=budgets,
        draw_from=draw_from,
        scoring=scoring,
        training=training,
        raw=raw,
        hash=stable_hash(raw),
        nonfinite=nonfinite,
    )


def _parse_training(table: Any, n_val: int) -> Training:
    if not isinstance(table, dict):
        raise ValueError(
            "a [training] table is required (finetune_samples, pretrain_samples, validate_every)"
        )
    counts = {}
    for name in ("finetune_samples", "pretrain_samples", "validate_every"):
        if name not in table:
            raise ValueError(f"training.{name} is missing")
        value = table[name]
        if not _is_whole(value, 1):
            raise ValueError(f"training.{name} must be a positive integer, not {value!r}")
        counts[name] = value
    select = table.get("select", True)
    if not isinstance(select, bool):
        raise ValueError(f"training.select must be true or false, not {select!r}")
    if select and n_val < 1:
        raise ValueError("training.select = true needs validation cases, but split.val_cases is 0")
    threshold = table.get("sanity_min_dsc", 0.5)
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not (0.0 <= threshold <= 1.0)
    ):
        raise ValueError(f"training.sanity_min_dsc must be in [0, 1], not {threshold!r}")
    return Training(**counts, select=select, sanity_min_dsc=float(threshold))


@dataclass(frozen=True)
class Split:
    """Case-level split of the labeled cases. Ids are sorted within each part."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def hash(self) -> str:
        return stable_hash([self.train, self.val, self.test])


def split_cases(case_ids: Sequence[str], n_test: int, n_val: int, seed: int) -> Split:
    """Seeded case-level split; the same ids and seed give the same split on any machine."""
    ids = sorted(case_ids)
    if n_test < 1 or n_val < 0:
        raise ProtocolError(f"a split needs at least 1 test case and no negative count, not "
                            f"{n_test} test and {n_val} validation cases")  # fmt: skip
    if n_test + n_val >= len(ids):
        raise BudgetError(
            f"the split needs {n_test} test and {n_val} validation cases but the data set has "
            f"only {len(ids)} labeled cases, leaving no train pool"
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    test = shuffled[:n_test]
    val = shuffled[n_test : n_test + n_val]
    train = shuffled[n_test + n_val :]
    return Split(tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)))


def draw_budget(
    budget: Budget, slice_ids: Sequence[str], case_of: Sequence[str], seed: int
) -> list[str]:
    """Draw the budget's labeled slice ids from the train pool's candidate slices.

    `slice_ids[i]` belongs to case `case_of[i]`. Draws are nested: for one seed, the drawn
    set of a smaller budget is a prefix of a larger one's, because every budget takes the
    head of the same seeded permutation (of slices, or of cases for case budgets).
    """
    order = sorted(range(len(slice_ids)), key=lambda i: slice_ids[i])
    ids = [slice_ids[i] for i in order]
    cases = [case_of[i] for i in order]
    rng = np.random.default_rng([seed, 2402_15216])
    if budget.unit == "slices":
        n = budget.size(len(ids))
        if n > len(ids):
            raise BudgetError(
                f"budget '{budget.name}' asks for {n} labeled slices but the train pool has "
                f"only {len(ids)} candidate slices"
            )
        return [ids[i] for i in rng.permutation(len(ids))[:n]]
    pool = sorted(set(cases))
    n = budget.size(len(pool))
    if n > len(pool):
        raise BudgetError(
            f"budget '{budget.name}' asks for {n} labeled cases but the train pool has "
            f"only {len(pool)} cases"
        )
    chosen = {pool[i] for i in rng.permutation(len(pool))[:n]}
    return [s for s, c in zip(ids, cases, strict=True) if c in chosen]
