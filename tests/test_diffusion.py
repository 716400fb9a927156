"""Diffusion transfer at tiny sizes on the CPU: pretraining, cache, resume, features, methods."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.data.reader import discover
from benchmark.data.slicestore import Preprocessing, build_slice_store
from benchmark.method import SliceSet
from benchmark.progress import Progress
from methods.diffusion.features import DecoderTaps, by_resolution
from methods.diffusion.heads import LinearHead, MLPEnsemble, build_head
from methods.diffusion.model import DDPMConfig, build_scheduler
from methods.diffusion.pretrain import CHECKPOINT, MODEL, load_pretrained, pretrain_ddpm
from tests.conftest import perf_script

TINY = DDPMConfig(
    resolution=16,
    channels=(8, 16, 16),
    attention_levels=(False, False, False),
    num_head_channels=8,
    norm_num_groups=8,
    pretrain_iterations=60,
    pretrain_batch_size=8,
    pretrain_lr=2e-3,
    checkpoint_every=20,
    tap_blocks=(0, 1),
)
TINY_SET = [
    "resolution=16",
    "channels=8,16,16",
    "attention_levels=false,false,false",
    "num_head_channels=8",
    "norm_num_groups=8",
    "pretrain_iterations=4",
    "pretrain_batch_size=4",
    "checkpoint_every=2",
    "tap_blocks=0,1",
    "iterations=3",
    "batch_size=2",
]
QUIET = Progress(quiet=True)


@pytest.fixture
def unlabeled(tiny_dataset, isolated) -> SliceSet:
    index = discover(tiny_dataset)
    store = build_slice_store(
        index.labeled, Preprocessing((-160.0, 240.0), 32), isolated, known_labels=range(1, 14)
    )
    return SliceSet(store, np.arange(len(store)), labeled=True)


def test_pretraining_loss_decreases_and_is_cached(unlabeled, tmp_path):
    model, meta = pretrain_ddpm(TINY, unlabeled, tmp_path, torch.device("cpu"), QUIET)
    losses = meta["losses"]
    assert len(losses) == 60 and not meta["cached"]
    assert np.mean(losses[-15:]) < 0.8 * np.mean(losses[:15])
    assert (tmp_path / MODEL).exists() and not (tmp_path / CHECKPOINT).exists()
    again, meta2 = pretrain_ddpm(TINY, unlabeled, tmp_path, torch.device("cpu"), QUIET)
    assert (
        meta2["cached"]
        and meta2["sha256"] == json.loads((tmp_path / "model.json").read_text())["sha256"]
    )
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


class Dies(SliceSet):
    """Raises after `calls` reads, like a pretraining killed half-way."""

    def __init__(self, base: SliceSet, calls: int):
        super().__init__(base._store, base.rows, labeled=False)
        self.calls = calls

    def images(self, idx=None):
        self.calls -= 1
        if self.calls < 0:
            raise KeyboardInterrupt
        return super().images(idx)


def test_killed_pretraining_resumes_at_the_checkpoint(unlabeled, tmp_path):
    cfg = replace(TINY, pretrain_iterations=10, checkpoint_every=4)
    reference, _ = pretrain_ddpm(cfg, unlabeled, tmp_path / "a", torch.device("cpu"), QUIET)
    with pytest.raises(KeyboardInterrupt):
        pretrain_ddpm(cfg, Dies(unlabeled, 9), tmp_path / "b", torch.device("cpu"), QUIET)
    ckpt = json.loads((tmp_path / "b" / "checkpoint.json").read_text())
    assert ckpt["step"] == 8 and not (tmp_path / "b" / MODEL).exists()
    resumed, meta = pretrain_ddpm(cfg, unlabeled, tmp_path / "b", torch.device("cpu"), QUIET)
    assert meta["step"] == 10 and len(meta["losses"]) == 10
    # same RNG, optimizer and schedule state: the resumed model is the uninterrupted one
    for a, b in zip(reference.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_corrupt_or_mismatched_cache_is_rebuilt(unlabeled, tmp_path, caplog):
    cfg = replace(TINY, pretrain_iterations=4, checkpoint_every=2)
    pretrain_ddpm(cfg, unlabeled, tmp_path, torch.device("cpu"), QUIET)
    assert load_pretrained(cfg, tmp_path) is not None
    raw = bytearray((tmp_path / MODEL).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / MODEL).write_bytes(bytes(raw))
    assert load_pretrained(cfg, tmp_path) is None
    assert "SHA-256 does not match" in caplog.text and not (tmp_path / MODEL).exists()
    _, meta = pretrain_ddpm(cfg, unlabeled, tmp_path, torch.device("cpu"), QUIET)
    assert not meta["cached"]
    side = tmp_path / "model.json"
    doc = json.loads(side.read_text())
    doc["config"]["pretrain_lr"] = 123.0
    side.write_text(json.dumps(doc))
    assert load_pretrained(cfg, tmp_path) is None and "another config" in caplog.text


def test_features_have_documented_shape_and_are_deterministic(unlabeled):
    cfg = replace(TINY, pretrain_iterations=2)
    torch.manual_seed(0)
    from methods.diffusion.model import build_unet

    taps = DecoderTaps(build_unet(cfg), build_scheduler(cfg), 16, (0, 1), (50, 150, 250))
    x = unlabeled.images(np.arange(3))
    a, b = taps(x), taps(x)
    # 3 timesteps × 2 blocks; with 3 levels block 0 is at half resolution, block 1 at full
    assert [tuple(f.shape) for f in a] == [(3, 16, 8, 8), (3, 16, 16, 16)] * 3
    assert taps.channels == [16, 16] * 3
    grouped = by_resolution(a)  # one tensor per resolution, timesteps × blocks concatenated
    assert [tuple(f.shape) for f in grouped] == [(3, 48, 8, 8), (3, 48, 16, 16)]
    assert taps.group_channels == [48, 48]
    torch.testing.assert_close(grouped[1][:, 16:32], a[3])  # timestep 150, block 1
    for fa, fb in zip(a, b, strict=True):
        assert torch.equal(fa, fb)
    assert not torch.equal(a[0], a[2])  # different timesteps differ


def test_feature_bank_returns_the_taps_features_channels_last_in_ram_and_on_disk(unlabeled):
    from methods.diffusion.features import FeatureBank
    from methods.diffusion.model import build_unet

    torch.manual_seed(0)
    taps = DecoderTaps(build_unet(TINY), build_scheduler(TINY), 16, (0, 1), (50, 150))
    idx = np.array([4, 1, 2])
    expected = by_resolution(taps(unlabeled.images(np.sort(idx))))
    assert all(torch.equal(e, e.half().float()) for e in expected), "float16 values"
    for memory_mb in (2048, 0):  # float32 in RAM; float16 memory map: the same values
        bank = FeatureBank(taps, unlabeled, 3, memory_mb, torch.device("cpu"))
        assert bank.on_disk == (memory_mb == 0)
        got = bank.get(idx, torch.device("cpu"))
        for g, e in zip(got, expected, strict=True):
            assert g.shape == e.shape and g.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(g, e), memory_mb
        # a sorted index tensor (what a fit pre-draws) gives the same rows
        by_tensor = bank.get(torch.from_numpy(np.sort(idx)), torch.device("cpu"))
        for g, t in zip(got, by_tensor, strict=True):
            assert torch.equal(g, t)


def test_linear_head_equals_conv_of_concatenated_upsampled_features():
    torch.manual_seed(0)
    feats = [torch.randn(2, 4, 8, 8), torch.randn(2, 3, 16, 16)]
    head = LinearHead([4, 3], num_classes=5, size=16)
    head.set_stats(feats)
    up = [
        torch.nn.functional.interpolate(
            (f - head.norm.stats(i)[0]) / head.norm.stats(i)[1],
            size=(16, 16),
            mode="bilinear",
            align_corners=False,
        )
        for i, f in enumerate(feats)
    ]
    weight = torch.cat([c.weight for c in head.convs], 1)
    expected = torch.nn.functional.conv2d(torch.cat(up, 1), weight, head.bias)
    torch.testing.assert_close(head(feats), expected, rtol=1e-5, atol=1e-5)
    last = [f.to(memory_format=torch.channels_last) for f in feats]  # FeatureBank's layout
    torch.testing.assert_close(head(last), expected, rtol=1e-5, atol=1e-5)


def test_mlp_ensemble_on_sampled_pixels_equals_it_on_upsampled_slices():
    """Training sees features interpolated at random pixels; prediction applies the first
    layer before upsampling. Both must be DDPM-Seg's MLP on the bilinearly upsampled maps."""
    torch.manual_seed(0)
    feats = [torch.randn(2, 6, 8, 8), torch.randn(2, 5, 16, 16)]
    head = MLPEnsemble([6, 5], num_classes=4, size=16, members=3, hidden=(7, 5)).eval()
    head.set_stats(feats)
    for norm in head.bn:  # running statistics away from the identity
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    up = torch.cat(
        [
            torch.nn.functional.interpolate(
                (f - head.norm.stats(i)[0]) / head.norm.stats(i)[1], size=(16, 16),
                mode="bilinear", align_corners=False,
            )
            for i, f in enumerate(feats)
        ],
        1,
    )  # fmt: skip
    pixels = up.permute(0, 2, 3, 1).reshape(-1, 11)  # what DDPM-Seg feeds its MLPs
    member, h0, h1 = 1, slice(7, 14), slice(5, 10)  # member 1's units in each layer

    def bn(x, norm, units):
        return torch.nn.functional.batch_norm(
            x, norm.running_mean[units], norm.running_var[units], norm.weight[units],
            norm.bias[units], eps=norm.eps,
        )  # fmt: skip

    x = pixels @ torch.cat(list(head.w_in), 0)[:, h0] + head.b_in[h0]
    x = bn(torch.relu(x), head.bn[0], h0)
    x = bn(torch.relu(x @ head.w[0][member] + head.b[0][member]), head.bn[1], h1)
    x = x @ head.w[1][member] + head.b[1][member]
    full = head.member_logits(feats)  # (M, N, K, S, S)
    torch.testing.assert_close(full[member].permute(0, 2, 3, 1).reshape(-1, 4), x)
    points = torch.arange(256).expand(2, -1)
    sampled = head.pixel_logits(feats, points)  # (M, N·256, K)
    torch.testing.assert_close(sampled, full.permute(0, 1, 3, 4, 2).reshape(3, -1, 4))
    last = [f.to(memory_format=torch.channels_last) for f in feats]  # FeatureBank's layout
    torch.testing.assert_close(head.pixel_logits(last, points), sampled)
    torch.testing.assert_close(head.member_logits(last), full)
    head.train()
    with pytest.raises(RuntimeError, match="eval mode"):  # batch statistics are not a model
        head.member_logits(feats)
    labels = torch.randint(0, 4, (2, 16, 16))
    loss = head.loss(feats, labels, head.draw_points(1, 2, torch.Generator().manual_seed(0))[0])
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in head.parameters())


