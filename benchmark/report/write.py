"""`write_report`: the report's files for one protocol from the store's frames, written
atomically, plots first so the Markdown and HTML never link to a missing image; and
`report_from_store`, which reads those frames from a results store first.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.errors import StoreError, check_output_dir
from benchmark.protocol import load_protocol
from benchmark.report.files import (
    CURVES_NAME,
    HEATMAP_NAME,
    HTML_NAME,
    MD_NAME,
    PLOT_NAME,
    atomic_write,
)
from benchmark.report.frames import (
    check_metrics,
    config_variants,
    hash_order,
    newest_code,
    newest_data,
    plot_hash,
    select_protocol,
    split_ranked,
)
from benchmark.report.html import render_html
from benchmark.report.markdown import generative_section, render_markdown
from benchmark.report.plots import plot_curves, plot_dsc_vs_labels, plot_organ_heatmap
from benchmark.report.tables import per_organ, summarize
from benchmark.store import FINISHED, ResultsStore


def write_report(
    protocol: str,
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    out_dir: Path,
    generative: pd.DataFrame | None = None,
    curves: pd.DataFrame | None = None,
    ceilings: pd.DataFrame | None = None,
    mix_code: bool = False,
) -> Path:
    """Write LEADERBOARD.md, LEADERBOARD.html and the plots into out_dir; return the .md path.

    With no segmentation runs but generative rows, the report holds the generative section only.
    """
    out_dir = Path(out_dir)
    if (runs is None or runs.empty) and generative is not None and not generative.empty:
        gen = generative[generative["protocol"] == protocol]
        if not gen.empty:
            markdown = "\n".join(
                [
                    f"# Leaderboard: {protocol}",
                    "",
                    "No completed segmentation runs yet (`bench run`); generative quality only.",
                    "",
                    *generative_section(gen),
                ]
            ).rstrip()
            page = render_html(markdown, out_dir)
            atomic_write(out_dir / HTML_NAME, lambda tmp: tmp.write_text(page, encoding="utf-8"))
            return atomic_write(
                out_dir / MD_NAME, lambda tmp: tmp.write_text(markdown + "\n", encoding="utf-8")
            )
    selected = select_protocol(protocol, runs)
    every = newest_data(selected)[0]  # render_markdown names the runs left out
    finished = config_variants(every if mix_code else newest_code(every)[0])
    runs = split_ranked(finished)[0]
    curves_plot = None
    if curves is not None and not curves.empty:
        newest = finished[finished["protocol_hash"] == hash_order(finished)[0]]
        if plot_curves(newest, curves, out_dir / CURVES_NAME):
            curves_plot = CURVES_NAME
    markdown = render_markdown(
        protocol, selected, metrics, PLOT_NAME, generative, curves, curves_plot, ceilings, mix_code
    )
    if not runs.empty:
        check_metrics(protocol, runs, metrics)
        # Different protocol hashes are not comparable: the plots show one (the newest) only.
        shown = runs[runs["protocol_hash"] == plot_hash(runs, metrics)]
        plot_dsc_vs_labels(summarize(shown, metrics), out_dir / PLOT_NAME)
        plot_organ_heatmap(per_organ(shown, metrics), out_dir / HEATMAP_NAME)
    # Plots first, so the Markdown and HTML never link to a missing image.
    page = render_html(markdown, out_dir)
    atomic_write(out_dir / HTML_NAME, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return atomic_write(out_dir / MD_NAME, lambda tmp: tmp.write_text(markdown, encoding="utf-8"))


def report_from_store(
    protocol: str, results: Path, out_dir: Path | None = None, mix_code: bool = False
) -> Path:
    """Write the report of `protocol` (a name or .toml path) from the results store in folder
    `results` into `out_dir` (default reports/<protocol name>); return the .md path.

    A missing store, or one with neither completed runs nor generative rows for the protocol,
    is a `StoreError`."""
    name = load_protocol(protocol).name
    store = ResultsStore(results)
    if not store.path.exists():
        raise StoreError(f"{store.path}: no results store here; run `bench run` first")
    runs = store.runs(protocol=name, status=FINISHED)
    generative = store.generative(protocol=name)
    if runs.empty and generative.empty:
        others = sorted(set(store.runs(status=FINISHED)["protocol"]))
        hint = (
            f" (it has runs of: {', '.join(others)}; pass --protocol with that name, or the "
            "protocol's .toml file for one that is not built in)"
            if others
            else ""
        )
        raise StoreError(f"{store.path}: no completed runs for protocol '{name}'{hint}")
    metrics = store.metrics(runs.run_id)
    if not runs.empty and not metrics["run_id"].isin(runs["run_id"]).any() and generative.empty:
        raise StoreError(f"{store.path}: no per-case scores for the runs of protocol '{name}'")
    curves = store.curves(runs.run_id)
    target = Path(out_dir or Path("reports") / name)
    check_output_dir(target, "--out")
    try:
        return write_report(
            name, runs, metrics, target, generative, curves, store.ceilings(), mix_code
        )
    except OSError as exc:
        where = exc.filename or target
        raise StoreError(f"{where}: cannot write the report ({exc.strerror or exc})") from None
