"""The checks a reviewer makes of a reference grid before trusting its leaderboard, computed
from its results store (test scores of ranked runs, never validation):

- every (method, budget) cell is ranked with at least `--min-seeds` seeds; no ranked run is
  flagged "may be undertrained"; which runs are `unfit` (failed the sanity gate);
- the runs that share a pretraining (one cache key: one per method family, for every
  budget and seed; `diffusion-linear` and `diffusion-decoder` share theirs) were fine-tuned
  from the same weights. A grid made in several sittings on machines that do not keep the
  cache pretrains again, and a GPU pretraining is not bitwise repeatable; each run records
  its weights' SHA-256;
- `unet-scratch` rises at every step of the budgets and reaches `--ceiling-target` at the
  largest one (else the organs that hold it back); no organ it segments at `1pct` drops to 0
  at `10pct`;
- `nnunet` rises from `4slices` to `10pct` and is within 0.05 of `unet-scratch` at `10pct`
  (its known standing);
- `diffusion-linear` is at least as good as `unet-scratch` at `4slices` and `1pct` (the
  central claim of diffusion transfer for few labels) and rises from `1pct` to `10pct`.

Mean DSC is the mean over (seed, test case) of the case's organ mean, as in the leaderboard,
under each method's newest code fingerprint and the newest protocol hash. Prints a Markdown
table (claim, what was measured, verdict); `--out FILE` also writes it.

    python perf/reference_checks.py --results reports/phantom/store [--protocol phantom]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark.errors import LabelbenchError
from benchmark.evaluate import SUBMISSION
from benchmark.protocol import load_protocol
from benchmark.report.formatting import md_table
from benchmark.report.frames import (
    budget_order,
    case_scores,
    config_variants,
    hash_order,
    newest_code,
    newest_data,
    own_selection_rule,
    split_ranked,
    undertrained,
)
from benchmark.store import FINISHED, ResultsStore

SCRATCH, NNUNET, DIFFUSION = "unet-scratch", "nnunet", "diffusion-linear"
VANISHED = 0.005
"""An organ's mean DSC below this counts as 0 (not segmented)."""
SEGMENTED = 0.05
"""An organ's mean DSC at or above this counts as segmented."""


@dataclass(frozen=True)
class Check:
    claim: str
    measured: str
    verdict: str  # "holds" | "fails" | "not measured"


def _verdict(ok: bool) -> str:
    return "holds" if ok else "fails"


