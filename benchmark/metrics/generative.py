"""Generative quality of samples against real slices: FID, sFID, precision / recall / F1, KID
and the diversity of the samples (mean pairwise MS-SSIM).

FID, precision, recall, F1 and KID come from `torch_fidelity.calculate_metrics` with
`input1` = generated and `input2` = real, all on one feature extractor (Inception-v3's
2048-d pool features; precision / recall with k = 3). sFID follows the guided-diffusion
evaluator: the output of Inception's `Mixed_6d` 1×1 branch (conv, batch norm, ReLU), its
first 7 channels over the 17 × 17 grid, flattened in (H, W, C) order (2023 values per
image), and the Fréchet distance of those features.

Both feature sets come from one Inception pass per image: the extractors registered here
always add their spatial feature to the features torch-fidelity asks for, torch-fidelity
caches every feature of a named input (in a temporary folder), and the spatial features
are read back from that cache after `calculate_metrics` returns.

Inception weights are never downloaded: `resolve_inception_weights` finds the local file
or raises `WeightsError` naming the file and torch-fidelity's download URL. The
`stand-in` extractor (a fixed-seed random conv net, no weights) exists for tests and for
benchmarks on machines without the file; its numbers are not FID values.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torch_fidelity import FeatureExtractorBase, calculate_metrics, register_feature_extractor
from torch_fidelity.feature_extractor_inceptionv3 import (
    URL_INCEPTION_V3,
    FeatureExtractorInceptionV3,
)
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor, extract_featuresdict_from_input_id_cached

from benchmark.data.digests import file_digest
from benchmark.errors import WeightsError

INCEPTION_FILE = Path(URL_INCEPTION_V3).name  # weights-inception-2015-12-05-6726825d.pth
INCEPTION_URL = URL_INCEPTION_V3
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
"""SHA-256 of that file (its name carries the first 8 digits, as torch hub's names do): other
weights, even of the same architecture, make numbers that are not FID."""
WEIGHTS_ENV = "LABELBENCH_INCEPTION_WEIGHTS"
PRC_NEIGHBORHOOD = 3
KID_MAX_SUBSET = 1000
SFID_CHANNELS = 7
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_KERNEL = 11


# --------------------------------------------------------------------------- inputs


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) floats in [0, 1] → (N, 1, H, W) uint8 (round(255 x), clipped)."""
    if images.dtype == torch.uint8:
        return images
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8)


class UInt8Images(Dataset):
    """Gray images as torch-fidelity wants them: uint8 3 × H × W (the gray channel repeated).

    `on_batch(k)` is called with the number of images of every batch the data loader reads
    (through `__getitems__`), so a progress bar can follow feature extraction.
    """

    def __init__(self, images: torch.Tensor, on_batch: Callable[[int], None] | None = None):
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected (N, 1 or 3, H, W) images, got {tuple(images.shape)}")
        self.images = to_uint8(images.cpu())
        self.on_batch = on_batch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i].expand(3, -1, -1).contiguous()

    def __getitems__(self, idx: Sequence[int]) -> list[torch.Tensor]:
        if self.on_batch is not None:
            self.on_batch(len(idx))
        return [self[i] for i in idx]


# --------------------------------------------------------------------------- extractors


def _with_spatial(features: Sequence[str], spatial: str) -> list[str]:
    """The requested features plus the spatial (sFID) feature, so one pass yields both."""
    return [*features, spatial] if spatial not in features else list(features)


class _Extractor(FeatureExtractorBase):
    """What both extractors declare to torch-fidelity: a pooled and a spatial feature, whether
    weights are needed, and that they are not compiled."""

    pool_feature: ClassVar[str]
    spatial_feature: ClassVar[str]
    needs_weights: ClassVar[bool]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 4, 4, dtype=torch.uint8)


