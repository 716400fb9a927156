"""What the fault tests share besides their fixtures (`flare`, `results` in conftest.py):
the FLARE22-layout case names (the `flare` fixture reads them here), `bench run` on a
folder, and reading the one error line back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from benchmark.cli import app

SPACING = (0.8, 0.8, 3.0)
CASES = [f"FLARE22_Tr_{i:04d}" for i in range(1, 7)]
BAD = CASES[2]  # the case each data fault damages


def bench(
    root: Path, results: Path, *extra: str, protocol: str = "tinypath", method: str = "unet-scratch"
):
    args = ["run", "-m", method, "-b", "4slices", "-p", protocol]
    args += ["--data", str(root), "--results", str(results), *extra]
    return CliRunner().invoke(app, args)


def error_line(result) -> str:
    """The one error line, with no traceback and no stray `Aborted.` from click."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), result.output
    assert sum(ln.startswith("error") for ln in lines) == 1, result.output
    assert "Traceback" not in result.output and "Aborted" not in result.output
    return lines[-1]


def stored_rows(results: Path) -> tuple[int, int]:
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        metrics = conn.execute("SELECT count(*) FROM case_metrics").fetchone()[0]
    return runs, metrics


def image(root: Path, case: str = BAD) -> Path:
    return root / "images" / f"{case}_0000.nii.gz"


def label(root: Path, case: str = BAD) -> Path:
    return root / "labels" / f"{case}.nii.gz"


def resave(path: Path, data: np.ndarray | None = None, affine: np.ndarray | None = None) -> None:
    """Write `path` again with new voxels and/or a new affine."""
    old = nib.load(path)
    data = np.asanyarray(old.dataobj) if data is None else data
    nib.save(nib.Nifti1Image(data, old.affine if affine is None else affine), path)


def diag(*spacing: float) -> np.ndarray:
    return np.diag([*spacing, 1.0])
