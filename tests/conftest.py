"""Shared fixtures: tiny protocols, tiny data sets, an isolated cache and results folder."""

from __future__ import annotations

import tomllib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

PROTOCOLS = Path(__file__).resolve().parent / "protocols"
"""Static test protocols: `tiny` (the phantom shrunk to seconds) and `tinypath` (the same
reading a data folder from $TINY_DATA)."""

_TRAINING = tomllib.loads((PROTOCOLS / "tiny.toml").read_text())["training"]
TINY_TRAINING = (
    _TRAINING["finetune_samples"],
    _TRAINING["pretrain_samples"],
    _TRAINING["validate_every"],
)
"""Fine-tuning samples, pretraining samples, samples between validations of `tiny`."""


def perf_script(name: str):
    """The speed or study script `perf/<name>.py`, imported as module `name`."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        name, PROTOCOLS.parents[1] / "perf" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def tiny_protocol_text(source: str = "phantom") -> str:
    """The text of `tiny` (source "phantom") or `tinypath` (source "path"), to derive from."""
    return (PROTOCOLS / ("tinypath.toml" if source == "path" else "tiny.toml")).read_text()


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory, monkeypatch):
    """Every test gets its own cache; the protocols in tests/protocols are found by name."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("LABELBENCH_CACHE", str(cache))
    monkeypatch.setenv("LABELBENCH_PROTOCOLS", str(PROTOCOLS))
    return cache


def write_case(
    folder: Path,
    case_id: str,
    shape=(40, 36, 6),
    spacing=(0.8, 0.8, 3.0),
    seed=0,
    label_ids=(1, 2, 3),
    with_label=True,
    label_folder: Path | None = None,
) -> None:
    """A tiny case: a bright box per label id on a noisy background."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 20, shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    for i, lid in enumerate(label_ids):
        x0 = 4 + 10 * i
        label[x0 : x0 + 6, 8:20, 1 : shape[2] - 1] = lid
    image[label > 0] += 100
    affine = np.diag([*spacing, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), folder / f"{case_id}_0000.nii.gz")
    if with_label:
        target = label_folder or folder.parent / "labelsTr"
        target.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(label, affine), target / f"{case_id}.nii.gz")


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """An nnU-Net raw layout data set of 6 labeled and 2 unlabeled tiny cases."""
    root = tmp_path / "Dataset001_Tiny"
    for i in range(6):
        write_case(root / "imagesTr", f"case_{i:03d}", seed=i)
    for i in range(2):
        write_case(root / "imagesUnlabeled", f"u_{i:03d}", seed=100 + i, with_label=False)
    return root


# The fault tests' folder and store (test_faults.py, test_cache_faults.py, test_leakage.py).
@pytest.fixture
def flare(tmp_path) -> Path:
    """FLARE22's own layout: images/<case>_0000.nii.gz, labels/<case>.nii.gz."""
    from tests.faults import CASES, SPACING

    root = tmp_path / "FLARE22"
    for i, case in enumerate(CASES):
        write_case(root / "images", case, seed=i, spacing=SPACING, label_folder=root / "labels")
    return root


@pytest.fixture
def results(tmp_path) -> Path:
    """A results folder whose store already holds one run, as after earlier work."""
    from benchmark.store import ResultsStore
    from tests.test_store import ROWS, record

    folder = tmp_path / "runs"
    ResultsStore(folder).write_run(record(), ROWS)
    return folder
