"""`bench run`, `bench evaluate` and `bench sweep`: scoring methods (or outside predictions) on
a protocol's test cases, and printing what the runner records."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from benchmark.cli.options import (
    BudgetOpt,
    BudgetsOpt,
    DataOpt,
    DeviceOpt,
    MethodOpt,
    MethodsOpt,
    ProtocolOpt,
    QuietOpt,
    ResultsOpt,
    RunForceOpt,
    RunSeedsOpt,
    SetOpt,
    SweepForceOpt,
    SweepSeedsOpt,
    SweepSetOpt,
    VerifyOpt,
    check_device,
    check_seeds,
    int_seeds,
    names,
    request,
)
from benchmark.cli.output import err, out, user_errors

ELSEWHERE = "done elsewhere meanwhile as run {} (kept; this result discarded)"
"""A run that another process finished while this one ran it (`ResultsStore.write_run`)."""


@user_errors
def run(
    method: MethodOpt,
    budget: BudgetOpt,
    protocol: ProtocolOpt = "phantom",
    seed: RunSeedsOpt = None,
    device: DeviceOpt = "auto",
    results: ResultsOpt = Path("runs"),
    set_: SetOpt = None,
    data: DataOpt = None,
    force: RunForceOpt = False,
    verify: VerifyOpt = False,
    quiet: QuietOpt = False,
    save_predictions: Annotated[
        Path | None,
        typer.Option(
            "--save-predictions",
            help="Also write each test case's predicted labels to DIR/<case>.nii.gz, on the "
            "ground truth's voxel grid (`bench evaluate` reads them).",
        ),
    ] = None,
) -> None:
    """Train METHOD on BUDGET labeled slices and score it on the protocol's test cases."""
    params = dict(locals())  # the options, before any other name is bound
    from benchmark.data.cache import verifying
    from benchmark.errors import check_output_dir
    from benchmark.progress import Progress
    from benchmark.runner import RunRequest, execute, prepare
    from benchmark.store import check_results_dir

    check_device(device)
    check_seeds(*(seed or []))
    check_results_dir(results)  # before any work: a bad results path fails in a second
    check_output_dir(save_predictions, "--save-predictions")
    progress = Progress(quiet=quiet, console=err)
    failed = 0
    with verifying(verify):
        try:
            data_ctx = None
            for s in seed or [0]:
                prepared = prepare(request(RunRequest, params, seed=s), progress, data_ctx)
                data_ctx = prepared.data
                outcome = execute(prepared, progress)
                n = len(prepared.budget_ids)
                label = f"{method} · {budget} · seed {s} · {n} labeled slices"
                if outcome.status == "skipped":
                    out.print(
                        f"{label}: already completed as run {outcome.run_id} "
                        "(use --force to re-run)"
                    )
                elif outcome.status == "elsewhere":
                    out.print(f"{label}: {ELSEWHERE.format(outcome.run_id)}", highlight=False)
                elif outcome.status == "failed":
                    failed += 1
                    err.print(
                        f"[red]run {outcome.run_id} failed:[/red] {outcome.error}", highlight=False
                    )
                else:
                    _print_outcome(label, outcome)
        finally:
            progress.stop()
    if failed:
        raise typer.Exit(1)


def _print_outcome(label: str, outcome: Any) -> None:
    rec = outcome.record
    _print_scores(label, outcome)
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in rec.phases.items())
    out.print(
        f"wall {rec.wall_s:.1f}s ({phases}); peak memory {rec.peak_mem_mb:.0f} MB; {rec.device}",
        highlight=False,
    )
    samples = (
        f"{rec.finetune_samples:,} fine-tuning samples"
        if rec.finetune_samples is not None
        else "the method's own schedule"
    )
    checks = [samples]
    if rec.val_dsc is not None:
        checks.append(f"validation DSC {rec.val_dsc:.3f}")
    if rec.train_dsc is not None:
        checks.append(f"DSC on its labeled slices {rec.train_dsc:.3f}")
    out.print("; ".join(checks), highlight=False)
    for warning in _not_ranked(rec):
        err.print(f"[yellow]{warning}[/yellow]", highlight=False)


def _print_scores(label: str, outcome: Any) -> None:
    """The per-organ table of a recorded run: one column per declared metric."""
    from benchmark.metrics.registry import display_name

    per_organ = outcome.per_organ
    metrics = [c for c in per_organ.columns if c not in ("organ_id", "organ")]
    table = Table(title=f"{label} (run {outcome.run_id})")
    table.add_column("organ")
    for name in metrics:
        table.add_column(display_name(name), justify="right")
    for _, r in per_organ.iterrows():
        table.add_row(str(r["organ"]), *(f"{r[n]:.3f}" for n in metrics))
    table.add_section()
    table.add_row("mean", *(f"{per_organ[n].mean():.3f}" for n in metrics))
    out.print(table)


