"""`bench`: the command line of labelbench."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from benchmark.errors import LabelbenchError

app = typer.Typer(
    help="labelbench: label-efficient CT multi-organ segmentation benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Data sets: generate the built-in phantom.", no_args_is_help=True)
protocol_app = typer.Typer(help="Inspect one protocol.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(protocol_app, name="protocol")

out = Console()
err = Console(stderr=True)

ResultsOpt = Annotated[
    Path, typer.Option("--results", help="Results directory (holds labelbench.sqlite).")
]
ProtocolOpt = Annotated[str, typer.Option("--protocol", "-p", help="Protocol name or .toml path.")]
DataOpt = Annotated[
    Path | None, typer.Option("--data", help="Data folder for protocols that read a path.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
VerifyOpt = Annotated[
    bool,
    typer.Option(
        "--verify",
        help="Hash every input file and cached file again, byte by byte, instead of trusting "
        "the digest memo; a damaged cache is rebuilt.",
    ),
]


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a `LabelbenchError` (or a stray `EOFError`) into one red line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LabelbenchError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except EOFError as exc:
            # A truncated file read outside benchmark.data.reader (which names the file).
            # Escaping, click would take it for Ctrl-D and print a bare "Aborted.".
            reason = str(exc) or "a file ended early"
            err.print(f"[red]error:[/red] truncated input: {escape(reason)}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def run(
    method: Annotated[
        str, typer.Option("--method", "-m", help="Method name (see `bench methods`).")
    ],
    budget: Annotated[
        str, typer.Option("--budget", "-b", help="Budget name (e.g. 4slices, 1pct).")
    ],
    protocol: ProtocolOpt = "phantom",
    seed: Annotated[
        list[int] | None, typer.Option("--seed", "-s", help="Seed; repeat for several.")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    results: ResultsOpt = Path("runs"),
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Method config override key=value; repeatable."),
    ] = None,
    data: DataOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Re-run even if already completed.")
    ] = False,
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
    from benchmark.data.cache import verifying
    from benchmark.progress import Progress
    from benchmark.runner import RunRequest, execute, prepare
    from benchmark.store import check_results_dir

    _check_device(device)
    check_results_dir(results)  # before any work: a bad results path fails in a second
    progress = Progress(quiet=quiet, console=err)
    failed = 0
    with verifying(verify):
        try:
            data_ctx = None
            for s in seed or [0]:
                request = RunRequest(
                    method=method,
                    budget=budget,
                    protocol=protocol,
                    seed=s,
                    device=device,
                    results=results,
                    overrides=list(set_ or []),
                    data=data,
                    force=force,
                    save_predictions=save_predictions,
                )
                prepared = prepare(request, progress, data_ctx)
                data_ctx = prepared.data
                outcome = execute(prepared, progress)
                n = len(prepared.budget_ids)
                label = f"{method} · {budget} · seed {s} · {n} labeled slices"
                if outcome.status == "skipped":
                    out.print(
                        f"{label}: already completed as run {outcome.run_id} "
                        "(use --force to re-run)"
                    )
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
    names = [c for c in per_organ.columns if c not in ("organ_id", "organ")]
    table = Table(title=f"{label} (run {outcome.run_id})")
    table.add_column("organ")
    for name in names:
        table.add_column(display_name(name), justify="right")
    for _, r in per_organ.iterrows():
        table.add_row(str(r["organ"]), *(f"{r[n]:.3f}" for n in names))
    table.add_section()
    table.add_row("mean", *(f"{per_organ[n].mean():.3f}" for n in names))
    out.print(table)


def _not_ranked(rec: Any) -> list[str]:
    """Why a recorded run will not be ranked (empty when it will)."""
    reasons = []
    if rec.status == "unfit":
        reasons.append(f"not ranked, {rec.error}")
    if rec.off_protocol:
        reasons.append(f"not ranked, off-protocol: {rec.off_protocol}")
    return reasons


@app.command()
@user_errors
def evaluate(
    pred: Annotated[
        Path,
        typer.Option(
            "--pred",
            help="Folder of 3D label maps, one per test case: <case>.nii.gz (nnU-Net) or "
            "<case>_0000.nii.gz (FLARE22), on the ground truth's voxel grid.",
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
    SHA-256 of every file, and written per case to RESULTS/submissions/NAME.csv.
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


@app.command()
@user_errors
def report(
    protocol: ProtocolOpt = "phantom",
    results: ResultsOpt = Path("runs"),
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default reports/<protocol>).")
    ] = None,
    mix_code: Annotated[
        bool,
        typer.Option(
            "--mix-code",
            help="Pool runs made by different code (default: each method's newest code only).",
        ),
    ] = False,
) -> None:
    """Write LEADERBOARD.md and plots for one protocol from the results store."""
    from benchmark.report import report_from_store

    path = report_from_store(protocol, results, out_dir, mix_code)
    out.print(f"wrote {path}", highlight=False)


@app.command()
@user_errors
def methods(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show config fields.")] = False,
) -> None:
    """List installed methods (entry-point group labelbench.methods)."""
    from benchmark.config import describe_fields
    from benchmark.registry import installed_methods

    table = Table(title="installed methods")
    for col in ("name", "summary", "package"):
        table.add_column(col)
    for name, entry in installed_methods().items():
        try:
            cls = entry.load()
            summary = cls.summary
            if verbose:
                fields = describe_fields(cls.Config)
                summary += "\n" + "\n".join(f"  {n}: {t} = {d!r}" for n, t, d in fields)
        except Exception as exc:  # a broken plugin must not hide the others
            summary = f"[red]cannot load: {exc}[/red]"
        table.add_row(name, summary, entry.distribution)
    out.print(table)


@app.command()
@user_errors
def protocols() -> None:
    """List available protocols."""
    from benchmark.protocol import available_protocols, load_protocol

    table = Table(title="protocols")
    for col in ("name", "description", "budgets", "file"):
        table.add_column(col)
    for name, path in available_protocols().items():
        p = load_protocol(str(path))
        table.add_row(name, p.description, ", ".join(p.budgets), str(path))
    out.print(table)


@protocol_app.command("show")
@user_errors
def protocol_show(
    name: Annotated[str, typer.Argument(help="Protocol name or .toml path.")],
    data: DataOpt = None,
    seed: Annotated[int, typer.Option("--seed", "-s", help="Budget draw seed.")] = 0,
    quiet: QuietOpt = False,
) -> None:
    """Print the protocol's hash, split sizes and budget sizes (reads the data)."""
    from benchmark.data.context import load_data
    from benchmark.errors import BudgetError
    from benchmark.progress import Progress
    from benchmark.protocol import load_protocol

    protocol = load_protocol(name)
    progress = Progress(quiet=quiet, console=err)
    try:
        ctx = load_data(protocol, data, progress)
    finally:
        progress.stop()
    out.print(
        f"[bold]{protocol.name}[/bold] ({protocol.path}) hash {protocol.hash}", highlight=False
    )
    out.print(
        f"data {ctx.index.root}; slice store {ctx.store.key}; split {ctx.split.hash}",
        highlight=False,
    )
    table = Table(title="split")
    for col in ("part", "cases", "slices"):
        table.add_column(col)
    for part in ("train", "val", "test"):
        ids = getattr(ctx.split, part)
        n = sum(len(ctx.store.rows_of_case(c)) for c in ids)
        table.add_row(part, str(len(ids)), str(n))
    table.add_row("unlabeled", str(len(ctx.index.unlabeled)), "")
    out.print(table)
    candidates = ctx.train_candidates()[0]
    table = Table(
        title=f"budgets (seed {seed}; drawn from {len(candidates)} "
        f"{protocol.draw_from} train slices)"
    )
    for col in ("budget", "definition", "labeled slices", "from cases"):
        table.add_column(col)
    for b in protocol.budgets.values():
        definition = f"{b.count} {b.unit}" if b.count else f"{b.fraction:.0%} of {b.unit}"
        try:
            ids, _ = ctx.budget_rows(b, seed)
        except BudgetError:
            table.add_row(b.name, definition, "[red]larger than the train pool[/red]", "")
            continue
        table.add_row(b.name, definition, str(len(ids)), str(len({i.split(":")[0] for i in ids})))
    out.print(table)


