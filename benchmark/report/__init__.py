"""Stored results to a leaderboard: `write_report` writes LEADERBOARD.md, LEADERBOARD.html
and the plots of one protocol; the rest are its parts, for tests and scripts.

One module per stage, data before text:

- `frames`: store frames to the runs a report pools and ranks (protocol, newest code,
  ranked or not), per-case scores, and the order budgets and hashes are shown in.
- `stats`: two-level bootstrap intervals (cases, then seeds), paired Wilcoxon tests, Holm.
- `tables`: the summary, per-organ, cost and ceiling tables as DataFrames.
- `sections`, `markdown`: the Markdown of one hash's results, and the page around them.
- `plots`, `html`: the PNGs, and the self-contained HTML page.
- `formatting`, `files`: shared text formatting; file names and the atomic write.
- `write`: `write_report`, which puts them together, and `report_from_store`, which reads
  the frames from a results store for it (`bench report`).
"""

from __future__ import annotations

from benchmark.report.files import CURVES_NAME, HEATMAP_NAME, HTML_NAME, MD_NAME, PLOT_NAME
from benchmark.report.frames import (
    KEY_COLUMNS,
    UNKNOWN,
    config_variants,
    metric_names,
    mixed_methods,
    newest_code,
    newest_data,
    split_ranked,
    undertrained,
)
from benchmark.report.html import render_html
from benchmark.report.markdown import code_note, curves_section, render_markdown, unranked_section
from benchmark.report.plots import plot_curves, plot_dsc_vs_labels, plot_organ_heatmap
from benchmark.report.stats import (
    ALPHA,
    BOOT_SEED,
    N_BOOT,
    TEST_COLUMNS,
    bootstrap_ci,
    case_bootstrap_ci,
    holm,
    paired_tests,
    smallest_p,
)
from benchmark.report.tables import ceiling_scores, per_organ, summarize
from benchmark.report.write import report_from_store, write_report

__all__ = [
    "ALPHA",
    "BOOT_SEED",
    "CURVES_NAME",
    "HEATMAP_NAME",
    "HTML_NAME",
    "KEY_COLUMNS",
    "MD_NAME",
    "N_BOOT",
    "PLOT_NAME",
    "TEST_COLUMNS",
    "UNKNOWN",
    "bootstrap_ci",
    "case_bootstrap_ci",
    "ceiling_scores",
    "code_note",
    "config_variants",
    "curves_section",
    "holm",
    "metric_names",
    "mixed_methods",
    "newest_code",
    "newest_data",
    "paired_tests",
    "per_organ",
    "plot_curves",
    "plot_dsc_vs_labels",
    "plot_organ_heatmap",
    "render_html",
    "render_markdown",
    "report_from_store",
    "smallest_p",
    "split_ranked",
    "summarize",
    "undertrained",
    "unranked_section",
    "write_report",
]
