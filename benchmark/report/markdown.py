"""The leaderboard page in Markdown (`render_markdown`): the header and how to read it, the
code note, one results section per protocol hash (`benchmark.report.sections`), the runs not
ranked, the learning curves, generative quality and provenance.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pandas as pd

from benchmark.metrics.registry import display_name, get_metric
from benchmark.report.formatting import f3, md_table, plural
from benchmark.report.frames import (
    UNKNOWN,
    check_metrics,
    config_variants,
    hash_order,
    metric_names,
    mixed_methods,
    newest_code,
    newest_data,
    own_selection_rule,
    plot_hash,
    run_codes,
    select_protocol,
    split_ranked,
    undertrained,
)
from benchmark.report.sections import results_section
from benchmark.report.stats import N_BOOT


def _scored(runs: pd.DataFrame, metrics: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The metric rows of `runs`, and the metrics they hold values of (a store's wide frame
    has a column for every metric any run was scored on)."""
    mine = metrics[metrics["run_id"].isin(runs["run_id"])]
    return mine, [n for n in metric_names(metrics) if mine[n].notna().any()]


def _metric_key(runs: pd.DataFrame, metrics: pd.DataFrame) -> str:
    """What each metric scored by these runs is, from its declaration ("DSC: Dice ...")."""
    parts = []
    for name in _scored(runs, metrics)[1]:
        try:
            metric = get_metric(name)
            parts.append(f"{metric.display}: {metric.doc}")
        except ValueError:  # a store may hold a metric this checkout does not declare
            parts.append(f"{name.upper()}: a metric this checkout does not declare")
    return "; ".join(parts)


def render_markdown(
    protocol: str,
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    plot_name: str | None = None,
    generative: pd.DataFrame | None = None,
    curves: pd.DataFrame | None = None,
    curves_plot: str | None = None,
    ceilings: pd.DataFrame | None = None,
    mix_code: bool = False,
) -> str:
    """The leaderboard as Markdown; `plot_name` (a path relative to the .md) is embedded.

    `generative` (the store's `generative` rows) adds a generative-quality section for the
    rows of this protocol, when there are any. Only ranked runs (completed, on-protocol)
    enter the tables; `unfit` and off-protocol runs are listed apart with their reason.
    `curves` (the store's learning curves) adds the curve section, `curves_plot` its image;
    `ceilings` (the store's ceiling rows) adds the protocol's ceiling under each score table.
    Each method is reported by its runs under its newest code fingerprint, and the report says
    how many it left out; `mix_code` pools every fingerprint, with a warning
    (`benchmark.report.frames.newest_code`).
    """
    finished, other_data = newest_data(select_protocol(protocol, runs))
    finished, older = (finished, finished.iloc[0:0]) if mix_code else newest_code(finished)
    finished = config_variants(finished)
    note = data_note(other_data) + code_note(finished, older, mix_code)
    runs, unranked = split_ranked(finished)
    if runs.empty:
        return _unranked_only(protocol, finished, unranked, metrics, curves, curves_plot, note)
    check_metrics(protocol, runs, metrics)
    hashes = hash_order(runs)
    methods = runs["method"].nunique()
    budgets = runs["budget"].nunique()
    last = str(runs["finished_at"].max())
    out = [f"# Leaderboard: {protocol}", ""]
    overview = (
        f"{plural(len(runs), 'completed run')} · {plural(methods, 'method')} · "
        f"{plural(budgets, 'budget')} · last run finished {last}"
    )
    how_to_read = (
        "Each score is the mean over test cases of each case's mean over seeds of a per-case "
        "score: the mean over organs of one of the protocol's metrics "
        f"({_metric_key(runs, metrics)}). Brackets: "
        f"95% percentile bootstrap CI, two-level ({N_BOOT} resamples: test cases drawn with "
        "replacement, then seeds within each drawn case). Budget headers give the number of "
        "labeled training slices; bold marks the best method per column."
    )
    if len(hashes) == 1:
        out += [f"Protocol hash `{hashes[0]}` · {overview}", "", how_to_read, "", *note]
        out += results_section(runs, metrics, 2, plot_name, ceilings)
    else:
        listed = ", ".join(f"`{h}`" for h in hashes)
        shown = plot_hash(runs, metrics)
        out += [
            f"Protocol hashes {listed} · {overview}",
            "",
            f"> **⚠️ WARNING: these runs were made under {len(hashes)} different protocol "
            f"hashes.** The protocol definition changed between runs, so results under different "
            f"hashes are **not comparable**. Each hash has its own section below, newest first"
            + (f"; the plot shows only `{shown}`." if plot_name else "."),
            "",
            how_to_read,
            "",
            *note,
        ]
        for i, ph in enumerate(hashes):
            sub = runs[runs["protocol_hash"] == ph]
            if not metrics["run_id"].isin(sub["run_id"]).any():
                out += [f"## Protocol hash `{ph}`", "", "No per-case metrics for these runs.", ""]
                continue
            label = " (newest)" if i == 0 else ""
            out += [
                f"## Protocol hash `{ph}`{label}",
                "",
                f"{plural(len(sub), 'run')}, last finished {sub['finished_at'].max()}.",
                "",
            ]
            out += results_section(sub, metrics, 3, plot_name if ph == shown else None, ceilings)
    out += unranked_section(unranked, metrics)
    out += curves_section(finished, curves, curves_plot)
    if generative is not None and "protocol" in generative:
        out += generative_section(generative[generative["protocol"] == protocol])
    out += _provenance(finished)
    return "\n".join(out).rstrip() + "\n"