class InceptionWithSpatial(_Extractor):
    """torch-fidelity's Inception-v3 (same module, same weights file) plus sFID features.

    Provides Inception's features ('64', '192', '768', '2048', 'logits_unbiased', 'logits')
    and 'sfid': `Mixed_6d.branch1x1` after its conv-bn-ReLU, channels 0..6 of the 17 × 17
    grid, flattened as (H, W, C) like the TensorFlow graph guided-diffusion reads
    (N × 2023, float32).
    """

    pool_feature: ClassVar[str] = "2048"
    spatial_feature: ClassVar[str] = "sfid"
    needs_weights: ClassVar[bool] = True

    def __init__(self, name: str, features_list: Sequence[str], **kwargs):
        features = _with_spatial(features_list, self.spatial_feature)
        super().__init__(name, features)
        base = [f for f in features if f != self.spatial_feature]
        # With sfid alone, stop Inception right after Mixed_6e ('768') instead of running it all.
        self._base = base or ["768"]
        self.inception = FeatureExtractorInceptionV3(name, self._base, **kwargs)
        self._spatial: torch.Tensor | None = None
        self.inception.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        self._spatial = output

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return (*FeatureExtractorInceptionV3.get_provided_features_list(), "sfid")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return FeatureExtractorInceptionV3.get_default_feature_layer_for_metric(metric)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._spatial = None
        base = dict(zip(self._base, self.inception(x), strict=True))
        assert self._spatial is not None, "Mixed_6d.branch1x1 did not run"
        spatial = self._spatial[:, :SFID_CHANNELS].permute(0, 2, 3, 1)
        base[self.spatial_feature] = spatial.reshape(len(x), -1).to(torch.float32)
        self._spatial = None
        return tuple(base[f] for f in self.features_list)


class StandInExtractor(_Extractor):
    """A fixed-seed random conv net standing in for Inception where its weights are absent.

    NOT Inception: its numbers only rank sets against each other under the same stand-in
    (tests, benchmarks). Images are resized to 64 × 64 and scaled like Inception's input;
    three stride-2 3 × 3 convs with ReLU (8, 16, 16 channels) give 'pool' (the last
    averaged over a 2 × 2 grid, 64-d, so where things are still counts) and 'spatial' (its
    first 7 channels on the 8 × 8 grid, (H, W, C) order, 448-d), the counterparts of
    '2048' and 'sfid'. Small on purpose: torch-fidelity's FID costs O(D³).
    """

    pool_feature: ClassVar[str] = "pool"
    spatial_feature: ClassVar[str] = "spatial"
    needs_weights: ClassVar[bool] = False
    SEED: ClassVar[int] = 20151205

    def __init__(self, name: str, features_list: Sequence[str], **kwargs):
        super().__init__(name, _with_spatial(features_list, self.spatial_feature))
        gen = torch.Generator().manual_seed(self.SEED)
        self.convs = nn.ModuleList()
        for c_in, c_out in ((3, 8), (8, 16), (16, 16)):
            conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
                conv.weight.mul_((2.0 / (c_in * 9)) ** 0.5)
                conv.bias.zero_()
            self.convs.append(conv)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("pool", "spatial")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "pool"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = F.interpolate(x.float(), size=(64, 64), mode="bilinear", align_corners=False)
        h = (h - 128) / 128
        for conv in self.convs:
            h = F.relu(conv(h))
        out = {
            "pool": F.adaptive_avg_pool2d(h, 2).flatten(1),
            "spatial": h[:, :SFID_CHANNELS].permute(0, 2, 3, 1).reshape(len(x), -1),
        }
        return tuple(out[f] for f in self.features_list)


EXTRACTORS: dict[str, tuple[str, type[FeatureExtractorBase]]] = {
    "inception": ("labelbench-inception-v3-sfid", InceptionWithSpatial),
    "stand-in": ("labelbench-stand-in", StandInExtractor),
}
"""Our extractor name → (name registered with torch-fidelity, class)."""

for _name, _cls in EXTRACTORS.values():
    if _name not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(_name, _cls)


