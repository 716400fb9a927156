"""Shared fixtures: tiny protocols, tiny data sets, an isolated cache and results folder."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmark.protocol import PROTOCOLS_DIR

TINY_PHANTOM = {"cases": 6, "unlabeled": 2, "seed": 0, "size": 64}
TINY_TRAINING = (6, 12, 4)
"""Fine-tuning samples, pretraining samples, samples between validations of `tiny`."""


def tiny_protocol_text(source: str = "phantom", slice_size: int = 32) -> str:
    """The built-in phantom protocol shrunk to test size (or switched to a data path)."""
    text = (PROTOCOLS_DIR / "phantom.toml").read_text()
    text = text.replace('name = "phantom"', 'name = "tiny"')
    text = re.sub(
        r"cases = 30\nunlabeled = 20\nseed = 0\nsize = 512",
        "cases = {cases}\nunlabeled = {unlabeled}\nseed = {seed}\nsize = {size}".format(
            **TINY_PHANTOM
        ),
        text,
    )
    text = re.sub(r"slice_size = 128", f"slice_size = {slice_size}", text)
    text = text.replace("test_cases = 8", "test_cases = 2").replace(
        "val_cases = 5", "val_cases = 1"
    )
    # A few steps of fine-tuning and pretraining, validated twice.
    text = re.sub(r"finetune_samples = \d+", f"finetune_samples = {TINY_TRAINING[0]}", text)
    text = re.sub(r"pretrain_samples = \d+", f"pretrain_samples = {TINY_TRAINING[1]}", text)
    text = re.sub(r"validate_every = \d+", f"validate_every = {TINY_TRAINING[2]}", text)
    # Three steps train nothing: the gate is tested on its own (test_validation.py).
    text = text.replace("sanity_min_dsc = 0.5", "sanity_min_dsc = 0.0")
    if source == "path":
        text = re.sub(
            r'source = "phantom"\n\n\[dataset.phantom\].*?size = \d+\n',
            'source = "path"\npath_env = "TINY_DATA"\n',
            text,
            flags=re.S,
        )
    return text


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory, monkeypatch):
    """Every test gets its own cache; protocols in tests/ are found by name."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("LABELBENCH_CACHE", str(cache))
    protos = tmp_path_factory.mktemp("protocols")
    (protos / "tiny.toml").write_text(tiny_protocol_text())
    (protos / "tinypath.toml").write_text(
        tiny_protocol_text("path").replace('"tiny"', '"tinypath"')
    )
    monkeypatch.setenv("LABELBENCH_PROTOCOLS", str(protos))
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
