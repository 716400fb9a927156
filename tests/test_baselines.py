"""The nnU-Net, SimCLR and MAE baselines at tiny sizes on the CPU."""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from baselines.mae import MAEConfig, MaskedAutoencoder, masked_loss, random_patch_mask, train_mae
from baselines.nnunet import (
    DATASET_NAME,
    NOMINAL_SPACING_MM,
    NNUNetConfig,
    export_raw_dataset,
    nnunet_environment,
    plan_schedule,
    write_split,
)
from baselines.pretrained_unet import pretrain_fields
from baselines.simclr import SimCLR, SimCLRConfig, nt_xent, train_simclr, two_views
from baselines.unet_scratch import UNetConfig, UNetScratch
from benchmark.augment import ct_view, random_affine, random_gaussian_blur, random_resized_crop
from benchmark.cli import app
from benchmark.config import apply_overrides
from benchmark.data.reader import discover
from benchmark.data.slicestore import Preprocessing, build_slice_store
from benchmark.method import RunContext, SliceSet
from benchmark.progress import Progress

QUIET = Progress(quiet=True)
CPU = torch.device("cpu")
FINE_TUNE = ["iterations=3", "batch_size=2"]
SIMCLR_TINY = [*FINE_TUNE, "pretrain_iterations=3", "pretrain_batch_size=4", "view_size=32"]
MAE_TINY = [*FINE_TUNE, "pretrain_iterations=3", "pretrain_batch_size=4", "patch_size=8"]
NNUNET_TINY = ["val_iterations_per_epoch=1"]


@pytest.fixture
def slices(tiny_dataset, isolated) -> SliceSet:
    """The 36 labeled slices (32 × 32) of the tiny nnU-Net-layout data set."""
    index = discover(tiny_dataset)
    store = build_slice_store(
        index.labeled, Preprocessing((-160.0, 240.0), 32), isolated, known_labels=range(1, 14)
    )
    return SliceSet(store, np.arange(len(store)), labeled=True)


def bench_run(method: str, budget: str, results: Path, overrides: list[str]):
    args = ["run", "-m", method, "-b", budget, "-p", "tiny", "--device", "cpu"]
    args += ["--results", str(results)]
    for s in overrides:
        args += ["--set", s]
    return CliRunner().invoke(app, args)


def runs(results: Path) -> list[tuple[str, str, dict]]:
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        rows = conn.execute("SELECT method, status, info FROM runs ORDER BY started_at").fetchall()
        dsc_rows = "SELECT count(*) FROM case_metrics WHERE metric = 'dsc'"
        assert conn.execute(dsc_rows).fetchone()[0] == 2 * 13 * len(
            [r for r in rows if r[1] == "completed"]
        )
    return [(m, s, json.loads(i)) for m, s, i in rows]


# --- nnU-Net -------------------------------------------------------------------------------


