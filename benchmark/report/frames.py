"""From the store's frames (`runs`, `metrics`, `curves`) to the ones a report is built from:
which runs a leaderboard pools, which it ranks, and in what order it shows them.

- **Protocol**: a report is of one protocol; its runs under several protocol hashes are kept
  apart (`hash_order`, newest first), never pooled.
- **Code**: by default a method is reported by its runs under its newest code: for each
  (protocol hash, method), the fingerprint (`benchmark.fingerprint`) of its most recently
  finished run; its runs under other fingerprints (older code, or none recorded: runs made
  before fingerprints) are left out and counted (`newest_code`). A method whose code changed
  is thus shown as it is now, and one that did not keeps its runs. `--mix-code` pools every
  fingerprint instead, with a warning in the report.
- **Config**: runs of one method with different configs are separate rows, named by the
  fields that differ (`config_variants`); execution-only fields do not count.
- **Ranking**: a run is ranked only when it finished, passed the sanity gate (status
  `completed`) and ran on the protocol's compute (`off_protocol` empty); every other finished
  run is listed with its reason (`split_ranked`).
- **Scores**: one row per (run, test case), the mean over organs of every metric
  (`case_scores`); budgets ordered by labeled slices (`budget_order`).
- **Learning curves**: a run whose best validation score came in the last tenth of training
  while still rising is flagged "may be undertrained" (`undertrained`, by
  `benchmark.validation.may_be_undertrained`).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from benchmark.config import execution_fields
from benchmark.validation import CurvePoint, may_be_undertrained

KEY_COLUMNS = ("run_id", "case_id", "organ_id", "organ")
"""Columns of a metrics frame that are not metrics; every other column is one metric."""


def metric_names(metrics: pd.DataFrame) -> list[str]:
    """The metrics in a (wide) metrics frame, in the order they were recorded."""
    return [c for c in metrics.columns if c not in KEY_COLUMNS]


def require_runs(runs: pd.DataFrame, protocol: str | None = None) -> None:
    """Raise ValueError (what to do next included) when there is no run to report."""
    if runs is None or runs.empty:
        where = f" for protocol '{protocol}'" if protocol else ""
        raise ValueError(f"no completed runs{where}: nothing to report (run `bench run` first)")


def budget_order(runs: pd.DataFrame) -> list[str]:
    """Budgets by median labeled slices over all their runs (name breaks ties)."""
    med = runs.groupby("budget")["n_labeled"].median()
    return sorted(med.index, key=lambda b: (med[b], str(b)))


def case_scores(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, case): mean over organs of every metric, with method/budget/seed."""
    names = metric_names(metrics)
    per_case = metrics.groupby(["run_id", "case_id"], as_index=False)[names].mean()
    return per_case.merge(runs[["run_id", "method", "budget", "seed"]], on="run_id")


def hash_order(runs: pd.DataFrame) -> list[str]:
    """Protocol hashes, the one with the most recently finished run first."""
    last = runs.groupby("protocol_hash")["finished_at"].max()
    return sorted(last.index, key=lambda h: str(last[h]), reverse=True)


def plot_hash(runs: pd.DataFrame, metrics: pd.DataFrame) -> str:
    """The hash the plot shows: the newest one that has metrics (hashes are not comparable)."""
    with_metrics = set(metrics["run_id"])
    return next(
        h
        for h in hash_order(runs)
        if runs.loc[runs["protocol_hash"] == h, "run_id"].isin(with_metrics).any()
    )


