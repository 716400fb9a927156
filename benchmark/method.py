"""The `Method` interface: what every segmentation method implements, and the capabilities a
method can declare on top of it (`GenerativeMethod`: it samples from what it pretrained).

The runner owns everything that must be equal across methods (data, split, budget, seed,
preprocessing, evaluation); a method owns only learning.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from benchmark.config import identity_dict
from benchmark.data.slicestore import SliceStore
from benchmark.errors import ConfigError
from benchmark.progress import Progress
from benchmark.validation import BEST_VALIDATED

if TYPE_CHECKING:
    from benchmark.protocol import Training
    from benchmark.validation import CurvePoint, Validator

FINETUNE = {"finetune": ("iterations", "batch_size")}
"""`Method.compute` of a method fine-tuned by `iterations` steps of `batch_size` slices."""
PRETRAIN_AND_FINETUNE = {**FINETUNE, "pretrain": ("pretrain_iterations", "pretrain_batch_size")}
"""`Method.compute` of a method that also pretrains `pretrain_iterations` steps of
`pretrain_batch_size` unlabeled slices."""


class SliceSet:
    """A view of some rows of a slice store: images (N × 1 × S × S, [0, 1]) and maybe labels.

    Backed by the store's memory maps, so a pool of 200,000 slices costs no RAM until read.
    A method sees only its own rows: the store behind them (which holds the validation and
    test cases too) is private, and `subset` never adds labels.
    """

    def __init__(self, store: SliceStore, rows: np.ndarray, labeled: bool):
        self._store = store
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labeled = labeled and store.labels is not None

    def subset(self, idx: np.ndarray | slice | list[int], labeled: bool | None = None) -> SliceSet:
        """A view of some of these rows (`idx` indexes this set), labeled when this set is
        and `labeled` does not say otherwise."""
        keep = self.labeled if labeled is None else labeled and self.labeled
        return SliceSet(self._store, self.rows[idx], keep)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def slice_size(self) -> int:
        return self._store.slice_size

    @property
    def ids(self) -> list[str]:
        return [self._store.slice_id(r) for r in self.rows]

    def images(self, idx: np.ndarray | slice | None = None) -> torch.Tensor:
        """Float32 tensor (n, 1, S, S) in [0, 1]."""
        rows = self.rows if idx is None else self.rows[idx]
        return torch.from_numpy(self._take(self._store.images, rows).astype(np.float32))[:, None]

    def labels(self, idx: np.ndarray | slice | None = None) -> torch.Tensor:
        """Int64 tensor (n, S, S) of label ids."""
        if not self.labeled:
            raise ValueError("this slice set has no labels")
        rows = self.rows if idx is None else self.rows[idx]
        assert self._store.labels is not None
        return torch.from_numpy(self._take(self._store.labels, rows).astype(np.int64))

    @staticmethod
    def _take(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
        # Sorted fancy indexing reads the memory map sequentially.
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
        out[order] = array[rows[order]]
        return out

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Endless random batches of indices into this set (with replacement across epochs)."""
        while True:
            perm = rng.permutation(len(self))
            for start in range(0, len(perm), batch_size):
                chunk = perm[start : start + batch_size]
                if len(chunk) < batch_size:
                    chunk = np.concatenate(
                        [chunk, rng.integers(0, len(self), batch_size - len(chunk))]
                    )
                yield chunk


@dataclass
class RunContext:
    """What the runner gives a method: device, seed, caches, progress and a logger."""

    device: torch.device
    seed: int
    num_classes: int
    """Classes including background 0."""
    cache_dir: Path
    """Folder private to this method's pretraining, keyed by its content hash."""
    progress: Progress
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("labelbench"))
    info: dict[str, Any] = field(default_factory=dict)
    """Facts the method wants recorded with the run (chosen plans, fallbacks)."""
    training: Training | None = None
    """The protocol's training budget (None outside a run, e.g. `bench pretrain`)."""
    validator: Validator | None = None
    """Scores a model on the protocol's validation cases; None when there are none."""
    curve: list[CurvePoint] = field(default_factory=list)
    """The learning curve of fine-tuning, appended to by `benchmark.validation.Selection`."""
    finetune_steps: tuple[int, int] | None = None
    """(optimizer steps, batch size) of fine-tuning, set in `fit` by a method that chooses
    its batch there (its `compute` names no batch field); the runner records steps × batch
    as the samples seen."""


