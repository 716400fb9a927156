"""DDPM pretraining on unlabeled slices, resumable and cached.

The cache folder (given by the runner, keyed by the content hash of the pretraining config
and the unlabeled pool) holds `checkpoint.pt` while training runs (model, EMA, optimizer,
LR schedule, step, RNG state; rewritten atomically every `checkpoint_every` steps) and
`model.pt` (EMA weights) when done, both hash-checked (`benchmark.checkpoint`).
"""

from __future__ import annotations

import copy
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet

from benchmark.checkpoint import load_verified, save_verified, sha256_file
from benchmark.errors import ConfigError
from benchmark.method import SliceSet
from benchmark.progress import Progress
from methods.diffusion.model import (
    DDPMConfig,
    build_scheduler,
    build_unet,
    model_resolution,
    to_model_input,
)

MODEL = "model.pt"
CHECKPOINT = "checkpoint.pt"
LOG_EVERY = 10
"""Pretraining steps between host syncs of the loss (a sync per step stalls a GPU)."""


def _config_json(cfg: DDPMConfig) -> dict[str, Any]:
    return json.loads(json.dumps(cfg.pretrain_fields()))


def load_pretrained(cfg: DDPMConfig, cache_dir: Path) -> DiffusionModelUNet | None:
    """The cached EMA model, or None when the cache lacks a valid one."""
    loaded = load_verified(Path(cache_dir) / MODEL, _config_json(cfg))
    if loaded is None:
        return None
    model = build_unet(cfg)
    model.load_state_dict(loaded[0]["ema"])
    return model.eval()


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA decay after optimizer step `step` (0-based): `decay`, warmed up as
    min(decay, (1 + step) / (10 + step)), so that a pretraining shorter than the EMA's
    horizon (0.9999 over 800 steps would keep 92 % of the random initial weights) still
    transfers trained weights. From step 9 / (1 - decay) - 1 on it is `decay` itself."""
    return min(decay, (1 + step) / (10 + step))


def pretrain_ddpm(
    cfg: DDPMConfig,
    unlabeled: SliceSet,
    cache_dir: Path,
    device: torch.device,
    progress: Progress,
) -> tuple[DiffusionModelUNet, dict[str, Any]]:
    """Train (or resume, or load from cache) the DDPM; returns the EMA model (eval mode,
    requires_grad off, the same whichever way it was made) and its metadata."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    expect = _config_json(cfg)
    cached = load_verified(cache_dir / MODEL, expect)
    if cached is not None:
        model = build_unet(cfg)
        model.load_state_dict(cached[0]["ema"])
        return model.to(device).eval().requires_grad_(False), {**cached[1], "cached": True}

    rank, world = _distributed()
    if cfg.pretrain_batch_size % world:
        raise ConfigError(
            f"pretrain_batch_size={cfg.pretrain_batch_size} does not split over {world} processes"
        )
    shard = slice(
        rank * cfg.pretrain_batch_size // world, (rank + 1) * cfg.pretrain_batch_size // world
    )
    res = model_resolution(cfg, unlabeled.slice_size)
    torch.manual_seed(cfg.pretrain_seed)
    model = build_unet(cfg).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=0.0)
    warmup = max(1, min(500, cfg.pretrain_iterations // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    scheduler = build_scheduler(cfg)
    gen = torch.Generator().manual_seed(cfg.pretrain_seed)
    step, losses = 0, []
    resumed = load_verified(cache_dir / CHECKPOINT, expect)
    if resumed is not None:
        state = resumed[0]
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["rng"])
        step, losses = int(state["step"]), list(state["losses"].tolist())
        progress.console.print(
            f"resuming DDPM pretraining at step {step}/{cfg.pretrain_iterations}"
        )
    else:
        progress.console.print(
            f"no cached DDPM for this config and unlabeled pool: pretraining "
            f"{cfg.pretrain_iterations} steps on {len(unlabeled)} slices at {res}×{res} "
            f"({cache_dir.name})",
            highlight=False,
        )
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and cfg.mixed_precision
        else nullcontext()
    )
    task = progress.task("DDPM pretraining", cfg.pretrain_iterations)
    task.advance(step)
    model.train()
    ema_params, model_params = list(ema.parameters()), list(model.parameters())
    net: torch.nn.Module = model
    if world > 1:  # gradients averaged over ranks; checkpoints hold the bare model
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    pending: list[torch.Tensor] = []  # losses still on the device: one host sync per LOG_EVERY

    def flush() -> None:
        if pending:
            batch = torch.stack(pending)
            if world > 1:  # the loss of the whole batch: the mean over the ranks' shards
                torch.distributed.all_reduce(batch)
                batch /= world
            losses.extend(batch.tolist())
            task.advance(len(pending), loss=losses[-1])
            pending.clear()

    while step < cfg.pretrain_iterations:
        # Every rank draws the whole batch from the same generator and keeps its shard, so
        # N processes take the same steps as one (and any of them can resume the checkpoint).
        idx = torch.randint(len(unlabeled), (cfg.pretrain_batch_size,), generator=gen).numpy()
        noise = torch.randn((cfg.pretrain_batch_size, 1, res, res), generator=gen)
        t = torch.randint(0, cfg.train_timesteps, (cfg.pretrain_batch_size,), generator=gen)
        x0 = to_model_input(unlabeled.images(idx[shard]), res).to(device)
        noise, t = noise[shard].to(device), t[shard].to(device)
        xt = scheduler.add_noise(original_samples=x0, noise=noise, timesteps=t)
        with amp:
            pred = net(xt, t)
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, model_params, 1 - ema_decay_at(step, cfg.ema_decay))
        step += 1
        pending.append(loss.detach())
        if step % LOG_EVERY == 0 or step % cfg.checkpoint_every == 0:
            flush()
        if rank == 0 and step % cfg.checkpoint_every == 0 and step < cfg.pretrain_iterations:
            state = {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "rng": gen.get_state(),
                "step": step,
                "losses": torch.tensor(losses),
            }
            save_verified(state, cache_dir / CHECKPOINT, {"config": expect, "step": step})
    flush()
    task.close()
    meta = {"config": expect, "step": step, "losses": losses, "resolution": res}
    if rank == 0:
        save_verified({"ema": ema.state_dict()}, cache_dir / MODEL, meta)
        (cache_dir / CHECKPOINT).unlink(missing_ok=True)
        (cache_dir / CHECKPOINT).with_suffix(".json").unlink(missing_ok=True)
    if world > 1:
        torch.distributed.barrier()  # the model file exists before any rank goes on
    meta["world_size"] = world
    return ema.eval(), {**meta, "sha256": sha256_file(cache_dir / MODEL), "cached": False}


def _distributed() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group, or (0, 1) outside one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
