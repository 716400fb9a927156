"""`bench pretrain`, `bench sample` and `bench fidelity`: a method's pretraining (relaunched
under torchrun for `--nproc`), samples from its generative model, and their fidelity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from benchmark.cli.options import (
    DataOpt,
    DeviceOpt,
    FidelitySeedOpt,
    GenerativeMethodOpt,
    PretrainMethodOpt,
    PretrainSeedOpt,
    ProtocolOpt,
    QuietOpt,
    ResultsOpt,
    SamplerOpt,
    SampleSeedOpt,
    SetOpt,
    StepsOpt,
    check_device,
    check_seeds,
    request,
)
from benchmark.cli.output import err, out, user_errors


@user_errors
def pretrain(
    method: PretrainMethodOpt,
    protocol: ProtocolOpt = "phantom",
    set_: SetOpt = None,
    device: DeviceOpt = "auto",
    data: DataOpt = None,
    seed: PretrainSeedOpt = 0,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            help="Processes for data-parallel (DDP) pretraining, launched with torchrun; "
            "one GPU each with --device cuda, gloo on CPU. Only for methods that have it.",
        ),
    ] = 1,
    quiet: QuietOpt = False,
) -> None:
    """Pretrain METHOD on the protocol's unlabeled slices (cached; resumes when interrupted)."""
    import json
    import time

    from benchmark import distributed
    from benchmark.errors import ConfigError
    from benchmark.progress import Progress
    from benchmark.registry import get_method
    from benchmark.runner import pretrained_method

    check_device(device)
    check_seeds(seed)
    if nproc < 1:
        raise ConfigError("--nproc must be at least 1")
    processes = max(nproc, distributed.world_size())  # also under the user's own torchrun
    if processes > 1 and not get_method(method).distributed_pretraining:
        raise ConfigError(
            f"method '{method}' has no data-parallel pretraining: each of {processes} "
            "processes would pretrain all of it; use --nproc 1"
        )
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


@user_errors
def sample(
    method: GenerativeMethodOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")],
    n: Annotated[int, typer.Option("--n", help="Number of samples.")] = 64,
    sampler: SamplerOpt = None,
    steps: StepsOpt = None,
    protocol: ProtocolOpt = "phantom",
    set_: SetOpt = None,
    device: DeviceOpt = "auto",
    data: DataOpt = None,
    seed: SampleSeedOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Draw samples from METHOD's pretrained generative model: a PNG grid and the raw array."""
    params = dict(locals())  # the options, before any other name is bound
    from benchmark.errors import ConfigError
    from benchmark.progress import Progress
    from benchmark.registry import get_generative
    from benchmark.samples import SampleRequest, draw_samples

    check_device(device)
    check_seeds(seed)
    sampler = get_generative(method).check_sampler(sampler)
    if n < 1:  # --steps: the method's check_steps, in draw_samples, before any pretraining
        raise ConfigError("--n must be at least 1")
    progress = Progress(quiet=quiet, console=err)
    try:
        seconds = draw_samples(request(SampleRequest, params, sampler=sampler), progress)
    finally:
        progress.stop()
    out.print(
        f"wrote {n} samples ({sampler}) to {out_dir} in {seconds:.1f}s "
        f"({n / seconds:.2f} images/s)",
        highlight=False,
    )


@user_errors
def fidelity(
    method: GenerativeMethodOpt,
    protocol: ProtocolOpt = "phantom",
    n: Annotated[
        int | None,
        typer.Option("--n", help="Samples and real test slices (default: all, at most 1000)."),
    ] = None,
    sampler: SamplerOpt = None,
    steps: StepsOpt = None,
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
    seed: FidelitySeedOpt = 0,
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
    params = dict(locals())  # the options, before any other name is bound
    from benchmark.fidelity import FidelityRequest, evaluate_fidelity, prepare_fidelity
    from benchmark.progress import Progress
    from benchmark.store import ResultsStore

    check_device(device)
    check_seeds(seed)
    progress = Progress(quiet=quiet, console=err)
    try:
        prepared = prepare_fidelity(request(FidelityRequest, params), progress)
        outcome = evaluate_fidelity(prepared, progress)
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