def select_protocol(protocol: str, runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of `protocol` (all of them when `runs` has no protocol column); ValueError
    naming the protocols there are when it has none."""
    require_runs(runs, protocol)
    if "protocol" in runs:
        mine = runs[runs["protocol"] == protocol]
        if mine.empty:
            others = ", ".join(sorted(map(str, runs["protocol"].unique())))
            raise ValueError(
                f"no completed runs for protocol '{protocol}' (the runs given are for: {others})"
            )
        return mine
    return runs


def check_metrics(protocol: str, runs: pd.DataFrame, metrics: pd.DataFrame) -> None:
    """Raise ValueError when none of `runs` has per-case metrics."""
    if metrics is None or not metrics["run_id"].isin(runs["run_id"]).any():
        raise ValueError(
            f"no per-case metrics for the completed runs of protocol '{protocol}': "
            "nothing to report"
        )


def ranked_mask(runs: pd.DataFrame) -> np.ndarray:
    """Which finished runs are ranked: `completed` and on-protocol."""
    ranked = np.ones(len(runs), dtype=bool)
    if "status" in runs:
        ranked &= (runs["status"] == "completed").to_numpy()
    if "off_protocol" in runs:
        ranked &= runs["off_protocol"].isna().to_numpy()
    return ranked


def split_ranked(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ranked, unranked) finished runs: ranked are `completed` and on-protocol."""
    ranked = ranked_mask(runs)
    return runs[ranked], runs[~ranked]


UNKNOWN = "unknown"
"""How a run without a fingerprint (recorded before them) is shown."""


def run_codes(runs: pd.DataFrame) -> pd.Series:
    """Each run's code fingerprint as a string, `UNKNOWN` where none was recorded."""
    if "code" not in runs:
        return pd.Series(UNKNOWN, index=runs.index)
    return runs["code"].fillna(UNKNOWN).astype(str)


def newest_code(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, left out): per (protocol hash, method) the runs under the fingerprint of its
    most recently finished run, and the others."""
    if runs.empty:
        return runs, runs.iloc[0:0]
    codes = run_codes(runs)
    latest = runs.assign(_code=codes).sort_values("finished_at", kind="stable")
    newest = latest.groupby(["protocol_hash", "method"])["_code"].last()
    keys = pd.MultiIndex.from_frame(runs[["protocol_hash", "method"]])
    keep = codes.to_numpy() == newest.reindex(keys).to_numpy()
    return runs[keep], runs[~keep]


DATA_COLUMNS = ["dataset_key", "split_hash"]
"""What a run was trained and scored on: the slice store (every input file's bytes, the
preprocessing and the code that read them) and the split."""


def newest_data(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, left out): per protocol hash, the runs made on the data of its most recently
    finished ranked run (of any run, when none is ranked), and the others. One protocol can
    be run on other data: another copy of a data set with a file changed, a phantom
    generated elsewhere. Their test volumes differ, so their scores are never pooled or
    paired, whatever the code policy. The data key is the input files' bytes, the case ids
    and the preprocessing settings (`benchmark.data.slicestore.data_key`), not the code that
    read them: that is the code fingerprint's business. A smoke run or a submission on other
    data never hides the ranked runs."""
    if runs.empty or not set(DATA_COLUMNS) <= set(runs.columns):
        return runs, runs.iloc[0:0]
    data = runs[DATA_COLUMNS].astype(str).agg("/".join, axis=1)
    order = runs.assign(_data=data, _ranked=ranked_mask(runs)).sort_values(
        ["_ranked", "finished_at"], kind="stable"
    )
    newest = order.groupby("protocol_hash")["_data"].last()
    keep = data.to_numpy() == newest.reindex(runs["protocol_hash"]).to_numpy()
    return runs[keep], runs[~keep]


def _identity(method: str, config: dict[str, Any]) -> dict[str, Any]:
    """A run's config less the method's execution-only fields (all of it when the method is
    not installed here)."""
    from benchmark.errors import LabelbenchError
    from benchmark.registry import get_method

    try:
        execution = execution_fields(get_method(method).Config)
    except (LabelbenchError, TypeError):
        return config
    return {k: v for k, v in config.items() if k not in execution}


VARIANT = " ["
"""What opens a config variant's suffix in a method's name (`unet-scratch [lr=0.003]`)."""


def own_selection_rule(method: str) -> str | None:
    """The selection rule of a method that declares its own (nnU-Net keeps its final
    checkpoint, and records no validation curve by design), else None; `method` as a report
    names it (a config variant's suffix allowed), None when it is not installed here."""
    from benchmark.errors import LabelbenchError
    from benchmark.registry import get_method
    from benchmark.validation import BEST_VALIDATED

    try:
        rule = get_method(method.split(VARIANT)[0]).selection_rule
    except LabelbenchError:
        return None
    return None if rule == BEST_VALIDATED else rule


def config_variants(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs of one method under one protocol hash but with different configs (a `--set lr=…`
    trial beside the defaults) are not pooled: each run's `method` becomes `name [key=value,
    …]`, naming the fields in which that method's configs differ, so each config is its own
    row everywhere (tables, ranking, tests, plots). Execution-only fields do not count."""
    if runs.empty or "config" not in runs:
        return runs
    out = runs.copy()
    for (_, method), group in runs.groupby(["protocol_hash", "method"], sort=False):
        configs = [_identity(str(method), json.loads(c or "{}")) for c in group["config"]]
        if len({json.dumps(c, sort_keys=True) for c in configs}) < 2:
            continue
        keys = sorted(
            k
            for k in set().union(*configs)
            if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1
        )
        for index, config in zip(group.index, configs, strict=True):
            setting = ", ".join(f"{k}={json.dumps(config.get(k))}" for k in keys)
            out.at[index, "method"] = f"{method}{VARIANT}{setting}]"
    return out


def mixed_methods(runs: pd.DataFrame) -> dict[str, int]:
    """Method → number of fingerprints among its runs, for methods with more than one."""
    counts = runs.assign(_code=run_codes(runs)).groupby("method")["_code"].nunique()
    return {str(m): int(n) for m, n in counts.items() if n > 1}


def undertrained(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """The runs whose learning curve says they may be undertrained."""
    flagged = []
    for run_id, grp in curves.groupby("run_id"):
        points = [
            CurvePoint(int(r.samples), float(r.train_loss), float(r.val_dsc))
            for r in grp.sort_values("samples").itertuples()
        ]
        if may_be_undertrained(points):
            flagged.append(run_id)
    return runs[runs["run_id"].isin(flagged)]