@data_app.command("phantom")
@user_errors
def data_phantom(
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder (nnU-Net raw layout).")],
    cases: Annotated[int, typer.Option(help="Labeled cases.")] = 30,
    unlabeled: Annotated[int, typer.Option(help="Unlabeled cases.")] = 20,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    size: Annotated[int, typer.Option(help="In-plane matrix size (pixels).")] = 512,
    workers: Annotated[int, typer.Option(help="Processes.")] = min(2, os.cpu_count() or 1),
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


SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Method config override key=value; repeatable.")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]


@app.command()
@user_errors
def pretrain(
    method: Annotated[str, typer.Option("--method", "-m", help="A method with pretraining.")],
    protocol: ProtocolOpt = "phantom",
    set_: SetOpt = None,
    device: DeviceOpt = "auto",
    data: DataOpt = None,
    seed: Annotated[
        int, typer.Option("--seed", "-s", help="Run seed (if the method uses it).")
    ] = 0,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            help="Processes for data-parallel (DDP) pretraining, launched with torchrun; "
            "one GPU each with --device cuda, gloo on CPU.",
        ),
    ] = 1,
    quiet: QuietOpt = False,
) -> None:
    """Pretrain METHOD on the protocol's unlabeled slices (cached; resumes when interrupted)."""
    import time

    from benchmark import distributed
    from benchmark.errors import ConfigError
    from benchmark.progress import Progress
    from benchmark.runner import pretrained_method

    _check_device(device)
    if nproc < 1:
        raise ConfigError("--nproc must be at least 1")
    if nproc > 1 and distributed.world_size() == 1:  # not under torchrun yet: relaunch under it
        args = ["pretrain", "--method", method, "--protocol", protocol, "--device", device]
        args += ["--seed", str(seed)]  # each rank sees WORLD_SIZE instead of --nproc
        args += [a for item in set_ or [] for a in ("--set", item)]
        args += ["--data", str(data)] if data else []
        args += ["--quiet"] if quiet else []
        raise typer.Exit(distributed.relaunch(nproc, args))
    rank = distributed.rank()
    progress = Progress(quiet=quiet or rank > 0, console=err)
    try:
        # One rank of torchrun trains on its own GPU (nccl) or the CPU (gloo).
        with distributed.process_group(device) as rank_device:
            t = time.perf_counter()
            _, ctx = pretrained_method(
                protocol, method, list(set_ or []), rank_device, data, seed, progress
            )
    finally:
        progress.stop()
    if rank > 0:
        return
    info = json.dumps(ctx.info.get("pretrain", {}))
    out.print(
        f"pretrained {method} in {time.perf_counter() - t:.1f}s: cache {ctx.cache_dir} {info}",
        highlight=False,
    )