def test_nnunet_export_passes_nnunets_integrity_check(slices, tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    four = slices.subset([1, 2, 9, 20])
    with nnunet_environment(tmp_path, NNUNetConfig()) as paths:
        names = export_raw_dataset(four, paths["nnUNet_raw"], num_classes=14)
        folder = paths["nnUNet_raw"] / DATASET_NAME
        verify_dataset_integrity(str(folder), num_processes=1)  # raises on any problem
    assert list(names.values()) == four.ids
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == 4 and meta["channel_names"] == {"0": "CT"}
    assert list(meta["labels"].values()) == list(range(14))
    image, props = SimpleITKIO().read_images([str(folder / "imagesTr" / "slice_00000_0000.nii.gz")])
    seg, _ = SimpleITKIO().read_seg(str(folder / "labelsTr" / "slice_00000.nii.gz"))
    assert image.shape == (1, 1, 32, 32) and seg.shape == (1, 1, 32, 32)
    np.testing.assert_allclose(image[0, 0], four.images()[0, 0].numpy(), atol=1e-6)
    np.testing.assert_array_equal(seg[0, 0], four.labels()[0].numpy())
    # one nominal spacing for every slice (the case's is 40 × 36 voxels of 0.8 mm resized to
    # 32 × 32, 1.0 × 0.9 mm): the spacing `predict` gives nnU-Net too, so it never resamples
    assert tuple(props["spacing"][1:]) == NOMINAL_SPACING_MM


def test_nnunet_schedule_is_the_protocols_samples_at_the_planned_batch():
    two = plan_schedule(NNUNetConfig(), batch_size=2, samples=9600)
    assert (two.epochs, two.iterations_per_epoch, two.last_epoch_iterations) == (20, 250, 50)
    assert (two.steps, two.samples) == (4800, 9600)
    three = plan_schedule(NNUNetConfig(), batch_size=3, samples=9600)
    assert (three.epochs, three.last_epoch_iterations, three.samples) == (13, 200, 9600)
    short = plan_schedule(NNUNetConfig(iterations_per_epoch=100), batch_size=5, samples=9600)
    assert (short.epochs, short.last_epoch_iterations, short.samples) == (20, 20, 9600)
    tiny = plan_schedule(NNUNetConfig(), batch_size=2, samples=6)
    assert (tiny.epochs, tiny.last_epoch_iterations, tiny.samples) == (1, 3, 6)
    fixed = plan_schedule(NNUNetConfig(epochs=3), batch_size=2, samples=9600)
    assert (fixed.steps, fixed.samples) == (750, 1500)
    with pytest.raises(ValueError, match="no protocol budget"):
        plan_schedule(NNUNetConfig(), batch_size=2, samples=None)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("trainer=nnUNetTrainer_5epoch", "did you mean: nnUNetTrainer_5epochs"),
        ("planner=Nope", "planner=Nope: no nnU-Net experiment planner class"),
        ("epochs=0", "epochs=0: epochs must be > 0"),
    ],
)
def test_nnunet_bad_settings_are_one_line_before_any_work(tmp_path, setting, message):
    results = tmp_path / "runs"
    r = bench_run("nnunet", "4slices", results, [setting])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], r.stderr
    assert "Traceback" not in r.output and not results.exists()


def test_nnunet_split_for_tiny_budgets(tmp_path):
    (tmp_path / DATASET_NAME).mkdir()
    one = write_split(tmp_path, ["slice_00000"], 0.2)
    assert one["val_is_train"] and one["n_train"] == one["n_val"] == 1
    four = write_split(tmp_path, [f"slice_{i:05d}" for i in range(4)], 0.2)
    split = json.loads((tmp_path / DATASET_NAME / "splits_final.json").read_text())
    assert len(split) == 1 and four == {**four, "n_train": 3, "n_val": 1, "val_is_train": False}
    assert not set(split[0]["train"]) & set(split[0]["val"])