def test_ensemble_draws_a_fits_pixels_up_front_as_it_would_step_by_step():
    """The pre-drawn pixels are the step-by-step draws of one generator, so a fit that moves
    them to the device once trains on the same pixels as one that draws per step."""
    head = MLPEnsemble([3], 4, 16, members=2, hidden=(8,), pixels=20)
    points = head.draw_points(5, 3, torch.Generator().manual_seed(7))
    assert points.shape == (5, 3, 20) and points.dtype == torch.int32
    gen = torch.Generator().manual_seed(7)
    for step in points:
        assert torch.equal(step.long(), torch.randint(0, 256, (3, 20), generator=gen))
    assert head.draw_points(0, 3, gen).shape == (0, 3, 20)
    assert LinearHead([3], 4, 16).draw_points(5, 3, gen) is None  # whole slices, no draws
    with pytest.raises(ValueError, match="points"):
        head.loss([torch.zeros(3, 3, 4, 4)], torch.zeros(3, 16, 16, dtype=torch.long))


@pytest.mark.parametrize("head", ["mlp-ensemble", "linear"])
def test_a_head_fit_with_its_draws_made_up_front_is_bitwise_the_step_by_step_fit(
    unlabeled, tmp_path, head
):
    """`train_head` pre-draws its slices and pixels; the weights equal those of the loop that
    draws them step by step (slices from `labeled.batches`, pixels from one generator), with
    the features in RAM and on disk."""
    from benchmark.config import apply_overrides
    from benchmark.method import RunContext
    from benchmark.supervised import fine_tune, fine_tuning_steps
    from methods.diffusion.features import FeatureBank
    from methods.diffusion.linear import DiffusionLinearConfig, train_head
    from methods.diffusion.model import build_unet

    options = ["members=2", "hidden=8,4", "pixels=16", "iterations=8", "batch_size=3"]
    cfg = apply_overrides(DiffusionLinearConfig, [*TINY_SET, f"head={head}", *options])
    labeled = unlabeled.subset(slice(0, 5))
    torch.manual_seed(0)
    taps = DecoderTaps(build_unet(TINY), build_scheduler(TINY), 16, (0, 1), (50, 150))
    cpu = torch.device("cpu")
    fits = []
    for memory_mb in (2048, 0):
        bank = FeatureBank(taps, labeled, 2, memory_mb, cpu)
        ctx = RunContext(cpu, 3, 14, Path(tmp_path), QUIET)
        fitted = train_head(bank, labeled, cfg, ctx, taps.group_channels)
        fits.append(fitted.state_dict())

        torch.manual_seed(3)  # the reference: train_head as it drew step by step
        ref = build_head(head, taps.group_channels, 14, 32, 2, (8, 4), cfg.vote, 16)
        ref.set_stats(bank.get(np.arange(len(labeled)), cpu))
        batches = labeled.batches(3, np.random.default_rng(3))
        gen, labels = torch.Generator().manual_seed(3), labeled.labels()

        def step_loss(ref=ref, batches=batches, gen=gen, labels=labels, bank=bank):
            idx = np.sort(next(batches))
            points = torch.randint(0, 32 * 32, (3, 16), generator=gen)
            return ref.loss(bank.get(idx, cpu), labels[torch.from_numpy(idx)], points)

        ref.train()
        steps = fine_tuning_steps(cfg.iterations)
        fine_tune(ctx, ref, ref.parameters(), step_loss, lambda: 0.0, cfg, cfg.head_lr, steps, "")
        for (name, a), b in zip(
            fitted.state_dict().items(), ref.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), (memory_mb, name)
    # where the features live changes no weight: they are float16 values in RAM too
    for name, a in fits[0].items():
        assert torch.equal(a, fits[1][name]), name