def _unranked_only(
    protocol: str,
    finished: pd.DataFrame,
    unranked: pd.DataFrame,
    metrics: pd.DataFrame,
    curves: pd.DataFrame | None,
    curves_plot: str | None,
    note: list[str],
) -> str:
    out = [
        f"# Leaderboard: {protocol}",
        "",
        f"No ranked runs: all {plural(len(unranked), 'finished run')} are unfit or off-protocol.",
        "",
        *note,
        *unranked_section(unranked, metrics),
        *curves_section(finished, curves, curves_plot),
        *_provenance(finished),
    ]
    return "\n".join(out).rstrip() + "\n"


def _short(code: str) -> str:
    return "-".join(part[:8] for part in code.split("-"))


def _per_method(runs: pd.DataFrame) -> str:
    """`method count, ...`: how many of `runs` each method has."""
    return ", ".join(f"{m} {n}" for m, n in runs.groupby("method").size().items())


def data_note(left_out: pd.DataFrame) -> list[str]:
    """Markdown lines naming the runs left out because they were made on other data than the
    newest run (`benchmark.report.frames.newest_data`)."""
    if left_out.empty:
        return []
    listed = _per_method(left_out)
    keys = ", ".join(f"`{k[:8]}`" for k in sorted(left_out["dataset_key"].astype(str).unique()))
    return [
        f"> **⚠️ Left out {plural(len(left_out), 'run')} made on other data** than the newest "
        f"ranked run ({listed}; data keys {keys}): other input files or preprocessing "
        "settings, such as a copy of the data set with a file changed or a phantom generated "
        "elsewhere. Their test volumes differ, so they are not compared with these; rerun "
        "them on these data (`--mix-code` does not pool them).",
        "",
    ]


def code_note(runs: pd.DataFrame, left_out: pd.DataFrame, mix: bool) -> list[str]:
    """Markdown lines that say which code the report pools: the runs left out (default), or
    a warning when `mix` pools several fingerprints of a method."""
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
        listed = _per_method(left_out)
        out += [
            f"Left out {plural(len(left_out), 'run')} made by older code than each method's "
            f"newest runs ({listed}); `bench report --mix-code` pools them.",
            "",
        ]
    codes = run_codes(runs)
    shared = codes.map(lambda c: (c.split("-")[0], c.split("-")[-1]))
    if shared[codes != UNKNOWN].nunique() > 1:
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