def test_nnunet_environment_is_restored(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", "/somewhere/else")
    monkeypatch.delenv("nnUNet_results", raising=False)
    import os

    raw = "nnUNet_raw"  # nnU-Net's spelling
    with nnunet_environment(tmp_path, NNUNetConfig()) as paths:
        assert os.environ[raw] == str(paths[raw])
        assert paths["nnUNet_results"].is_dir()
    assert os.environ[raw] == "/somewhere/else"
    assert "nnUNet_results" not in os.environ


@pytest.mark.slow
def test_nnunet_runs_through_bench_run_on_the_protocols_samples(tmp_path):
    results = tmp_path / "runs"
    r = bench_run("nnunet", "4slices", results, NNUNET_TINY)
    assert r.exit_code == 0, r.output
    longer = ["epochs=2", "iterations_per_epoch=3", "fold=0", "final_validation=false"]
    r = bench_run("nnunet", "4slices", results, [*NNUNET_TINY, *longer])
    assert r.exit_code == 0, r.output
    (_, s1, all_), (_, s2, explicit) = runs(results)
    assert s1 == s2 == "completed"
    info = all_["nnunet"]
    plan = info["plan"]
    assert plan["configuration"] == "2d" and plan["batch_size"] >= 2 and plan["n_stages"] >= 2
    assert len(plan["patch_size"]) == 2 and plan["normalization"] == ["CTNormalization"]
    assert plan["spacing_mm"] == list(NOMINAL_SPACING_MM)
    assert info["split"]["fold"] == "all" and info["split"]["n_train"] == 4
    # the tiny protocol's 6 samples at the planned batch: one short epoch
    batch = plan["batch_size"]
    schedule = info["schedule"]
    assert schedule["trainer"] == "nnUNetTrainer" and schedule["batch_size"] == batch
    assert schedule["samples_seen"] == schedule["optimizer_steps"] * batch == -(-6 // batch) * batch
    assert schedule["epochs"] == 1 and schedule["patch_size"] == plan["patch_size"]
    assert info["mirroring"] == {"axes": None, "test_time": False} and info["work_dir"] is None
    assert "final_validation" in info["pseudo_dice"] and "last_epoch" in info["pseudo_dice"]
    assert {"export", "fingerprint", "plan", "preprocess", "train", "validation"} <= set(
        info["seconds"]
    )
    split = explicit["nnunet"]["split"]
    assert split["source"].startswith("splits_final.json") and split["n_train"] == 3
    assert "validation" not in explicit["nnunet"]["seconds"]
    assert explicit["nnunet"]["schedule"]["optimizer_steps"] == 6
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        (on, on_samples, train_dsc, val_dsc), (off, off_samples, *_) = conn.execute(
            "SELECT off_protocol, finetune_samples, train_dsc, val_dsc FROM runs "
            "ORDER BY started_at"
        ).fetchall()
    assert on is None and on_samples == schedule["samples_seen"]
    assert train_dsc is not None and val_dsc is not None  # the runner's gate and validation
    assert off_samples == 6 * batch and f"6 steps × batch {batch}" in off


# --- augmentation ---------------------------------------------------------------------------


def test_ct_augmentations():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 32, 32)
    same = random_resized_crop(x, gen, 32, scale=(1, 1), ratio=(1, 1), max_rotate_deg=0)
    torch.testing.assert_close(same, x)
    flat = torch.full((3, 1, 16, 16), 0.4)
    torch.testing.assert_close(random_gaussian_blur(flat, gen, p=1.0), flat)
    views = ct_view(x, gen, 24)
    assert views.shape == (4, 1, 24, 24) and not torch.equal(views, ct_view(x, gen, 24))


def test_affine_augmentation_brings_in_air_and_background_alike():
    """An organ at the edge of the field of view, zoomed out: the pixels that come in from
    outside are 0 in the image (air) and background in the labels, never organ intensity
    over a background label."""
    x = torch.zeros(1, 1, 32, 32)
    y = torch.zeros(1, 32, 32, dtype=torch.long)
    x[..., :6] = 0.9
    y[..., :6] = 1
    draws = torch.tensor([[0.5, 0.0, 0.5, 0.5]])  # no rotation or shift; scale 0.9 (zoom out)
    xo, yo = random_affine(x, y, None, uniforms=draws)
    assert ((xo[:, 0] > 0.5) & (yo == 0)).sum() == 0
    assert ((xo[:, 0] > 0.5) & (yo == 1)).sum() > 0


# --- SimCLR ---------------------------------------------------------------------------------


def test_nt_xent_values():
    z = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    same = torch.nn.functional.normalize(torch.ones(6, 8), dim=1)
    # all embeddings equal: the positive is one of 2B - 1 equally likely candidates
    assert math.isclose(nt_xent(same, same, 0.5).item(), math.log(11), rel_tol=1e-5)
    assert nt_xent(z, z, 0.1) < nt_xent(z, z.roll(1, 0), 0.1)


def _margin(model, images, cfg, seed) -> float:
    """Mean cosine of positive pairs minus mean cosine of negatives, on fresh views."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.eval()
        a, b = (model(v) for v in two_views(images, gen, cfg, 32))
    sim = a @ b.t()
    pos = sim.diagonal().mean()
    neg = (sim.sum() - sim.diagonal().sum()) / (len(a) * (len(a) - 1))
    return float(pos - neg)


def test_simclr_loss_decreases_and_positives_end_closer_than_negatives(slices):
    cfg = SimCLRConfig(
        pretrain_iterations=40, pretrain_batch_size=12, view_size=32, pretrain_lr=2e-3
    )
    from baselines.simclr import build_simclr

    torch.manual_seed(0)
    images = slices.images(np.arange(0, 36, 3))
    before = _margin(build_simclr(cfg), images, cfg, seed=1)
    model, losses = train_simclr(cfg, slices, CPU, QUIET)
    assert np.mean(losses[-8:]) < np.mean(losses[:8])
    after = _margin(model, images, cfg, seed=1)
    assert after > 0 and after > before


def test_pretrained_methods_fine_tune_exactly_as_unet_scratch(slices, tmp_path):
    """Same config fields and defaults, same decoder init; only the encoder differs."""
    base = {f.name: f.default for f in fields(UNetConfig)}
    for cfg_cls in (SimCLRConfig, MAEConfig):
        assert {f.name: f.default for f in fields(cfg_cls) if f.name in base} == base
        assert "iterations" not in pretrain_fields(cfg_cls()) and "encoder" in pretrain_fields(
            cfg_cls()
        )
    budget = slices.subset(slice(0, 4))
    ctx = RunContext(CPU, 3, 14, tmp_path, QUIET)
    frozen = ["iterations=1", "lr=0", "batch_size=2"]  # one step that changes no weight
    scratch = UNetScratch(apply_overrides(UNetConfig, frozen))
    scratch.fit(budget, ctx)
    simclr = SimCLR(apply_overrides(SimCLRConfig, [*frozen, *SIMCLR_TINY[2:]]))
    simclr.pretrain(slices.subset(slice(None), labeled=False), ctx)
    simclr.fit(budget, ctx)
    pretrained = dict(simclr.encoder_state)
    for (name, a), (_, b) in zip(
        scratch.model.named_parameters(), simclr.model.named_parameters(), strict=True
    ):
        if name.startswith("encoder."):
            assert torch.equal(b, pretrained[name.removeprefix("encoder.")]), name
            assert not torch.equal(a, b) or a.numel() == 1 or not a.std(), name
        else:
            assert torch.equal(a, b), name  # decoder and head: unet-scratch's initialisation
    pred = simclr.predict(slices.images(np.arange(5)))
    assert pred.shape == (5, 32, 32) and pred.dtype == torch.int64


def test_simclr_runs_through_bench_run_and_shares_its_pretraining(tmp_path):
    results = tmp_path / "runs"
    outputs = []
    for budget in ("4slices", "1pct"):
        r = bench_run("simclr", budget, results, SIMCLR_TINY)
        assert r.exit_code == 0, r.output
        outputs.append(r.output)
    assert "no cached simclr encoder" in outputs[0] and "no cached" not in outputs[1]
    (_, s1, first), (_, s2, second) = runs(results)
    assert s1 == s2 == "completed"
    assert first["pretrain_cache"] == second["pretrain_cache"]
    assert not first["pretrain"]["cached"] and second["pretrain"]["cached"]
    assert first["pretrain"]["sha256"] == second["pretrain"]["sha256"]


# --- MAE ------------------------------------------------------------------------------------


def test_patch_mask_hides_exactly_the_ratio():
    keep = random_patch_mask(5, 4, 0.75, torch.Generator().manual_seed(0))
    assert keep.shape == (5, 1, 4, 4) and (keep.sum(dim=(1, 2, 3)) == 4).all()


def test_mae_loss_counts_masked_patches_only(slices):
    cfg = MAEConfig(patch_size=8, norm_pix_loss=False)
    images = slices.images(np.arange(3))
    keep = random_patch_mask(3, 4, 0.75, torch.Generator().manual_seed(0))
    visible = torch.nn.functional.interpolate(keep, size=32, mode="nearest")

    class Echo(torch.nn.Module):
        """Predicts the image where masked and garbage where visible."""

        def forward(self, x, keep_):
            return images * (1 - visible) + 7.0 * visible

    assert masked_loss(Echo(), images, keep, cfg).item() == 0.0


def test_mae_reconstructs_masked_patches_better_after_training(slices):
    # raw pixels: the untrained reconstruction's error is comparable across models
    cfg = MAEConfig(
        pretrain_iterations=40,
        pretrain_batch_size=8,
        patch_size=8,
        pretrain_lr=2e-3,
        norm_pix_loss=False,
    )
    images = slices.images(np.arange(1, 36, 4))
    keep = random_patch_mask(len(images), 4, 0.75, torch.Generator().manual_seed(123))
    torch.manual_seed(cfg.pretrain_seed)
    with torch.no_grad():
        before = masked_loss(MaskedAutoencoder(cfg).eval(), images, keep, cfg).item()
    model, losses = train_mae(cfg, slices, CPU, QUIET)
    with torch.no_grad():
        after = masked_loss(model, images, keep, cfg).item()
    assert after < 0.2 * before and np.mean(losses[-8:]) < 0.5 * np.mean(losses[:8])
    bad = replace(cfg, patch_size=5)
    from benchmark.errors import ConfigError

    with pytest.raises(ConfigError, match="patch_size=5"):
        train_mae(bad, slices, CPU, QUIET)


def test_mae_runs_through_bench_run(tmp_path):
    results = tmp_path / "runs"
    r = bench_run("mae", "4slices", results, MAE_TINY)
    assert r.exit_code == 0, r.output
    [(method, status, info)] = runs(results)
    assert method == "mae" and status == "completed" and info["pretrain"]["steps"] == 3