def test_features_are_float16_values_and_one_beyond_its_range_fails_the_run():
    from methods.diffusion.features import storable

    x = torch.tensor([0.1, 1.0 / 3.0, 1000.5])
    assert torch.equal(storable(x, 0, 50), x.half().float())
    with pytest.raises(FloatingPointError, match="block 1 at timestep 150 .* 7e\\+04"):
        storable(torch.tensor([1.0, 7e4]), 1, 150)


def test_ensemble_votes():
    head = MLPEnsemble([2], num_classes=3, size=1, members=3, hidden=(4,))
    # Members' probabilities at one pixel: two pick class 1 narrowly, one picks 2 firmly.
    probs = torch.tensor([[0.1, 0.5, 0.4], [0.1, 0.5, 0.4], [0.0, 0.0, 1.0]])
    head.member_logits = lambda feats: probs.log().clamp_min(-30).view(3, 1, 3, 1, 1)
    assert head.labels([]).item() == 1  # majority: the mode of the members' labels
    head.vote = "mean-prob"
    assert head.labels([]).item() == 2  # the mean probability: 0.6 for class 2


def test_a_majority_tie_goes_to_the_tied_label_of_higher_mean_probability():
    """Four members split two to two between background and organ 3: torch.mode (DDPM-Seg's
    vote) gives the pixel to background, the lowest id; the organ's mean probability is
    higher, so it wins. A clear majority still wins against a higher mean probability."""
    head = MLPEnsemble([2], num_classes=4, size=1, members=4, hidden=(4,))
    probs = torch.tensor(
        [[0.5, 0.0, 0.1, 0.4], [0.5, 0.0, 0.1, 0.4], [0.1, 0.0, 0.0, 0.9], [0.1, 0.0, 0.0, 0.9]]
    )
    head.member_logits = lambda feats: probs.log().clamp_min(-30).view(4, 1, 4, 1, 1)
    assert probs.argmax(1).mode(0).values.item() == 0, "torch.mode: the lowest id"
    assert head.labels([]).item() == 3
    three = torch.tensor([[0.5, 0.0, 0.1, 0.4]] * 3 + [[0.0, 0.0, 0.0, 1.0]])
    head.member_logits = lambda feats: three.log().clamp_min(-30).view(4, 1, 4, 1, 1)
    assert head.labels([]).item() == 0  # 3 votes to 1, though organ 3's mean is 0.55