def _reason(run: pd.Series) -> str:
    reasons = []
    if run["status"] == "unfit":
        reasons.append(str(run["error"]))
    if isinstance(run.get("off_protocol"), str):
        reasons.append(f"off-protocol: {run['off_protocol']}")
    return "; ".join(reasons)


def unranked_section(unranked: pd.DataFrame, metrics: pd.DataFrame) -> list[str]:
    """Markdown listing every finished run left out of the ranking, with its mean test score
    in every metric it was scored on."""
    if unranked.empty:
        return []
    mine, names = _scored(unranked, metrics)
    means = mine.groupby("run_id")[names].mean() if names else pd.DataFrame()
    rows = [
        [
            str(r.method),
            str(r.budget),
            str(r.seed),
            *(f3(means[n].get(r.run_id, float("nan"))) for n in names),
            f3(r.get("train_dsc", float("nan"))),
            _reason(r),
        ]
        for _, r in unranked.sort_values(["method", "budget", "seed"]).iterrows()
    ]
    header = ["method", "budget", "seed", *(f"test {display_name(n)}" for n in names)]
    header += ["train-slice DSC", "why not ranked"]
    return [
        "## Not ranked",
        "",
        "Finished runs that are shown but never ranked: `unfit` runs failed the sanity gate "
        "(their fitted model does not segment its own labeled slices), off-protocol runs "
        "trained with other compute than the protocol's budget, and submissions (budget "
        "`submission`, scored with `bench evaluate`) were trained outside the harness.",
        "",
        md_table(header, rows, "llr" + "r" * len(names) + "rl"),
        "",
    ]


def curves_section(
    runs: pd.DataFrame, curves: pd.DataFrame | None, plot_name: str | None
) -> list[str]:
    """Markdown: the learning-curve plot and the runs flagged "may be undertrained"."""
    if curves is None or curves.empty or not curves["run_id"].isin(runs["run_id"]).any():
        return []
    curves = curves[curves["run_id"].isin(runs["run_id"])]
    out = [
        "## Learning curves",
        "",
        "Mean validation DSC against labeled samples seen in fine-tuning, one line per run. "
        "The kept model is the best validated one (unless a method declares its own rule).",
        "",
    ]
    if plot_name:
        out += [f"![Learning curves]({plot_name})", ""]
    flagged = undertrained(runs, curves)
    without = runs[~runs["run_id"].isin(curves["run_id"])]
    if not without.empty:
        counts = without.groupby("method").size()
        listed = ", ".join(
            f"{m} ({n}" + (f"; {rule}" if (rule := own_selection_rule(str(m))) else "") + ")"
            for m, n in counts.items()
        )
        out += [f"Runs without a learning curve, so not checked for undertraining: {listed}.", ""]
    if flagged.empty:
        out += ["No run with a curve is flagged: every best validation score came before the "
                "last 10 % of training, or the curve had stopped rising.", ""]  # fmt: skip
    else:
        listed = ", ".join(f"{r.method} · {r.budget} · seed {r.seed}" for r in flagged.itertuples())
        out += [
            f"**May be undertrained** ({len(flagged)}): {listed}. Their best validation score "
            "came in the last 10 % of training while still rising.",
            "",
        ]
    return out


