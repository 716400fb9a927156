"""Pixel classifiers on cached diffusion features: the seed paper's linear head and
DDPM-Seg's MLP ensemble (Baranchuk et al., ICLR 2022, `src/pixel_classifier.py`).

Both take the features of a batch of slices as `FeatureBank.get` returns them: one tensor
(N, C_g, h_g, w_g) per block resolution g, at the block's own resolution. Both standardise
each channel with statistics of the labeled features, and both see the features bilinearly
upsampled to the slice size (S × S), as DDPM-Seg does. A head answers two questions:
`loss(feats, labels, points)` on a training batch and `labels(feats)` (N, S, S) for
prediction; `draw_points` draws a whole fit's random pixels (`points`) up front.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

HEADS = ("linear", "mlp-ensemble")
VOTES = ("majority", "mean-prob")


def _dice_ce(batch: bool) -> DiceCELoss:
    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=batch)


class Standardise(nn.Module):
    """Per-channel (x − μ) / σ of each resolution group, μ and σ set once from labeled data."""

    def __init__(self, channels: list[int]):
        super().__init__()
        for i, c in enumerate(channels):
            self.register_buffer(f"mean{i}", torch.zeros(1, c, 1, 1))
            self.register_buffer(f"std{i}", torch.ones(1, c, 1, 1))

    def set_stats(self, feats: list[torch.Tensor]) -> None:
        for i, f in enumerate(feats):
            getattr(self, f"mean{i}").copy_(f.mean((0, 2, 3), keepdim=True))
            getattr(self, f"std{i}").copy_(f.std((0, 2, 3), keepdim=True).clamp_min(1e-4))

    def stats(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"mean{i}"), getattr(self, f"std{i}")

    def fold(self, i: int, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A linear map `w` (C_i, out) on group i's standardised features as one on the raw
        features: ((f − μ)/σ)·W = f·(W/σ) − μ·(W/σ); returns (W/σ, −μ·(W/σ)), so no pass
        over the (large) feature maps beyond the map itself."""
        mean, std = self.stats(i)
        folded = w / std.flatten()[:, None]
        return folded, -(mean.flatten() @ folded)