def test_tap_blocks_sit_where_the_docstring_says_and_hooks_do_not_leak():
    """3 levels: up_blocks 0, 1, 2 at 1/2, 1/1, 1/1; 6 levels (the paper preset's layout):
    1, 2, 3 at 1/8, 1/4, 1/2 (DDPM-Seg's 32², 64², 128² of a 256 model)."""
    from methods.diffusion.model import build_unet

    six = replace(TINY, channels=(8,) * 6, attention_levels=(False,) * 6)
    for cfg, blocks, sides in (
        (TINY, (0, 1, 2), [32, 64, 64]),
        (six, (1, 2, 3), [8, 16, 32]),
    ):
        unet = build_unet(cfg)
        taps = DecoderTaps(unet, build_scheduler(cfg), 64, blocks, (50,))
        feats = taps(torch.zeros(1, 1, 64, 64))
        assert [f.shape[-1] for f in feats] == sides
        assert all(not unet.up_blocks[b]._forward_hooks for b in blocks)
        other = DecoderTaps(unet, build_scheduler(cfg), 64, blocks[:1], (50,))
        torch.testing.assert_close(other(torch.zeros(1, 1, 64, 64))[0], feats[0])


def test_both_methods_run_share_one_pretraining_and_sample(tmp_path):
    results = tmp_path / "runs"
    cli = CliRunner()
    outputs = []
    for method in ("diffusion-linear", "diffusion-decoder"):
        args = ["run", "-m", method, "-b", "4slices", "-p", "tiny", "--results", str(results)]
        for s in TINY_SET:
            args += ["--set", s]
        r = cli.invoke(app, args)
        assert r.exit_code == 0, r.output
        outputs.append(r.output)
    assert "no cached DDPM" in outputs[0] and "no cached DDPM" not in outputs[1]
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        rows = conn.execute("SELECT method, info FROM runs WHERE status = 'completed'").fetchall()
        dsc_rows = "SELECT count(*) FROM case_metrics WHERE metric = 'dsc'"
        assert conn.execute(dsc_rows).fetchone()[0] == 2 * 2 * 13
    keys = {json.loads(info)["pretrain_cache"] for _, info in rows}
    assert len(rows) == 2 and len(keys) == 1
    out = tmp_path / "samples"
    args = [
        "sample",
        "-m",
        "diffusion-linear",
        "--n",
        "3",
        "--sampler",
        "ddim",
        "--steps",
        "2",
        "--out",
        str(out),
        "-p",
        "tiny",
    ]
    for s in TINY_SET:
        args += ["--set", s]
    r = cli.invoke(app, args)
    assert r.exit_code == 0, r.output
    samples = np.load(out / "samples.npy")
    assert samples.shape == (3, 1, 16, 16) and 0 <= samples.min() <= samples.max() <= 1
    assert (out / "samples_grid.png").stat().st_size > 100