def generative_section(gen: pd.DataFrame) -> list[str]:
    """Table of `bench fidelity` rows (one per stored evaluation), or nothing when none."""
    if gen is None or gen.empty:
        return []
    gen = gen.sort_values(["method", "sampler", "steps", "n", "seed", "finished_at"], kind="stable")
    seeds = gen["seed"].nunique() > 1
    hashes = gen["protocol_hash"].nunique() > 1
    stand_in = gen["extractor"] != "inception"
    header = ["method", "sampler", "steps", "N"] + (["seed"] if seeds else [])
    header += ["FID ↓", "sFID ↓", "P ↑", "R ↑", "F1 ↑", "KID ↓", "MS-SSIM"]
    header += ["protocol hash"] if hashes else []
    rows = []
    for r, alt in zip(gen.itertuples(), stand_in, strict=True):
        row = [f"{r.method} †" if alt else r.method, r.sampler, str(r.steps), str(r.n)]
        row += [str(r.seed)] if seeds else []
        row += [f"{r.fid:.2f}", f"{r.sfid:.2f}", f3(r.precision), f3(r.recall), f3(r.f1)]
        row += [f"{r.kid:.4f}", f3(r.ms_ssim)]
        row += [f"`{r.protocol_hash}`"] if hashes else []
        rows.append(row)
    out = [
        "## Generative quality",
        "",
        "Samples of each pretrained generative model against as many real slices drawn from "
        "the held-out test cases, both at the model's resolution. FID and sFID: Fréchet "
        "distances of Inception-v3 pool features and of its Mixed_6d spatial features (first "
        "7 channels, 17 × 17, as in guided-diffusion); P / R / F1: precision, recall and their "
        "F1 on the Inception pool features (k = 3; Kynkäänniemi et al. and torch-fidelity's "
        "default use VGG-16 features, so these are not comparable with published P / R); "
        "KID: kernel inception distance; MS-SSIM: mean "
        "pairwise MS-SSIM among the samples (lower = more diverse). Computed with "
        "torch-fidelity; N is the number of samples and of real slices. FID and sFID are "
        "biased upward at small N: compare rows of equal N only, never with published values "
        "made with 50,000 samples.",
        "",
        md_table(header, rows, "llrr" + "r" * (len(header) - 4)),
        "",
    ]
    if stand_in.any():
        out += [
            "† Stand-in features (a fixed-seed random conv net, not Inception): these numbers "
            "are not FID values and compare only with other † rows.",
            "",
        ]
    if hashes:
        out += [
            "> **⚠️ These rows were made under different protocol hashes; rows under different "
            "hashes are not comparable.**",
            "",
        ]
    codes = gen["code"].fillna("") if "code" in gen else pd.Series("", index=gen.index)
    if codes.nunique() > 1:
        listed = " · ".join(
            f"{r.method} {r.sampler} N={r.n} `{_short(c) if c else 'unknown'}`"
            for r, c in zip(gen.itertuples(), codes, strict=True)
        )
        out += [
            "> **⚠️ These rows were made by different code** (sampling method, FID code or "
            f"package versions; fingerprints core-method-packages-fidelity: {listed}): rerun "
            "`bench fidelity` for the older ones to compare like with like.",
            "",
        ]
    return out


def _provenance(runs: pd.DataFrame) -> list[str]:
    seen: dict[str, Counter] = {}
    for raw in runs["versions"]:
        for pkg, ver in _versions(raw).items():
            seen.setdefault(pkg, Counter())[ver] += 1
    pkgs = sorted(seen, key=lambda p: (p != "python", p.lower()))
    mixed = [p for p in pkgs if len(seen[p]) > 1]
    parts = []
    for p in pkgs:
        vers = " / ".join(f"{v} ({n} runs)" if len(seen[p]) > 1 else v for v, n in seen[p].items())
        parts.append(f"{p} {vers}")
    commits = Counter(runs["git_commit"].map(_short_commit))
    commit_text = ", ".join(
        f"`{c}` ({plural(n, 'run')})" for c, n in sorted(commits.items(), key=lambda x: -x[1])
    )
    out = ["## Provenance", ""]
    if mixed:
        out += [f"Runs used different versions of: {', '.join(mixed)}.", ""]
    out += [
        "Package versions: " + (" · ".join(parts) if parts else "not recorded") + ".",
        "",
        f"Git commit{'s' if len(commits) > 1 else ''}: {commit_text}.",
        "",
    ]
    return out


def _versions(raw: object) -> dict[str, str]:
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    try:
        parsed = json.loads(str(raw))
    except (TypeError, ValueError):
        return {"(unparsed)": str(raw)}
    if not isinstance(parsed, dict):
        return {"(unparsed)": str(raw)}
    return {str(k): str(v) for k, v in parsed.items()}


def _short_commit(commit: str) -> str:
    m = re.fullmatch(r"([0-9a-f]{12})[0-9a-f]{28}(.*)", str(commit))
    return m.group(1) + m.group(2) if m else str(commit)
