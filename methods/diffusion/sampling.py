"""Sampling from the pretrained DDPM (ancestral DDPM or deterministic DDIM)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from monai.networks.nets import DiffusionModelUNet

from benchmark.progress import Progress
from methods.diffusion.model import DDPMConfig, build_scheduler, from_model_output

SAMPLERS = ("ddpm", "ddim")
"""Ancestral DDPM (the default) and deterministic DDIM."""
DDIM_STEPS = 50


def default_steps(cfg: DDPMConfig, sampler: str) -> int:
    """Steps when none are asked for: T for DDPM, 50 for DDIM."""
    return cfg.train_timesteps if sampler == "ddpm" else DDIM_STEPS


def steps_problem(cfg: DDPMConfig, sampler: str, steps: int) -> str | None:
    """Why `sampler` cannot sample in `steps` steps, or None. MONAI's DDPM update always steps
    from t to t - 1 (it does not respace the schedule), so a DDPM chain of fewer than T steps
    ends far too noisy: DDPM takes all T steps; DDIM takes any number up to T."""
    if sampler == "ddpm" and steps != cfg.train_timesteps:
        return (
            f"the ddpm sampler takes all {cfg.train_timesteps} steps (MONAI's DDPM update does "
            f"not respace the schedule); use --sampler ddim for fewer"
        )
    if steps > cfg.train_timesteps:
        return f"more than the model's {cfg.train_timesteps} diffusion steps"
    return None


@torch.no_grad()
def sample(
    model: DiffusionModelUNet,
    cfg: DDPMConfig,
    n: int,
    resolution: int,
    sampler: str = "ddpm",
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> torch.Tensor:
    """`n` samples (n, 1, R, R) in [0, 1]. `steps` defaults to T for DDPM and 50 for DDIM.

    On CUDA with `cfg.mixed_precision` the UNet runs under bf16 autocast, as in pretraining;
    the sampler's update stays in fp32.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, not {sampler!r}")
    device = next(model.parameters()).device
    model.eval()
    scheduler = build_scheduler(cfg, sampler)
    steps = steps or default_steps(cfg, sampler)
    if reason := steps_problem(cfg, sampler, steps):
        raise ValueError(f"{steps} steps: {reason}")
    scheduler.set_timesteps(steps, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and cfg.mixed_precision
        else nullcontext()
    )
    out = []
    n_batches = -(-n // batch_size)
    task = (
        progress.task(f"sampling ({sampler}, {steps} steps)", n_batches * steps)
        if progress
        else None
    )
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        x = torch.randn(m, 1, resolution, resolution, generator=gen, device=device)
        for t in scheduler.timesteps:
            ts = torch.full((m,), int(t), device=device, dtype=torch.long)
            with amp:
                eps = model(x, ts).float()
            x, _ = (
                scheduler.step(eps, int(t), x, generator=gen)
                if sampler == "ddpm"
                else scheduler.step(eps, int(t), x)
            )
            if task:
                task.advance()
        out.append(from_model_output(x).cpu())
    if task:
        task.close()
    return torch.cat(out)