def test_both_heads_predict_slice_shape_and_label_range(unlabeled, tmp_path):
    """Each head at a tiny size (the default configs are also covered by tests/test_contract.py)."""
    from benchmark.config import apply_overrides
    from benchmark.method import RunContext
    from methods.diffusion.linear import DiffusionLinear, DiffusionLinearConfig

    mlp = ["head=mlp-ensemble", "members=2", "hidden=8,4", "pixels=16"]
    for head in (mlp, ["head=linear"]):
        method = DiffusionLinear(apply_overrides(DiffusionLinearConfig, TINY_SET + head))
        ctx = RunContext(torch.device("cpu"), 0, 14, Path(tmp_path), QUIET)
        method.pretrain(unlabeled.subset(slice(None), labeled=False), ctx)
        method.fit(unlabeled.subset(slice(0, 4)), ctx)
        pred = method.predict(unlabeled.images(np.arange(5)))
        assert pred.shape == (5, 32, 32) and pred.dtype == torch.int64, head
        assert int(pred.min()) >= 0 and int(pred.max()) < 14, head


@pytest.mark.slow
def test_ddp_pretraining_on_two_gloo_processes_takes_the_same_steps_as_one(tmp_path):
    """`bench pretrain --nproc 2` (torchrun, gloo, CPU) writes the same checkpoint format as
    one process, and, each rank training on its shard of the same batch, the same weights."""
    cmd = [sys.executable, "-m", "benchmark.cli", "pretrain", "-m", "diffusion-linear"]
    cmd += ["-p", "tiny", "--device", "cpu", "-q", *(a for s in TINY_SET for a in ("--set", s))]
    models = {}
    for nproc in (2, 1):
        cache = tmp_path / f"cache{nproc}"
        env = dict(os.environ, LABELBENCH_CACHE=str(cache), OMP_NUM_THREADS="1")
        r = subprocess.run(
            [*cmd, "--nproc", str(nproc)], env=env, capture_output=True, text=True, timeout=600
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.count("pretrained diffusion-linear") == 1, r.stdout  # rank 0 only
        (model,) = (cache / "pretrain").glob(f"*/{MODEL}")
        meta = json.loads(model.with_suffix(".json").read_text())
        assert meta["step"] == 4 and not (model.parent / CHECKPOINT).exists()
        models[nproc] = torch.load(model, weights_only=True)["ema"]
    assert models[1].keys() == models[2].keys()
    # Adam divides each step by the gradient's own scale, so where a gradient is near zero
    # (the zero-initialised last conv of a MONAI block) the two sums' rounding shows at the
    # scale of lr × steps (1e-5 here); weights elsewhere are ~0.1. The warmed-up EMA follows
    # the model from the first steps, so it no longer damps that away.
    for key, value in models[1].items():
        torch.testing.assert_close(models[2][key], value, rtol=1e-4, atol=5e-5, msg=key)


def test_ablation_runs_tiny_resumes_and_refuses_bad_grids(tmp_path, capsys):
    ablation = perf_script("ablation_diffusion")
    out = tmp_path / "ablation"
    tiny = [a for s in [*TINY_SET, "members=2", "hidden=8,4", "pixels=16"] for a in ("--set", s)]
    common = ["--protocol", "tiny", "--budgets", "4slices", "--resolutions", "16,32"]
    common += ["--timesteps", "50", "--device", "cpu", "--quiet", *tiny]
    args = [*common, "--tap-sets", "0,1/1", "--out", str(out)]
    assert ablation.main(args) == 0
    table = pd.read_csv(out / "ablation.csv")
    assert len(table) == 2 * 2 * 2  # input sizes × heads × tap sets
    assert table["val_dsc"].between(0, 1).all()
    assert set(table["head"]) == {"linear", "mlp-ensemble"}
    md = (out / "ABLATION.md").read_text()
    assert "python perf/ablation_diffusion.py --protocol tiny" in md
    # paired factors: each pair differs in that factor only (2 heads × 2 tap sets = 4 pairs)
    assert "| resolution | 16 → 32 | 4slices | 4 |" in md
    assert "| head | linear → mlp-ensemble | 4slices | 4 |" in md
    assert "| taps | 1 → 0,1 | 4slices | 4 |" in md and "cpu" in md
    assert "2 pretrainings × 4 head fits" in capsys.readouterr().out
    (out / "ABLATION.md").unlink()  # --summarize rewrites the table from the CSV alone
    assert ablation.main(["--budgets", "4slices", "--summarize", "--out", str(out)]) == 0
    assert "| head | linear → mlp-ensemble | 4slices | 4 |" in (out / "ABLATION.md").read_text()
    assert ablation.main(["--summarize", "--out", str(tmp_path / "none")]) == 2
    assert "ablation.csv does not exist" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    assert ablation.main(args) == 0  # everything done: nothing recomputed
    assert len(pd.read_csv(out / "ablation.csv")) == 8
    assert "pretraining:" not in capsys.readouterr().out
    # a longer fine-tuning (as after a protocol change) is a new variant, never a reused row
    one = [*common[:4], "--resolutions", "16", "--timesteps", "50", "--device", "cpu", "--quiet"]
    longer = [a for s in [*TINY_SET, "iterations=4", "members=2", "hidden=8,4", "pixels=16"]
              for a in ("--set", s)]  # fmt: skip
    assert (
        ablation.main([*one, *longer, "--heads", "linear", "--tap-sets", "1", "--out", str(out)])
        == 0
    )
    table = pd.read_csv(out / "ablation.csv")
    assert len(table) == 9 and sorted(set(table["finetune_samples"])) == [6, 8]
    # another head setting (here its learning rate) is another setup: recomputed, not reused
    other_lr = [*tiny, "--set", "lr=0.05"]
    again = [*common, *other_lr, "--resolutions", "16", "--heads", "linear", "--tap-sets", "1"]
    assert ablation.main([*again, "--out", str(out)]) == 0
    table = pd.read_csv(out / "ablation.csv")
    assert len(table) == 10 and table["setup"].nunique() == 3
    assert "rows come from 3 setups" in (out / "ABLATION.md").read_text()
    # a CSV of the layout before `setup` (as the committed study's) summarizes and resumes:
    # its rows are never reused, and the file is rewritten with the column, not mixed
    old = tmp_path / "old"
    old.mkdir()
    table.drop(columns="setup").head(2).to_csv(old / "ablation.csv", index=False)
    assert ablation.main(["--budgets", "4slices", "--summarize", "--out", str(old)]) == 0
    assert ablation.main([*again, "--out", str(old)]) == 0
    migrated = pd.read_csv(old / "ablation.csv")
    assert len(migrated) == 3 and list(migrated["setup"].fillna("-"))[:2] == ["unrecorded"] * 2
    bad = tmp_path / "bad"
    assert ablation.main([*common, "--tap-sets", "0,7", "--out", str(bad)]) == 2
    assert "--tap-sets" in capsys.readouterr().err and not bad.exists()


def test_long_pretraining_protocol_differs_from_phantom_only_in_pretraining_samples():
    import tomllib

    from benchmark.protocol import PROTOCOLS_DIR, load_protocol

    base, long = (
        tomllib.loads((PROTOCOLS_DIR / f"{n}.toml").read_text())
        for n in ("phantom", "phantom-longpretrain")
    )
    assert long["training"].pop("pretrain_samples") == 4 * base["training"].pop("pretrain_samples")
    for key in ("name", "description"):
        base.pop(key), long.pop(key)
    assert long == base
    assert load_protocol("phantom-longpretrain").training.pretrain_samples == 51200


def test_head_prediction_speed_script_agrees_with_ddpm_segs_order():
    """`perf/bench_diffusion.py --predict-slices`: the default ensemble's prediction on the
    default taps' feature shapes equals DDPM-Seg's upsample-then-MLP order."""
    ours, theirs, diff = perf_script("bench_diffusion").head_predict_s(
        64, 128, 1, 14, torch.device("cpu")
    )
    assert ours > 0 and theirs > 0 and diff < 1e-5


def test_gpu_benchmark_runs_tiny_on_the_cpu(capsys):
    """The CPU check of `perf/bench_gpu_diffusion.py` (its figures come from a GPU)."""
    tiny = ["channels=8,16,16", "attention_levels=false,false,false", "num_head_channels=8"]
    tiny += ["norm_num_groups=8", "resolution=16", "pretrain_batch_size=4", "members=2"]
    tiny += ["pixels=16", "batch_size=2"]
    args = ["--preset", "cpu", "--device", "cpu", "--train-steps", "1", "--warmup-steps", "1"]
    args += ["--sample-n", "2", "--sample-batch", "2", "--ddim-steps", "2", "--skip-ddpm"]
    args += ["--head-steps", "1", "--head-slices", "4", *(a for s in tiny for a in ("--set", s))]
    perf_script("bench_gpu_diffusion").main(args)
    out = capsys.readouterr().out
    assert "training images/s" in out and "sampling DDIM 2 steps" in out
    assert "mlp-ensemble head on 16×16 features (2 MLPs (128, 32), majority vote" in out
    assert "linear head on 16×16 features" in out and "images/s" in out.splitlines()[-1]


def test_the_ema_is_warmed_up_so_a_short_pretraining_transfers_trained_weights():
    from methods.diffusion.pretrain import ema_decay_at

    kept = 1.0  # the share of the random initial weights left in the EMA
    for step in range(800):
        kept *= ema_decay_at(step, 0.9999)
    assert kept < 0.01  # without the warm-up: 0.9999 ** 800 = 0.92
    assert ema_decay_at(0, 0.99) == 0.1 and ema_decay_at(10_000, 0.99) == 0.99


def test_the_head_standardises_on_slices_spread_over_the_whole_budget():
    from methods.diffusion.linear import stats_rows

    assert stats_rows(10).tolist() == list(range(10))
    spread = stats_rows(500)
    assert len(spread) == 64 and spread[0] == 0 and spread[-1] == 499
    assert (np.diff(spread) >= 7).all()  # not the first 64 slices (one case of a case budget)