def resolve_inception_weights(path: Path | str | None = None, verify: bool = True) -> Path:
    """The local Inception weights file: `path`, else `$LABELBENCH_INCEPTION_WEIGHTS`, else
    torch's hub cache (`<torch hub dir>/checkpoints/weights-inception-2015-12-05-6726825d.pth`,
    where torch-fidelity itself would store its download). Raises `WeightsError` if missing,
    unreadable, or (with `verify`, always so for `bench fidelity`) not byte for byte the file
    torch-fidelity publishes (`INCEPTION_SHA256`); `verify=False` is for the tests' and speed
    scripts' Inception with random weights, whose numbers mean nothing.
    """
    if path is not None:
        where, candidate = "--inception-weights", Path(path)
    elif os.environ.get(WEIGHTS_ENV):
        where, candidate = f"${WEIGHTS_ENV}", Path(os.environ[WEIGHTS_ENV])
    else:
        where = "torch hub cache"
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    candidate = candidate.expanduser()
    if not candidate.is_file():
        raise WeightsError(
            f"{candidate}: Inception weights not found ({where}); nothing is downloaded at run "
            f"time: download {INCEPTION_URL} and pass --inception-weights FILE or set "
            f"{WEIGHTS_ENV}"
        )
    if verify:
        try:
            digest = file_digest(candidate)
        except OSError as exc:
            raise WeightsError(f"{candidate}: cannot be read ({exc.strerror or exc})") from None
        if digest != INCEPTION_SHA256:
            raise WeightsError(
                f"{candidate}: SHA-256 {digest[:16]}... is not that of torch-fidelity's "
                f"Inception weights ({INCEPTION_SHA256[:16]}...); other weights do not give "
                f"FID: download {INCEPTION_URL}"
            )
    try:
        state = torch.load(candidate, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable or non-tensor file
        raise WeightsError(
            f"{candidate}: cannot be read as Inception weights ({type(exc).__name__}); "
            f"expected {INCEPTION_FILE} from {INCEPTION_URL}"
        ) from None
    if not isinstance(state, dict) or "Mixed_6d.branch1x1.conv.weight" not in state:
        raise WeightsError(
            f"{candidate}: not torch-fidelity's Inception-v3 state dict; expected "
            f"{INCEPTION_FILE} from {INCEPTION_URL}"
        )
    return candidate


# --------------------------------------------------------------------------- metrics


def frechet_distance(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N1 × D and N2 × D).

    ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^½ with unbiased covariances, in float64. The
    trace of the matrix square root is computed exactly without a D × D `sqrtm`: with
    Σi = Aiᵀ Ai (Ai the centred features over √(Ni − 1)), the eigenvalues of Σ1 Σ2 are the
    squared singular values of A1 A2ᵀ (N1 × N2), so the trace is their sum. When both sets
    are larger than D it uses symmetric eigendecompositions of the D × D covariances instead.
    """
    x1 = np.asarray(features1, dtype=np.float64)
    x2 = np.asarray(features2, dtype=np.float64)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(f"need two N × D feature arrays, got {x1.shape} and {x2.shape}")
    if len(x1) < 2 or len(x2) < 2:
        raise ValueError("need at least two feature vectors per set for a covariance")
    mu1, mu2 = x1.mean(axis=0), x2.mean(axis=0)
    a1 = (x1 - mu1) / np.sqrt(len(x1) - 1)
    a2 = (x2 - mu2) / np.sqrt(len(x2) - 1)
    if min(len(x1), len(x2)) <= x1.shape[1]:
        tr_sqrt = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
    else:
        s1, s2 = a1.T @ a1, a2.T @ a2
        w, v = np.linalg.eigh(s1)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        inner = root @ s2 @ root
        tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.sum(a1 * a1) + np.sum(a2 * a2) - 2 * tr_sqrt)


def compute_fidelity(
    generated: torch.Tensor,
    real: torch.Tensor,
    weights_path: Path | str | None,
    *,
    extractor: str = "inception",
    device: torch.device | str = "cpu",
    seed: int = 0,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """FID, sFID, precision, recall, F1 and KID of `generated` against `real`.

    Both are (N, 1, H, W) tensors, floats in [0, 1] or uint8, of the same H × W (the sets may
    differ in size). `weights_path` is the Inception file (see `resolve_inception_weights`;
    ignored by the stand-in). KID uses 100 subsets of min(1000, N_generated, N_real); every
    random choice follows `seed`. `on_batch(k)` is told of every batch of k images whose
    features are extracted (2 × N in all). Returns `fid`, `sfid`, `precision`, `recall`,
    `f1`, `kid`, `kid_std`, `n_generated`, `n_real`.
    """
    if extractor not in EXTRACTORS:
        raise ValueError(f"extractor must be one of {sorted(EXTRACTORS)}, not {extractor!r}")
    if generated.shape[1:] != real.shape[1:]:
        raise ValueError(
            f"generated {tuple(generated.shape)} and real {tuple(real.shape)} differ in size"
        )
    smallest = min(len(generated), len(real))
    if smallest < PRC_NEIGHBORHOOD + 1:
        raise ValueError(f"need at least {PRC_NEIGHBORHOOD + 1} images per set, got {smallest}")
    name, cls = EXTRACTORS[extractor]
    if cls.needs_weights and weights_path is None:
        raise ValueError(f"the {extractor} extractor needs weights_path")
    pool, spatial = cls.pool_feature, cls.spatial_feature
    cuda = torch.device(device).type == "cuda"
    token = uuid.uuid4().hex[:12]
    with tempfile.TemporaryDirectory(prefix="labelbench-fidelity-") as cache:
        kwargs = {
            "input1": UInt8Images(generated, on_batch),
            "input2": UInt8Images(real, on_batch),
            # Named inputs make torch-fidelity cache all their features, the spatial ones too.
            "input1_cache_name": f"generated-{token}",
            "input2_cache_name": f"real-{token}",
            "cache": True,
            "cache_root": cache,
            "feature_extractor": name,
            "feature_extractor_weights_path": str(weights_path) if cls.needs_weights else None,
            "feature_layer_fid": pool,
            "feature_layer_kid": pool,
            "feature_layer_prc": pool,
            "prc_neighborhood": PRC_NEIGHBORHOOD,
            "kid_subset_size": min(KID_MAX_SUBSET, smallest),
            "batch_size": batch_size,
            "cuda": cuda,
            "rng_seed": seed,
            "save_cpu_ram": True,  # in-memory tensors: no data loader worker processes
            "verbose": False,
        }
        scores = calculate_metrics(fid=True, prc=True, kid=True, **kwargs)
        # Read back from the cache just written: no second pass over the images.
        reader = create_feature_extractor(name, [pool], **kwargs)
        spatial_sets = [
            extract_featuresdict_from_input_id_cached(i, reader, **kwargs)[spatial] for i in (1, 2)
        ]
    return {
        "fid": float(scores["frechet_inception_distance"]),
        "sfid": frechet_distance(spatial_sets[0].numpy(), spatial_sets[1].numpy()),
        "precision": float(scores["precision"]),
        "recall": float(scores["recall"]),
        "f1": float(scores["f_score"]),
        "kid": float(scores["kernel_inception_distance_mean"]),
        "kid_std": float(scores["kernel_inception_distance_std"]),
        "n_generated": len(generated),
        "n_real": len(real),
    }


def ms_ssim_scales(size: int, kernel_size: int = MS_SSIM_KERNEL) -> int:
    """How many of MS-SSIM's 5 scales fit an image of `size` pixels (at least 1).

    Each scale halves the image, which must stay at least `kernel_size` wide; MONAI also
    requires size // (scales − 1)² > kernel_size − 1.
    """
    scales = 1
    for s in range(2, len(MS_SSIM_WEIGHTS) + 1):
        if size // 2 ** (s - 1) >= kernel_size and size // (s - 1) ** 2 > kernel_size - 1:
            scales = s
    return scales


def mean_pairwise_ms_ssim(
    images: torch.Tensor, max_pairs: int = 5000, seed: int = 0, batch_size: int = 256
) -> tuple[float, int]:
    """Mean MS-SSIM (MONAI `MultiScaleSSIMMetric`, data range 1) over pairs of `images`.

    `images`: (N, 1, H, W) in [0, 1]. All N(N − 1)/2 pairs when there are at most
    `max_pairs`, else `max_pairs` pairs (i ≠ j) drawn with `seed`, an unbiased estimate of
    the same mean. Lower means more diverse samples. Uses as many of the standard five
    scales as fit the image (`ms_ssim_scales`; weights renormalised to sum to 1).
    Returns (mean, number of pairs).
    """
    from monai.metrics import MultiScaleSSIMMetric

    n, size = len(images), int(images.shape[-1])
    if n < 2:
        raise ValueError("MS-SSIM diversity needs at least two images")
    total = n * (n - 1) // 2
    if total <= max_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, max_pairs)
        j = (i + rng.integers(1, n, max_pairs)) % n
    kernel = min(MS_SSIM_KERNEL, size - (1 - size % 2))  # odd, and no wider than the image
    scales = ms_ssim_scales(size, kernel)
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales])
    metric = MultiScaleSSIMMetric(
        spatial_dims=2,
        data_range=1.0,
        kernel_size=kernel,
        weights=tuple(float(w) for w in weights / weights.sum()),
        reduction="none",
    )
    images = images.float()
    values = []
    for start in range(0, len(i), batch_size):
        a = torch.as_tensor(i[start : start + batch_size])
        b = torch.as_tensor(j[start : start + batch_size])
        values.append(metric(images[a], images[b]).flatten().double())
    return float(torch.cat(values).mean()), len(i)
