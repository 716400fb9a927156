"""`bench data phantom`: generating the built-in synthetic CT data set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from benchmark.cli.options import QuietOpt
from benchmark.cli.output import err, out, user_errors
from benchmark.processes import usable_cpus


@user_errors
def phantom(
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder (nnU-Net raw layout).")],
    cases: Annotated[int, typer.Option(help="Labeled cases.")] = 30,
    unlabeled: Annotated[int, typer.Option(help="Unlabeled cases.")] = 20,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    size: Annotated[int, typer.Option(help="In-plane matrix size (pixels).")] = 512,
    workers: Annotated[int, typer.Option(help="Processes.")] = min(2, usable_cpus()),
    quiet: QuietOpt = False,
) -> None:
    """Generate the synthetic abdominal CT phantom (13 FLARE22 organs)."""
    from benchmark.data.phantom import PhantomSettings, write_phantom
    from benchmark.errors import DatasetError
    from benchmark.progress import Progress

    if cases < 1 or unlabeled < 0 or size < 32:
        raise DatasetError(f"{out_dir}: need --cases >= 1, --unlabeled >= 0 and --size >= 32")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DatasetError(f"{out_dir}: folder exists and is not empty")
    progress = Progress(quiet=quiet, console=err)
    try:
        settings = PhantomSettings(cases=cases, unlabeled=unlabeled, seed=seed, size=size)
        path = write_phantom(
            out_dir, settings, workers=workers, progress=progress.callback("phantom")
        )
    finally:
        progress.stop()
    meta = json.loads((path / "dataset.json").read_text())
    out.print(
        f"wrote {meta['numTraining']} labeled and {unlabeled} unlabeled cases to {path}",
        highlight=False,
    )
