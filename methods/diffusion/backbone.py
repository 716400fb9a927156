"""What both diffusion-transfer methods share: the cached DDPM backbone behind the Method API."""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import DiffusionModelUNet

from benchmark.errors import ConfigError
from benchmark.method import PRETRAIN_AND_FINETUNE, GenerativeMethod, RunContext, SliceSet
from methods.diffusion.model import DDPMConfig, model_resolution
from methods.diffusion.pretrain import pretrain_ddpm
from methods.diffusion.sampling import SAMPLERS, default_steps, sample, steps_problem


class DiffusionTransfer(GenerativeMethod):
    """Base of `diffusion-linear` and `diffusion-decoder`: one DDPM per pretraining config,
    which both can sample from (`bench sample`, `bench fidelity`)."""

    uses_pretraining = True
    distributed_pretraining = True  # pretrain_ddpm shards each batch among torchrun's ranks
    pretrain_code = "methods.diffusion.backbone"  # one DDPM for both methods: not linear.py's
    compute = PRETRAIN_AND_FINETUNE
    samplers = SAMPLERS
    backbone: DiffusionModelUNet

    def pretrain_key(self, seed: int) -> dict[str, Any]:
        # Same key for both methods and every fine-tuning seed: the DDPM has its own seed.
        return {"family": "ddpm", **self.config.pretrain_fields()}

    def pretrain(self, unlabeled: SliceSet, ctx: RunContext) -> None:
        cfg: DDPMConfig = self.config
        self.backbone, meta = pretrain_ddpm(cfg, unlabeled, ctx.cache_dir, ctx.device, ctx.progress)
        self.resolution = model_resolution(cfg, unlabeled.slice_size)
        ctx.info["pretrain"] = {
            "cached": meta["cached"],
            "steps": meta["step"],
            "sha256": meta["sha256"][:16],
            "final_loss": sum(meta["losses"][-50:]) / max(1, len(meta["losses"][-50:])),
        }

    @classmethod
    def default_steps(cls, config: DDPMConfig, sampler: str) -> int:
        return default_steps(config, sampler)

    @classmethod
    def check_steps(cls, config: DDPMConfig, sampler: str, steps: int | None) -> int:
        steps = super().check_steps(config, sampler, steps)
        if reason := steps_problem(config, sampler, steps):
            raise ConfigError(f"--steps {steps}: {reason}")
        return steps

    def sample(
        self, n: int, sampler: str, steps: int | None, seed: int, ctx: RunContext
    ) -> torch.Tensor:
        """(n, 1, R, R) samples in [0, 1] from the pretrained DDPM (call after `pretrain`)."""
        return sample(
            self.backbone,
            self.config,
            n,
            self.resolution,
            sampler,
            steps,
            seed,
            progress=ctx.progress,
        )