@app.command()
@user_errors
def sample(
    method: Annotated[str, typer.Option("--method", "-m", help="A generative method.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")],
    n: Annotated[int, typer.Option("--n", help="Number of samples.")] = 64,
    sampler: Annotated[
        str | None, typer.Option("--sampler", help="One of the method's (default: its first).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Sampling steps (default T / 50).")
    ] = None,
    protocol: ProtocolOpt = "phantom",
    set_: SetOpt = None,
    device: DeviceOpt = "auto",
    data: DataOpt = None,
    seed: Annotated[int, typer.Option("--seed", "-s", help="Sampling seed.")] = 0,
    quiet: QuietOpt = False,
) -> None:
    """Draw samples from METHOD's pretrained generative model: a PNG grid and the raw array."""
    from benchmark.errors import ConfigError
    from benchmark.progress import Progress
    from benchmark.registry import get_generative
    from benchmark.samples import SampleRequest, draw_samples

    _check_device(device)
    sampler = get_generative(method).check_sampler(sampler)
    if n < 1 or (steps is not None and steps < 1):
        raise ConfigError("--n and --steps must be at least 1")
    progress = Progress(quiet=quiet, console=err)
    request = SampleRequest(
        method=method,
        out_dir=out_dir,
        n=n,
        sampler=sampler,
        steps=steps,
        protocol=protocol,
        seed=seed,
        device=device,
        overrides=list(set_ or []),
        data=data,
    )
    try:
        seconds = draw_samples(request, progress)
    finally:
        progress.stop()
    out.print(
        f"wrote {n} samples ({sampler}) to {out_dir} in {seconds:.1f}s "
        f"({n / seconds:.2f} images/s)",
        highlight=False,
    )