class Method(abc.ABC):
    """A segmentation method. Subclasses set `name`, `summary` and `Config` (frozen dataclass)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Config: ClassVar[type]
    uses_pretraining: ClassVar[bool] = False
    distributed_pretraining: ClassVar[bool] = False
    """Whether `pretrain` shares its work among the ranks of a torchrun job (each trains on
    its shard of the batch, `bench pretrain --nproc N`). False: every rank would pretrain the
    whole model, so `--nproc` above 1 is refused."""
    compute: ClassVar[dict[str, tuple[str, str | None]] | None] = None
    """Which config fields set the compute of each phase, as {phase: (steps field, batch
    field)} for the phases "finetune" and "pretrain". A steps field left at None is filled
    from the protocol's `[training]` budget (samples ÷ batch, rounded up); a set value that
    differs makes the run off-protocol. A fine-tuning batch field of None: the batch is
    chosen inside `fit` (nnU-Net's plan), where the method derives its steps from
    `ctx.training` and reports them in `ctx.finetune_steps` (`benchmark.compute.settle`).
    None: the method's compute is its own and not matched to the protocol, so its runs are
    off-protocol (shown, never ranked)."""
    pretrain_code: ClassVar[str | None] = None
    """The module whose source makes this method's pretraining, with what it imports from its
    own package (`benchmark.fingerprint.method_digest`); None: the method's own module. Its
    code fingerprint is part of the pretraining's cache key, so a pretraining made by other
    code, or under other package versions, is never reused. Methods that share one
    pretraining (a linear head and a decoder on one diffusion backbone) name one module."""
    selection_rule: ClassVar[str] = BEST_VALIDATED
    """How the fitted model is chosen. A method with its own canonical rule (nnU-Net keeps
    its final checkpoint) says so; the runner still records its validation score."""

    def __init__(self, config: Any):
        self.config = config

    def pretrain_key(self, seed: int) -> dict[str, Any]:
        """What identifies this method's pretraining result in the cache (with the pool's hash).

        By default: method name, config and run seed. Methods that share one pretrained
        model (a linear head and a decoder on one diffusion backbone) return the same key,
        and a method whose pretraining has its own seed field leaves the run seed out, so
        one pretraining serves every budget and fine-tuning seed.
        """
        return {"method": self.name, "config": identity_dict(self.config), "seed": seed}

    def pretrain(self, unlabeled: SliceSet, ctx: RunContext) -> None:  # noqa: B027
        """Label-free pretraining on the protocol's unlabeled slices; `ctx.cache_dir` is its own.

        Called only when `uses_pretraining` is true; the cache folder is keyed by
        `pretrain_key(seed)`, the unlabeled pool and the code fingerprint of `pretrain_code`,
        so a method can skip work it finds there.
        """

    @abc.abstractmethod
    def fit(self, labeled: SliceSet, ctx: RunContext) -> None:
        """Train on the budget's labeled slices."""

    @abc.abstractmethod
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) images in [0, 1] → (N, S, S) int64 label maps."""


class GenerativeMethod(Method):
    """A method whose pretraining is a generative model that `bench sample` and `bench fidelity`
    draw from. Subclasses set `samplers` and implement `default_steps` and `sample`; the core
    asks `issubclass(cls, GenerativeMethod)` and never names a sampler itself."""

    uses_pretraining = True
    samplers: ClassVar[tuple[str, ...]]
    """The names of its samplers; the first is the default."""

    @classmethod
    @abc.abstractmethod
    def default_steps(cls, config: Any, sampler: str) -> int:
        """The sampling steps of `sampler` when none are asked for, under `config`."""

    @classmethod
    def check_steps(cls, config: Any, sampler: str, steps: int | None) -> int:
        """The steps to sample with: `steps`, or `default_steps` for None; ConfigError for a
        count the sampler cannot take (a method refuses what it would sample wrongly)."""
        if steps is not None and steps < 1:
            raise ConfigError(f"--steps {steps}: must be at least 1")
        return cls.default_steps(config, sampler) if steps is None else steps

    @classmethod
    def check_sampler(cls, sampler: str | None) -> str:
        """`sampler`, or the default (first) one for None; ConfigError naming the samplers."""
        if sampler is None:
            return cls.samplers[0]
        if sampler not in cls.samplers:
            raise ConfigError(
                f"--sampler {sampler}: method '{cls.name}' samples with {', '.join(cls.samplers)}"
            )
        return sampler

    @abc.abstractmethod
    def sample(
        self, n: int, sampler: str, steps: int | None, seed: int, ctx: RunContext
    ) -> torch.Tensor:
        """(n, 1, R, R) samples in [0, 1] at the model's resolution R, drawn with `sampler` in
        `steps` steps (None: `default_steps`) from generator seed `seed`; called after
        `pretrain`."""
