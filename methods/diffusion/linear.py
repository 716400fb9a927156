"""`diffusion-linear`: a frozen DDPM backbone and a pixel classifier on its decoder features,
trained on features cached once per run: the seed paper's linear head (`head=linear`) or
DDPM-Seg's MLP ensemble (`head=mlp-ensemble`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from benchmark.config import non_negative, positive
from benchmark.method import RunContext, SliceSet
from benchmark.supervised import draw_batches, fine_tune, fine_tuning_steps, predict_in_batches
from methods.diffusion.backbone import DiffusionTransfer
from methods.diffusion.features import DEFAULT_TIMESTEPS, DecoderTaps, FeatureBank, by_resolution
from methods.diffusion.heads import HEADS, VOTES, LinearHead, MLPEnsemble, build_head
from methods.diffusion.model import DDPMConfig, build_scheduler, model_resolution

HEAD_LR = {"linear": 3e-2, "mlp-ensemble": 3e-3}
"""Default learning rate per head (config `lr` unset), each the best of three validation trials
(the class docstring of `DiffusionLinearConfig`)."""


@dataclass(frozen=True)
class DiffusionLinearConfig(DDPMConfig):
    """DDPM pretraining (shared with diffusion-decoder) plus the pixel classifier.

    Tuning, on the phantom's validation cases only (never test):

    - Architecture, by `perf/ablation_diffusion.py` (two seeds, the protocol's 12,800
      pretraining samples for every variant, comparisons paired at equal fine-tuning
      length; table in
      `reports/phantom/studies/ablation_diffusion/ABLATION.md`): the MLP ensemble beats the
      linear head in 8 of 8 paired comparisons (+0.053 mean validation DSC at `4slices`,
      +0.024 at `1pct`); three timesteps beat one 6 of 6 (+0.021); a 64 × 64 model input
      beats 128 × 128 2 of 2 at `1pct` (+0.023, MLP head; at `4slices` the 128 rows had
      twice the fine-tuning samples of the 64 rows and still scored 0.287 against 0.350);
      taps (0, 1, 2) against (0, 1) is +0.008 (5 of 6), within noise, so the cheaper (0, 1)
      stays. Defaults: `head=mlp-ensemble`, input 64, blocks (0, 1), timesteps 50, 150, 250.
    - Learning rate, by `perf/tune_lr.py`: the same three trials as every method (its default
      × 0.3, 1, 3) at `1pct` and `10pct`, seed 0, 9,600 fine-tuning samples (the protocol's
      length when the trials began). Mean validation DSC: mlp-ensemble 3e-4 / 1e-3 / 3e-3 →
      0.371 / 0.456 / 0.468 (3e-3 kept); linear 3e-3 / 1e-2 / 3e-2 → 0.315 / 0.410 / 0.442
      (3e-2 kept). Both winners are the largest trial, so a larger rate is not ruled out.
      (`reports/phantom/studies/tuning_lr/`.)
    """

    tap_timesteps: tuple[int, ...] = non_negative(DEFAULT_TIMESTEPS)
    """Timesteps whose features are concatenated (Baranchuk et al.: 50, 150, 250)."""
    noise_seed: int = non_negative(0)
    """Seed of the fixed noise per timestep."""
    head: str = "mlp-ensemble"
    """Pixel classifier: mlp-ensemble (DDPM-Seg's ensemble of MLPs; chosen on validation) or
    linear (a 1×1 convolution, the seed paper's)."""
    members: int = positive(10)
    """mlp-ensemble: number of MLPs (DDPM-Seg: 10)."""
    hidden: tuple[int, ...] = positive((128, 32))
    """mlp-ensemble: hidden widths, each Linear, ReLU, BatchNorm1d (DDPM-Seg: 128, 32)."""
    vote: str = "majority"
    """mlp-ensemble: majority (mode of the members' labels, DDPM-Seg's; a tie goes to the
    tied label of higher mean probability) or mean-prob."""
    pixels: int = positive(256)
    """mlp-ensemble: random pixels per slice per step (DDPM-Seg trains on pixel batches)."""
    iterations: int | None = positive(None)
    """Optimizer steps of the head. None: the protocol's fine-tuning budget ÷ batch_size
    (rounded up), the same samples for every budget and method; another value makes the run
    off-protocol."""
    batch_size: int = positive(8)
    """Slices per head step."""
    lr: float | None = non_negative(None)
    """AdamW learning rate of the head, cosine-decayed. None: the head's default in `HEAD_LR`
    (3e-3 for mlp-ensemble, 3e-2 for linear)."""
    weight_decay: float = non_negative(1e-4)
    """AdamW weight decay of the head."""
    feature_memory_mb: int = non_negative(2048, execution=True)
    """Cached features above this size go to a float16 disk memory map instead of memory
    (RAM on the CPU, the GPU's memory on a GPU). Execution only: features are float16 values
    wherever they live (`features.storable`)."""
    predict_batch_size: int = positive(32, execution=True)
    """Slices per forward pass when extracting features (execution only)."""

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, not {self.head!r}")
        if self.vote not in VOTES:
            raise ValueError(f"vote must be one of {', '.join(VOTES)}, not {self.vote!r}")

    @property
    def head_lr(self) -> float:
        return HEAD_LR[self.head] if self.lr is None else self.lr


class DiffusionLinear(DiffusionTransfer):
    """Frozen DDPM decoder features at several timesteps → a pixel classifier (linear or
    DDPM-Seg's MLP ensemble) trained on cached features, validated as the protocol asks."""

    name = "diffusion-linear"
    summary = "DDPM pretrained on unlabeled slices, frozen; pixel classifier on decoder features"
    Config = DiffusionLinearConfig

    def _taps(self, ctx: RunContext, slice_size: int) -> DecoderTaps:
        return make_taps(self.backbone.to(ctx.device), self.config, slice_size)

    def fit(self, labeled: SliceSet, ctx: RunContext) -> None:
        cfg = self.config
        self.device = ctx.device
        self.taps = self._taps(ctx, labeled.slice_size)
        bank = FeatureBank(
            self.taps,
            labeled,
            cfg.predict_batch_size,
            cfg.feature_memory_mb,
            ctx.device,
            ctx.progress,
        )
        ctx.info["features"] = {
            "channels": sum(self.taps.channels),
            "megabytes": round(bank.megabytes, 1),
            "on_disk": bank.on_disk,
        }
        val_bank = None
        if ctx.validator is not None:  # validation features are cached once, like the labeled
            val_bank = FeatureBank(
                self.taps,
                ctx.validator.slices,
                cfg.predict_batch_size,
                cfg.feature_memory_mb,
                ctx.device,
                ctx.progress,
            )
        self.head = train_head(bank, labeled, cfg, ctx, self.taps.group_channels, val_bank)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return predict_in_batches(
            lambda x: self.head.labels(by_resolution(self.taps(x))),
            images,
            self.config.predict_batch_size,
            self.device,
        )


STATS_SLICES = 64
"""Labeled slices the head's feature standardisation is estimated on."""


def stats_rows(n: int, k: int = STATS_SLICES) -> np.ndarray:
    """`k` of `n` labeled slices spread evenly over all of them (all when n <= k): slices are
    ordered by case, so the first k could all come from one case of a case budget."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64))


def make_taps(backbone, cfg: DiffusionLinearConfig, slice_size: int) -> DecoderTaps:
    """The decoder taps a config asks for, on a pretrained backbone (already on its device)."""
    return DecoderTaps(
        backbone,
        build_scheduler(cfg),
        model_resolution(cfg, slice_size),
        cfg.tap_blocks,
        cfg.tap_timesteps,
        cfg.noise_seed,
    )


def train_head(
    bank: FeatureBank,
    labeled: SliceSet,
    cfg: DiffusionLinearConfig,
    ctx: RunContext,
    channels: list[int],
    val_bank: FeatureBank | None = None,
) -> LinearHead | MLPEnsemble:
    """Train the configured head on cached features, `fine_tuning_steps` batches of slices.

    With `val_bank` (the cached features of `ctx.validator.slices`) the head is validated
    as the protocol asks and its best weights are kept (`ctx.info["selection"]`).
    """
    torch.manual_seed(ctx.seed)
    steps = fine_tuning_steps(cfg.iterations)
    head = build_head(
        cfg.head, channels, ctx.num_classes, labeled.slice_size, cfg.members, cfg.hidden,
        cfg.vote, cfg.pixels,
    ).to(ctx.device)  # fmt: skip
    head.set_stats(bank.get(stats_rows(len(labeled)), ctx.device))
    labels = labeled.labels().to(ctx.device)
    # The whole fit's random numbers up front, copied to the device once (as the supervised
    # recipe's `draw_streams`): each step's slices, sorted, and the MLP ensemble's pixels.
    host_idx = np.sort(draw_batches(labeled, cfg.batch_size, steps, ctx.seed), axis=1)
    batch_idx = torch.from_numpy(host_idx).to(ctx.device)
    points = head.draw_points(steps, cfg.batch_size, torch.Generator().manual_seed(ctx.seed))
    points = None if points is None else points.to(ctx.device)
    step_of = iter(range(steps))

    def step_loss() -> torch.Tensor:
        i = next(step_of)
        idx = batch_idx[i]
        feats = bank.get(host_idx[i] if bank.on_disk else idx, ctx.device)  # no read-back
        return head.loss(feats, labels.index_select(0, idx), None if points is None else points[i])

    def val_score() -> float:
        assert val_bank is not None and ctx.validator is not None
        n, bs = len(ctx.validator.slices), cfg.predict_batch_size
        pred = [
            head.labels(val_bank.get(np.arange(i, min(i + bs, n)), ctx.device)).cpu()
            for i in range(0, n, bs)
        ]
        return ctx.validator.score_slices(torch.cat(pred))

    head.train()
    title = f"fit {cfg.head} head"
    losses = fine_tune(
        ctx, head, head.parameters(), step_loss, val_score, cfg, cfg.head_lr, steps, title
    )
    ctx.info["head"] = cfg.head
    ctx.info["final_loss"] = losses[-1] if losses else None
    return head.eval()
