"""Which runs a leaderboard pools, by the code that made them (`benchmark.fingerprint`).

By default a method is reported by its runs under its newest code: for each (protocol hash,
method), the fingerprint of its most recently finished run; its runs under other
fingerprints (older code, or none recorded: runs made before fingerprints) are left out and
counted. A method whose code changed is thus shown as it is now, and one that did not keeps
its runs. `--mix-code` pools every fingerprint instead, with a warning in the report.
"""

from __future__ import annotations

import pandas as pd

UNKNOWN = "unknown"
"""How a run without a fingerprint (recorded before them) is shown."""


def _codes(runs: pd.DataFrame) -> pd.Series:
    if "code" not in runs:
        return pd.Series(UNKNOWN, index=runs.index)
    return runs["code"].fillna(UNKNOWN).astype(str)


def newest_code(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, left out): per (protocol hash, method) the runs under the fingerprint of its
    most recently finished run, and the others."""
    if runs.empty:
        return runs, runs.iloc[0:0]
    codes = _codes(runs)
    latest = runs.assign(_code=codes).sort_values("finished_at", kind="stable")
    newest = latest.groupby(["protocol_hash", "method"])["_code"].last()
    keys = pd.MultiIndex.from_frame(runs[["protocol_hash", "method"]])
    keep = codes.to_numpy() == newest.reindex(keys).to_numpy()
    return runs[keep], runs[~keep]


def mixed_methods(runs: pd.DataFrame) -> dict[str, int]:
    """Method → number of fingerprints among its runs, for methods with more than one."""
    counts = runs.assign(_code=_codes(runs)).groupby("method")["_code"].nunique()
    return {str(m): int(n) for m, n in counts.items() if n > 1}


def _short(code: str) -> str:
    return "-".join(part[:8] for part in code.split("-"))


def code_note(runs: pd.DataFrame, left_out: pd.DataFrame, mix: bool) -> list[str]:
    """Markdown lines that say which code the report pools: the runs left out (default), or
    a warning when `mix` pools several fingerprints of a method."""
    from benchmark.report import _plural

    out = []
    if mix and (mixed := mixed_methods(runs)):
        listed = ", ".join(f"{m} ({n})" for m, n in sorted(mixed.items()))
        out += [
            f"> **⚠️ WARNING: `--mix-code` pools runs made by different code** (fingerprints per "
            f"method: {listed}). Their numbers may not be comparable; without `--mix-code` "
            "each method is reported by its runs under its newest code.",
            "",
        ]
    if not left_out.empty:
        by_method = left_out.groupby("method").size()
        listed = ", ".join(f"{m} {n}" for m, n in by_method.items())
        out += [
            f"Left out {_plural(len(left_out), 'run')} made by older code than each method's "
            f"newest runs ({listed}); `bench report --mix-code` pools them.",
            "",
        ]
    codes = _codes(runs)
    shared = codes.map(lambda c: (c.split("-")[0], c.split("-")[-1]))
    if not mix and shared[codes != UNKNOWN].nunique() > 1:
        out += [
            "> **⚠️ The methods below ran under different core code or package versions** "
            "(the first and last parts of their fingerprints differ): rerun the older ones to "
            "compare like with like.",
            "",
        ]
    per_method = runs.assign(_code=codes.map(_short)).groupby("method")["_code"]
    listed = " · ".join(f"{m} `{', '.join(sorted(set(c)))}`" for m, c in per_method)
    if listed:
        out += [f"Code fingerprints (core-method-packages): {listed}.", ""]
    return out