def _not_ranked(rec: Any) -> list[str]:
    """Why a recorded run will not be ranked (empty when it will)."""
    reasons = []
    if rec.status == "unfit":
        reasons.append(f"not ranked, {rec.error}")
    if rec.off_protocol:
        reasons.append(f"not ranked, off-protocol: {rec.off_protocol}")
    return reasons


@user_errors
def evaluate(
    pred: Annotated[
        Path,
        typer.Option(
            "--pred",
            help="Folder of 3D label maps, one per test case: <case>.nii.gz (as the "
            "ground truth, nnU-Net and FLARE22) or <case>_0000.nii.gz (as the image), on the "
            "ground truth's voxel grid and in its axis order.",
        ),
    ],
    protocol: ProtocolOpt = "phantom",
    data: DataOpt = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Name of the submission (default: the folder's name)."),
    ] = None,
    results: ResultsOpt = Path("runs"),
    quiet: QuietOpt = False,
) -> None:
    """Score predictions made outside the harness with the protocol's metrics and rules.

    The scores are stored as a submission (shown in the leaderboard, never ranked) with the
    SHA-256 of every file, and written per case to RESULTS/submissions/PROTOCOL/NAME.csv.
    """
    from benchmark.evaluate import EvaluateRequest
    from benchmark.evaluate import evaluate as run_evaluation
    from benchmark.progress import Progress
    from benchmark.runner import outcome

    progress = Progress(quiet=quiet, console=err)
    try:
        done = run_evaluation(EvaluateRequest(pred, protocol, data, name, results), progress)
    finally:
        progress.stop()
    rec = done.record
    shown = outcome(rec, done.rows)
    _print_scores(f"{rec.method} · submission", shown)
    out.print(f"per-case CSV: {done.csv}; stored as run {rec.run_id}", highlight=False)


@user_errors
def sweep(
    methods: MethodsOpt,
    budgets: BudgetsOpt = "4slices,1pct,10pct",
    seeds: SweepSeedsOpt = "0,1,2",
    protocol: ProtocolOpt = "phantom",
    executor: Annotated[
        str, typer.Option("--executor", help="local (processes on this machine) or ray.")
    ] = "local",
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", help="Runs at a time on the local executor.")
    ] = 1,
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="Ray cluster to join (default: start a local one)."),
    ] = None,
    cpus_per_run: Annotated[
        int, typer.Option("--cpus-per-run", help="CPUs each Ray task declares.")
    ] = 1,
    device: DeviceOpt = "auto",
    results: ResultsOpt = Path("runs"),
    set_: SweepSetOpt = None,
    data: DataOpt = None,
    force: SweepForceOpt = False,
    stop_after: Annotated[
        float | None,
        typer.Option(
            "--stop-after",
            help="Start no new run after this many seconds (local executor); running ones "
            "finish, the rest wait for the next sweep.",
        ),
    ] = None,
    verify: VerifyOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run every METHOD × BUDGET × SEED not yet in the store; exit code 1 when a run failed
    (2 is bad input, as everywhere)."""
    params = dict(locals())
    from benchmark.data.cache import verifying
    from benchmark.metrics.registry import display_name
    from benchmark.progress import Progress
    from benchmark.sweep import SweepRequest, run_sweep

    check_device(device, here=executor != "ray")  # a Ray cluster's GPUs are its workers'
    grid = request(
        SweepRequest, params, methods=names(methods), budgets=names(budgets), seeds=int_seeds(seeds)
    )
    progress = Progress(quiet=quiet, console=err)

    def report(f: Any) -> None:
        label = f"{f.method} · {f.budget} · seed {f.seed}"
        if f.status == "skipped":
            out.print(f"{label}: already completed as run {f.run_id}", highlight=False)
        elif f.status == "elsewhere":
            out.print(f"{label}: {ELSEWHERE.format(f.run_id)}", highlight=False)
        elif f.status == "left":
            out.print(f"{label}: not started (--stop-after)", highlight=False)
        elif f.status == "failed":
            err.print(f"[red]{label}: run {f.run_id} failed:[/red] {f.error}", highlight=False)
        else:
            unfit = f" [yellow]{f.error}[/yellow]" if f.status == "unfit" else ""
            means = ", ".join(f"{display_name(k)} {v:.3f}" for k, v in f.scores.items())
            out.print(f"{label}: mean {means} (run {f.run_id}){unfit}", highlight=False)

    try:
        with verifying(verify):
            result = run_sweep(grid, progress, report)
    finally:
        progress.stop()
    failed = result.count("failed")
    out.print(
        f"sweep: {result.count('completed')} completed, {result.count('unfit')} unfit, "
        f"{result.count('skipped') + result.count('elsewhere')} already done, {failed} failed"
        + (f", {result.count('left')} not started" if result.count("left") else "")
        + f"; results in {results}",
        highlight=False,
    )
    if failed:
        raise typer.Exit(1)  # not the count: 2 failed runs would read as bad input