@app.command()
@user_errors
def fidelity(
    method: Annotated[str, typer.Option("--method", "-m", help="A generative method.")],
    protocol: ProtocolOpt = "phantom",
    n: Annotated[
        int | None,
        typer.Option("--n", help="Samples and real test slices (default: all, at most 1000)."),
    ] = None,
    sampler: Annotated[
        str | None, typer.Option("--sampler", help="One of the method's (default: its first).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Sampling steps (default T / 50).")
    ] = None,
    inception_weights: Annotated[
        Path | None,
        typer.Option(
            "--inception-weights",
            help="Inception file weights-inception-2015-12-05-6726825d.pth (else "
            "$LABELBENCH_INCEPTION_WEIGHTS, else torch's hub cache); never downloaded.",
        ),
    ] = None,
    set_: SetOpt = None,
    device: DeviceOpt = "auto",
    data: DataOpt = None,
    seed: Annotated[
        int, typer.Option("--seed", "-s", help="Seed of sampling and of the real-slice draw.")
    ] = 0,
    results: ResultsOpt = Path("runs"),
    quiet: QuietOpt = False,
    extractor: Annotated[
        str,
        typer.Option(
            "--feature-extractor", hidden=True, help="inception, or stand-in (tests only)."
        ),
    ] = "inception",
) -> None:
    """FID, sFID, precision, recall, F1, KID and MS-SSIM of METHOD's samples vs. test slices."""
    from benchmark.fidelity import FidelityRequest, evaluate_fidelity, prepare_fidelity
    from benchmark.progress import Progress
    from benchmark.store import ResultsStore

    _check_device(device)
    request = FidelityRequest(
        method=method,
        protocol=protocol,
        n=n,
        sampler=sampler,
        steps=steps,
        seed=seed,
        device=device,
        results=results,
        overrides=list(set_ or []),
        data=data,
        inception_weights=inception_weights,
        extractor=extractor,
    )
    progress = Progress(quiet=quiet, console=err)
    try:
        outcome = evaluate_fidelity(prepare_fidelity(request, progress), progress)
    finally:
        progress.stop()
    rec = outcome.record
    table = Table(
        title=f"{method} · {rec.sampler} {rec.steps} steps · N = {rec.n} · seed {rec.seed} "
        f"({rec.gen_id})"
    )
    for col in ("FID ↓", "sFID ↓", "precision ↑", "recall ↑", "F1 ↑", "KID ↓", "MS-SSIM"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{rec.fid:.2f}",
        f"{rec.sfid:.2f}",
        f"{rec.precision:.3f}",
        f"{rec.recall:.3f}",
        f"{rec.f1:.3f}",
        f"{rec.kid:.4f} ± {rec.kid_std:.4f}",
        f"{rec.ms_ssim:.3f}",
    )
    out.print(table)
    if rec.extractor != "inception":
        out.print(
            f"[yellow]features: {rec.extractor} (not Inception); not FID values[/yellow]",
            highlight=False,
        )
    ph = rec.phases
    out.print(
        f"sampling {ph['sample']:.1f}s ({rec.n / max(ph['sample'], 1e-9):.2f} images/s); "
        f"metrics {ph['metrics']:.1f}s; diversity {ph['diversity']:.1f}s; "
        f"wall {rec.wall_s:.1f}s; {rec.device}; stored in {ResultsStore(results).path}",
        highlight=False,
    )


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


@app.command()
@user_errors
def sweep(
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated method names.")],
    budgets: Annotated[
        str, typer.Option("--budgets", help="Comma-separated budget names.")
    ] = "4slices,1pct,10pct",
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds.")] = "0,1,2",
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
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value for every method, or method:key=value."),
    ] = None,
    data: DataOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Re-run completed runs.")] = False,
    verify: VerifyOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run every METHOD × BUDGET × SEED not yet in the store; exit code = runs that failed."""
    from benchmark.data.cache import verifying
    from benchmark.metrics.registry import display_name
    from benchmark.progress import Progress
    from benchmark.sweep import SweepRequest, run_sweep

    _check_device(device)
    request = SweepRequest(
        methods=_names(methods),
        budgets=_names(budgets),
        seeds=[_int_seed(s) for s in _names(seeds)],
        protocol=protocol,
        device=device,
        results=results,
        overrides=list(set_ or []),
        data=data,
        executor=executor,
        jobs=jobs,
        ray_address=ray_address,
        cpus_per_run=cpus_per_run,
        force=force,
    )
    progress = Progress(quiet=quiet, console=err)

    def report(f: Any) -> None:
        label = f"{f.method} · {f.budget} · seed {f.seed}"
        if f.status == "skipped":
            out.print(f"{label}: already completed as run {f.run_id}", highlight=False)
        elif f.status == "failed":
            err.print(f"[red]{label}: run {f.run_id} failed:[/red] {f.error}", highlight=False)
        else:
            unfit = f" [yellow]{f.error}[/yellow]" if f.status == "unfit" else ""
            means = ", ".join(f"{display_name(k)} {v:.3f}" for k, v in f.scores.items())
            out.print(f"{label}: mean {means} (run {f.run_id}){unfit}", highlight=False)

    try:
        with verifying(verify):
            result = run_sweep(request, progress, report)
    finally:
        progress.stop()
    failed = result.count("failed")
    out.print(
        f"sweep: {result.count('completed')} completed, {result.count('unfit')} unfit, "
        f"{result.count('skipped')} already done, {failed} failed; results in {results}",
        highlight=False,
    )
    if failed:
        raise typer.Exit(min(failed, 100))


def _int_seed(text: str) -> int:
    from benchmark.errors import ConfigError

    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--seeds: {text!r} is not an integer") from None


def _check_device(device: str) -> None:
    from benchmark.errors import ConfigError

    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ConfigError(f"--device {device}: expected auto, cpu, cuda or cuda:N")


def main() -> None:
    import warnings

    # Emitted by a dependency at import time; not actionable for users of the CLI.
    warnings.filterwarnings("ignore", message="`torch.jit.interface` is deprecated")
    app()


if __name__ == "__main__":
    main()