class LinearHead(nn.Module):
    """A 1×1 convolution over the standardised, upsampled, concatenated tapped features
    (the seed paper's "linear classification"), trained with batch Dice + cross-entropy on
    whole slices.

    Computed as Σ_i upsample(W_i · f_i) + b: bilinear upsampling and a 1×1 convolution are
    both linear and upsampling weights sum to one, so this equals the 1×1 convolution of the
    concatenation at full size, at a fraction of the memory and time.
    """

    def __init__(self, channels: list[int], num_classes: int, size: int):
        super().__init__()
        self.size = size
        self.convs = nn.ModuleList(nn.Conv2d(c, num_classes, 1, bias=False) for c in channels)
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.norm = Standardise(channels)
        self._loss = _dice_ce(batch=True)

    def set_stats(self, feats: list[torch.Tensor]) -> None:
        self.norm.set_stats(feats)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """(N, K, S, S) logits."""
        out = self.bias.view(1, -1, 1, 1)
        for i, (conv, f) in enumerate(zip(self.convs, feats, strict=True)):
            w, b = self.norm.fold(i, conv.weight.flatten(1).t())  # (C, K), (K,)
            # A 1×1 convolution as one matrix product (N, HW, C) @ (C, K): faster than the
            # CPU convolution kernels, forward and backward; the rows are a view of a
            # channels-last map (`FeatureBank`'s), a copy otherwise.
            n, c, h, wd = f.shape
            z = torch.addmm(b, f.permute(0, 2, 3, 1).reshape(-1, c), w)  # (N·HW, K)
            z = z.view(n, h, wd, -1).permute(0, 3, 1, 2)  # (N, K, h, w), channels-last
            out = out + _upsample(z, self.size)
        return out

    def draw_points(self, steps: int, n: int, gen: torch.Generator) -> None:
        """None: the linear head trains on whole slices, it draws no pixels."""
        return None

    def loss(
        self, feats: list[torch.Tensor], labels: torch.Tensor, points: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Batch Dice + CE of (N, S, S) label maps (`points` unused)."""
        return self._loss(self(feats), labels[:, None])

    def labels(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self(feats).argmax(1)


class MLPEnsemble(nn.Module):
    """DDPM-Seg's pixel classifier: `members` MLPs, each features → hidden[0] → hidden[1] → …
    → classes, every hidden layer Linear, ReLU, BatchNorm1d (DDPM-Seg's order; 128, 32 for
    fewer than 30 classes), weights drawn N(0, 0.02) as DDPM-Seg's `init_weights`.

    Training (`loss`) follows DDPM-Seg's pixel batches: `pixels` random pixels of each slice
    of the batch, their features bilinearly interpolated from the cached maps at exactly the
    points where upsampling to S × S would put them (`grid_sample`), shared by all members,
    which differ by their initialisation. Loss: mean over members of batch Dice + CE over
    the sampled pixels (DDPM-Seg: CE alone; the Dice term is the harness's recipe, which
    keeps small organs from vanishing). Prediction (`labels`) applies the first layer at
    each group's own resolution and upsamples its output (exact: the layer is linear), then
    votes: `majority` (the mode of the members' argmax, DDPM-Seg's `predict_labels`) or
    `mean-prob` (argmax of the mean softmax). A majority tie (ten members split five to five)
    goes to the tied label of higher mean probability: DDPM-Seg's `torch.mode` gives it to
    the lowest label id on a CPU, which is background, so ties took pixels from organs.
    """

    def __init__(
        self,
        channels: list[int],
        num_classes: int,
        size: int,
        members: int = 10,
        hidden: tuple[int, ...] = (128, 32),
        vote: str = "majority",
        pixels: int = 256,
        chunk: int = 2,
    ):
        super().__init__()
        if vote not in VOTES:
            raise ValueError(f"vote must be one of {VOTES}, not {vote!r}")
        if not hidden:
            raise ValueError("the MLP needs at least one hidden layer")
        self.size, self.members, self.hidden, self.vote = size, members, tuple(hidden), vote
        self.num_classes, self.pixels, self.chunk = num_classes, pixels, chunk
        self.norm = Standardise(channels)
        m = members
        # First layer of every member at once, split by resolution group: (C_g, M·h0).
        self.w_in = nn.ParameterList(
            nn.Parameter(torch.randn(c, m * hidden[0]) * 0.02) for c in channels
        )
        self.b_in = nn.Parameter(torch.zeros(m * hidden[0]))
        widths = [*hidden, num_classes]
        self.w = nn.ParameterList(
            nn.Parameter(torch.randn(m, a, b) * 0.02) for a, b in itertools.pairwise(widths)
        )
        self.b = nn.ParameterList(nn.Parameter(torch.zeros(m, 1, b)) for b in widths[1:])
        self.bn = nn.ModuleList(nn.BatchNorm1d(m * h) for h in hidden)
        self._loss = _dice_ce(batch=False)  # one "sample" per member: Dice over its pixels

    def set_stats(self, feats: list[torch.Tensor]) -> None:
        self.norm.set_stats(feats)

    def _tail(self, z: torch.Tensor) -> torch.Tensor:
        """First-layer pre-activations, bias included, (P, M·h0) → logits (M, P, K). `z` is
        a fresh tensor of the caller's, so its ReLU is taken in place."""
        p, m = len(z), self.members
        z = self.bn[0](torch.relu_(z))
        x = z.view(p, m, -1).transpose(0, 1)  # (M, P, h0)
        for i, (w, b) in enumerate(zip(self.w, self.b, strict=True)):
            x = torch.baddbmm(b, x, w)
            if i + 1 < len(self.w):
                x = self.bn[i + 1](F.relu(x).transpose(0, 1).reshape(p, -1))
                x = x.view(p, m, -1).transpose(0, 1)
        return x

    def pixel_logits(self, feats: list[torch.Tensor], points: torch.Tensor) -> torch.Tensor:
        """Logits (M, N·p, K) at `points` (N, p) flat pixel indices into the S × S slice."""
        row, col = points // self.size, points % self.size
        z = None
        for i, (w, f) in enumerate(zip(self.w_in, feats, strict=True)):
            x = _bilinear_at(f, row, col, self.size)  # (N·p, C)
            # Standardised after sampling, not before: interpolation weights sum to one, so
            # this is the same and touches p pixels instead of whole maps.
            mean, std = self.norm.stats(i)
            x = (x - mean.flatten()) / std.flatten()
            z = torch.addmm(self.b_in, x, w) if z is None else z.addmm_(x, w)
        assert z is not None
        return self._tail(z)

    def draw_points(self, steps: int, n: int, gen: torch.Generator) -> torch.Tensor:
        """The pixels every step of a fit trains on, (steps, n, p) flat indices into the S × S
        slice (int32), drawn from `gen` step by step: the same numbers on every device, and
        moved to the device once instead of once per step."""
        s = self.size
        points = torch.empty(steps, n, min(self.pixels, s * s), dtype=torch.int32)
        for step in points:  # filled in place: no int64 copy of the whole fit's draws
            step.copy_(torch.randint(0, s * s, step.shape, generator=gen))
        return points

    def loss(
        self, feats: list[torch.Tensor], labels: torch.Tensor, points: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean over members of Dice + CE at `points` (N, p), one step of `draw_points`."""
        if points is None:
            raise ValueError("the MLP ensemble trains on sampled pixels: pass `points`")
        points = points.long()
        target = labels.flatten(1).gather(1, points).reshape(1, 1, -1)
        logits = self.pixel_logits(feats, points).transpose(1, 2)  # (M, K, N·p)
        return self._loss(logits, target.expand(self.members, 1, -1))

    def member_logits(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Logits (M, N, K, S, S) of every member on whole slices (in eval mode: the batch
        norms' running statistics), a view of an (M, N, S, S, K) tensor."""
        if self.training:
            raise RuntimeError("member_logits predicts: call it in eval mode")
        n_all, s = len(feats[0]), self.size
        out = feats[0].new_empty(self.members, n_all, s, s, self.num_classes)
        weights, bias = [], self.b_in  # the standardisation folded into the first layer
        for i, w in enumerate(self.w_in):
            folded, shift = self.norm.fold(i, w)
            weights.append(folded)
            bias = bias + shift
        for start in range(0, n_all, self.chunk):
            z = None
            for i, (w, f) in enumerate(zip(weights, feats, strict=True)):
                f = f[start : start + self.chunk]
                n, c, h, wd = f.shape
                # The first layer at the group's own resolution (it commutes with upsampling,
                # whose weights sum to one, so the bias goes in with the first group),
                # channels-last so that the upsampled map's pixel rows are a view.
                rows = f.permute(0, 2, 3, 1).reshape(-1, c)
                x = torch.addmm(bias, rows, w) if i == 0 else torch.mm(rows, w)
                x = _upsample(x.view(n, h, wd, -1).permute(0, 3, 1, 2), s)
                z = x if z is None else z.add_(x)
            assert z is not None
            n = z.shape[0]
            rows = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (n·S·S, M·h0), a view
            out[:, start : start + n] = self._tail_eval(rows).view(self.members, n, s, s, -1)
        return out.permute(0, 1, 4, 2, 3)

    def _tail_eval(self, z: torch.Tensor) -> torch.Tensor:
        """`_tail` with each batch norm's running statistics folded into the layer after it:
        BN(x)·W + b = x·(diag(γ/√(var+ε))·W) + (β − γ·mean/√(var+ε))·W + b."""
        p, m = len(z), self.members
        x = torch.relu_(z).view(p, m, -1).transpose(0, 1)  # (M, P, h0)
        for i, (w, b, norm) in enumerate(zip(self.w, self.b, self.bn, strict=True)):
            assert norm.running_var is not None and norm.running_mean is not None
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            shift = norm.bias - norm.running_mean * scale
            x = torch.baddbmm(b + shift.view(m, 1, -1) @ w, x, scale.view(m, -1, 1) * w)
            if i + 1 < len(self.w):
                x = torch.relu_(x)
        return x

    def labels(self, feats: list[torch.Tensor]) -> torch.Tensor:
        logits = self.member_logits(feats)  # (M, N, K, S, S)
        mean_prob = torch.zeros_like(logits[0])
        for member in logits:  # one member at a time: no second (M, N, K, S, S) tensor
            mean_prob.add_(member.softmax(1), alpha=1 / len(logits))
        if self.vote == "mean-prob":
            return mean_prob.argmax(1)
        votes = torch.zeros_like(mean_prob)
        for member in logits:
            votes.scatter_add_(1, member.argmax(1, keepdim=True), torch.ones_like(votes[:, :1]))
        # The mean probability (at most 1) adds less than one vote: it decides ties only.
        return votes.add_(mean_prob, alpha=0.5).argmax(1)


def _bilinear_at(f: torch.Tensor, row: torch.Tensor, col: torch.Tensor, size: int) -> torch.Tensor:
    """Features (N, C, h, w) at pixels (`row`, `col`), each (N, p), of the map upsampled to
    size × size: exactly what `F.interpolate(f, (size, size), mode="bilinear",
    align_corners=False)` holds there, as (N·p, C), without upsampling the whole map: four
    row gathers of the neighbours from the channels-last map (free when `f` is stored
    channels-last, as `FeatureBank` keeps it)."""
    n, c, h, w = f.shape

    def axis(i: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # PyTorch's source index for align_corners=False, clamped at 0 like interpolate
        src = ((i.flatten().to(f.dtype) + 0.5) * (length / size) - 0.5).clamp_min(0)
        lo = src.floor().long().clamp_max(length - 1)
        return lo, (lo + 1).clamp_max(length - 1), (src - lo).unsqueeze(1)

    y0, y1, wy = axis(row, h)
    x0, x1, wx = axis(col, w)
    rows = f.permute(0, 2, 3, 1).reshape(-1, c)  # (N·h·w, C)
    base = torch.arange(n, device=f.device).repeat_interleave(row.shape[1]) * (h * w)

    def at(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return rows.index_select(0, base + y * w + x)  # (N·p, C)

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def _upsample(z: torch.Tensor, size: int) -> torch.Tensor:
    if z.shape[-1] == size:
        return z
    return F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False)


def build_head(
    kind: str,
    channels: list[int],
    num_classes: int,
    size: int,
    members: int,
    hidden: tuple[int, ...],
    vote: str,
    pixels: int,
) -> LinearHead | MLPEnsemble:
    if kind == "linear":
        return LinearHead(channels, num_classes, size)
    if kind == "mlp-ensemble":
        return MLPEnsemble(channels, num_classes, size, members, hidden, vote, pixels)
    raise ValueError(f"head must be one of {HEADS}, not {kind!r}")
