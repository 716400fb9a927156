"""The report's file names and the one way every file of it is written: atomically, so a
reader (a browser, a CI job) never sees half a leaderboard or half a plot.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOT_NAME = "dsc_vs_labels.png"
HEATMAP_NAME = "organ_dsc_heatmap.png"
CURVES_NAME = "learning_curves.png"
HTML_NAME = "LEADERBOARD.html"
MD_NAME = "LEADERBOARD.md"


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Write via a temp file in the same folder, then os.replace, so readers never see half.

    `write` creates the temp file itself, so the report gets the usual permissions (0644
    under umask 022); `tempfile.mkstemp` would make it 0600, unreadable to anyone else.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_png(fig: Figure, out_png: Path) -> Path:
    """Save `fig` as a PNG at `out_png` through `atomic_write` (inside the caller's style
    context: drawing happens here)."""
    return atomic_write(Path(out_png), lambda tmp: fig.savefig(tmp, format="png"))
