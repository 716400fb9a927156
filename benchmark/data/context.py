"""A protocol's data as every command sees it: `load_data` and the `DataContext` it returns.

It owns what decides which slices a run is scored on and trained from: the data set the
protocol names (found or generated, and checked, by `benchmark.data.source`), its labeled
cases preprocessed into a slice store, the split of those cases into train, validation and
test (`benchmark.protocol.split_cases`), and the budget's labeled slices drawn from the
training cases. `bench run`, `bench sweep`, `bench evaluate`, `bench fidelity` and
`bench protocol show` all load data here, so they agree on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from benchmark.data.cache import verify_requested
from benchmark.data.digests import DigestMemo
from benchmark.data.reader import DatasetIndex
from benchmark.data.slicestore import Preprocessing, SliceStore, build_slice_store, store_key
from benchmark.data.source import cache_root, resolve_dataset
from benchmark.progress import Progress
from benchmark.protocol import Budget, Protocol, Split, draw_budget, split_cases


@dataclass
class DataContext:
    """A protocol's data, split and preprocessed labeled slices (shared by runs)."""

    protocol: Protocol
    index: DatasetIndex
    store: SliceStore
    split: Split

    def train_candidates(self) -> tuple[list[str], list[str], dict[str, int]]:
        """Slice ids, their cases, and slice id → store row, for budget drawing."""
        train = set(self.split.train)
        ids, cases, rows = [], [], {}
        for row in range(len(self.store)):
            case = self.store.case_ids[self.store.slice_case[row]]
            if case not in train:
                continue
            if self.protocol.draw_from == "foreground" and not self.store.foreground[row]:
                continue
            sid = self.store.slice_id(row)
            ids.append(sid)
            cases.append(case)
            rows[sid] = row
        return ids, cases, rows

    @cached_property
    def pool_key(self) -> str:
        """The unlabeled pool's content hash, as its slice store is keyed (the digest memo
        spares reading files it knows): part of the run key of a method that pretrains, so a
        changed pool is a new run. "" when the data set has no unlabeled folder. Computed
        once per context: a sweep plans every run on one (and `--verify` hashes each file
        again, once)."""
        if not self.index.unlabeled:
            return ""
        with DigestMemo.in_cache(cache_root()) as memo:
            return store_key(
                self.index.unlabeled, preprocessing(self.protocol), memo=memo,
                fresh=verify_requested(),
            )  # fmt: skip

    def budget_rows(self, budget: Budget, seed: int) -> tuple[list[str], np.ndarray]:
        ids, cases, rows = self.train_candidates()
        drawn = draw_budget(budget, ids, cases, seed)
        return drawn, np.array([rows[s] for s in drawn], dtype=np.int64)


def preprocessing(protocol: Protocol) -> Preprocessing:
    """The protocol's preprocessing, for its labeled cases and its unlabeled pool alike."""
    return Preprocessing(protocol.window_hu, protocol.slice_size, protocol.nonfinite)


def load_data(protocol: Protocol, data: Path | None, progress: Progress) -> DataContext:
    index = resolve_dataset(protocol, data, progress)
    store = build_slice_store(
        index.labeled,
        preprocessing(protocol),
        cache_root(),
        known_labels=list(protocol.labels),
        progress=progress.callback("preprocess"),
    )
    split = split_cases(store.case_ids, protocol.n_test, protocol.n_val, protocol.split_seed)
    return DataContext(protocol, index, store, split)