def cell_means(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean DSC and seed count per (method, budget) of ranked runs, indexed by both."""
    scores = case_scores(runs, metrics)
    means = scores.groupby(["method", "budget"])["dsc"].mean().rename("dsc")
    seeds = runs.groupby(["method", "budget"])["seed"].nunique().rename("seeds")
    return pd.concat([means, seeds], axis=1)


def organ_means(runs: pd.DataFrame, metrics: pd.DataFrame, method: str) -> pd.DataFrame:
    """Mean DSC of each organ (rows) per budget (columns) for one method's ranked runs."""
    rows = metrics.merge(runs[["run_id", "method", "budget"]], on="run_id")
    rows = rows[rows["method"] == method]
    return rows.pivot_table(index="organ", columns="budget", values="dsc", aggfunc="mean")


def _dsc(cells: pd.DataFrame, method: str, budget: str) -> float | None:
    return float(cells.loc[(method, budget), "dsc"]) if (method, budget) in cells.index else None


def rises(cells: pd.DataFrame, method: str, budgets: list[str]) -> Check:
    values = [_dsc(cells, method, b) for b in budgets]
    claim = f"`{method}` rises at every step of {' < '.join(budgets)}"
    if any(v is None for v in values):
        return Check(claim, "not every budget is ranked", "not measured")
    measured = " → ".join(f"{v:.3f}" for v in values if v is not None)
    ok = all(a < b for a, b in itertools.pairwise(values))  # type: ignore[operator]
    return Check(claim, measured, _verdict(ok))


def at_least(
    cells: pd.DataFrame, method: str, other: str, budget: str, margin: float = 0.0
) -> Check:
    mine, theirs = _dsc(cells, method, budget), _dsc(cells, other, budget)
    against = f"`{other}`" + (f" − {margin:g}" if margin else "")
    claim = f"`{method}` ≥ {against} at `{budget}`"
    if mine is None or theirs is None:
        return Check(claim, "not ranked at this budget", "not measured")
    return Check(claim, f"{mine:.3f} vs {theirs:.3f}", _verdict(mine >= theirs - margin))


def reaches(
    cells: pd.DataFrame, organs: pd.DataFrame, method: str, budget: str, target: float
) -> Check:
    claim = f"`{method}` reaches {target:g} at `{budget}`"
    value = _dsc(cells, method, budget)
    if value is None:
        return Check(claim, "not ranked at this budget", "not measured")
    measured = f"{value:.3f}"
    if value < target and budget in organs:
        low = organs[budget][organs[budget] < 0.5].sort_values()
        if len(low):
            measured += "; below 0.5: " + ", ".join(f"{o} {v:.2f}" for o, v in low.items())
    return Check(claim, measured, _verdict(value >= target))


def no_organ_vanishes(organs: pd.DataFrame, method: str, before: str, after: str) -> Check:
    claim = f"no organ `{method}` segments at `{before}` drops to 0 at `{after}`"
    if before not in organs or after not in organs:
        return Check(claim, "not ranked at both budgets", "not measured")
    lost = organs[(organs[before] >= SEGMENTED) & (organs[after] < VANISHED)]
    measured = ", ".join(lost.index) if len(lost) else "none drops"
    return Check(claim, measured, _verdict(lost.empty))


def one_pretraining_each(runs: pd.DataFrame) -> Check:
    """Whether the runs that share a pretraining cache key (`info.pretrain_cache`) were all
    fine-tuned from the same weights (`info.pretrain.sha256`)."""
    claim = "the runs that share a pretraining used the same weights"
    used: dict[str, tuple[set[str], set[str]]] = {}
    for r in runs.itertuples() if "info" in runs else ():
        info = json.loads(r.info) if isinstance(r.info, str) else {}
        sha = (info.get("pretrain") or {}).get("sha256")
        if sha:
            methods, weights = used.setdefault(str(info.get("pretrain_cache")), (set(), set()))
            methods.add(r.method)
            weights.add(sha)
    if not used:
        return Check(claim, "no run records a pretraining", "not measured")
    split = [
        f"{'/'.join(sorted(methods))}: {len(weights)} sets of weights"
        for methods, weights in (used[k] for k in sorted(used))
        if len(weights) > 1
    ]
    measured = ", ".join(split) or f"one set of weights for each of {len(used)} pretrainings"
    return Check(claim, measured, _verdict(not split))


def checks(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    curves: pd.DataFrame,
    min_seeds: int = 3,
    ceiling_target: float = 0.75,
) -> list[Check]:
    """Every check on finished runs of one protocol hash (ranked and unranked)."""
    ranked, unranked = split_ranked(runs)
    budgets = budget_order(runs)
    cells = cell_means(ranked, metrics)
    out = []
    thin = cells[cells["seeds"] < min_seeds]
    methods = sorted(runs["method"].unique())
    missing = [
        f"{m} {b}" for m in methods for b in budgets if (m, b) not in cells.index
    ]  # fmt: skip
    seeds = cells["seeds"]
    measured = f"{len(cells)} cells ranked" + (
        f", seeds {int(seeds.min())}–{int(seeds.max())}" if len(cells) else ""
    )
    if len(thin) or missing:
        measured += "; short: " + ", ".join(
            [*(f"{m} {b} ({int(n)})" for (m, b), n in thin["seeds"].items()), *missing]
        )
    out.append(
        Check(
            f"every method × budget ranked with ≥ {min_seeds} seeds",
            measured,
            _verdict(thin.empty and not missing),
        )
    )
    flagged = undertrained(ranked, curves) if not curves.empty else ranked.iloc[0:0]
    has_curve = ranked["run_id"].isin(curves["run_id"] if not curves.empty else [])
    rules = {m: own_selection_rule(m) for m in ranked["method"].unique()}
    without = ranked[~has_curve].groupby("method").size()
    own = {m: n for m, n in without.items() if rules[m]}  # no curve by design (nnU-Net)
    blind = {m: n for m, n in without.items() if not rules[m]}
    measured = ", ".join(f"{r.method} {r.budget} s{r.seed}" for r in flagged.itertuples())
    measured = measured or "none flagged"
    measured += "".join(f"; {m}: {n} without a curve, not checked" for m, n in blind.items())
    measured += "".join(f"; {m}: {rules[m]}, no curve" for m in own)
    out.append(
        Check(
            'no ranked run "may be undertrained"',
            measured,
            "fails" if not flagged.empty else "holds" if not blind else "not measured",
        )
    )
    unfit = unranked[unranked["status"] == "unfit"]
    out.append(
        Check(
            "no run is `unfit` (each failed run is left out of the ranking)",
            ", ".join(f"{r.method} {r.budget} s{r.seed}" for r in unfit.itertuples()) or "none",
            _verdict(unfit.empty),
        )
    )
    out.append(one_pretraining_each(runs))
    organs = organ_means(ranked, metrics, SCRATCH)
    out.append(rises(cells, SCRATCH, budgets))
    out.append(reaches(cells, organs, SCRATCH, budgets[-1], ceiling_target))
    out.append(no_organ_vanishes(organs, SCRATCH, "1pct", "10pct"))
    low = [b for b in budgets if b in ("4slices", "1pct", "10pct")]
    out.append(rises(cells, NNUNET, low))
    out.append(at_least(cells, NNUNET, SCRATCH, "10pct", margin=0.05))
    out.append(at_least(cells, DIFFUSION, SCRATCH, "4slices"))
    out.append(at_least(cells, DIFFUSION, SCRATCH, "1pct"))
    out.append(rises(cells, DIFFUSION, ["1pct", "10pct"]))
    return out


def main(argv: list[str] | None = None) -> None:
    """The checks as a table; a bad protocol, store or output path is one line, exit 2."""
    try:
        _main(argv)
    except LabelbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
    else:
        return
    raise SystemExit(2)


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("reports/phantom/store"))
    parser.add_argument("--protocol", default="phantom")
    parser.add_argument("--min-seeds", type=int, default=3)
    parser.add_argument("--ceiling-target", type=float, default=0.75)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    name = load_protocol(args.protocol).name
    store = ResultsStore(args.results)
    if not store.path.exists():
        raise SystemExit(f"{store.path}: no results store here")
    runs = store.runs(protocol=name, status=FINISHED)
    runs = runs[runs.budget != SUBMISSION]  # `bench evaluate`'s scores: not the grid's runs
    if runs.empty:
        raise SystemExit(f"{store.path}: no finished runs of protocol '{name}'")
    runs = runs[runs["protocol_hash"] == hash_order(runs)[0]]
    runs, other_data = newest_data(runs)  # never checked together: other test volumes
    runs, left_out = newest_code(runs)
    runs = config_variants(runs)  # a trial config beside the defaults is its own "method"
    metrics = store.metrics(runs.run_id)
    curves = store.curves(runs.run_id)
    found = checks(runs, metrics, curves, args.min_seeds, args.ceiling_target)
    text = "\n".join(
        [
            f"Checks of `{name}` from `{args.results}`: {len(runs)} finished runs"
            + (f" ({len(left_out)} of older code left out)" if len(left_out) else "")
            + (f" ({len(other_data)} made on other data left out)" if len(other_data) else ""),
            "",
            md_table(
                ["claim", "measured (mean test DSC)", "verdict"],
                [[c.claim, c.measured, c.verdict] for c in found],
                "lll",
            ),
        ]
    )
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
