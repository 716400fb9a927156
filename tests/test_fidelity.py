"""Generative quality: FID / sFID / precision / recall / KID / MS-SSIM and `bench fidelity`.

Inception's weights cannot be downloaded here, so most tests use the `stand-in` feature
extractor (a fixed-seed random conv net registered with torch-fidelity exactly like the
Inception one and going through the same `compute_fidelity` path); the sFID feature test
runs the real Inception-v3 architecture with random weights saved to a file.
"""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from scipy import linalg
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.data.context import load_data
from benchmark.errors import WeightsError
from benchmark.fidelity import FIDELITY_PROTOCOL, _larger_test_set_hint
from benchmark.metrics import generative
from benchmark.metrics.generative import (
    EXTRACTORS,
    INCEPTION_URL,
    StandInExtractor,
    UInt8Images,
    compute_fidelity,
    frechet_distance,
    mean_pairwise_ms_ssim,
    ms_ssim_scales,
    resolve_inception_weights,
)
from benchmark.progress import Progress
from benchmark.protocol import load_protocol
from benchmark.report import render_markdown
from benchmark.store import GenerativeRecord, ResultsStore, RunRecord
from tests.test_diffusion import TINY_SET
from tests.test_report import synthetic

INCEPTION_UP_TO_MIXED_6C = [
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1",
    "Conv2d_4a_3x3", "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
    "Mixed_6c",
]  # fmt: skip
CORNERS = [(-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5)]


def discs(n: int, seed: int, families: tuple[int, ...] = (0, 1, 2, 3), size: int = 32):
    """(n, 1, size, size) images in [0, 1]: one jittered disc per image, in one of four corners
    (the 'family'), cycling through `families`."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = []
    for k in range(n):
        cx, cy = CORNERS[families[k % len(families)]]
        cx, cy = (
            cx + 0.1 * torch.randn(1, generator=g).item(),
            cy + 0.1 * torch.randn(1, generator=g).item(),
        )
        r = 0.3 + 0.05 * torch.randn(1, generator=g).item()
        out.append(0.1 + 0.8 * (((xx - cx) ** 2 + (yy - cy) ** 2) < r * r).float())
    return torch.stack(out)[:, None]


def stand_in(generated, real, **kw):
    return compute_fidelity(generated, real, None, extractor="stand-in", **kw)


def test_fid_of_a_set_with_itself_is_about_zero():
    real = discs(40, 0)
    s = stand_in(real, real)
    assert abs(s["fid"]) < 1e-4 and abs(s["sfid"]) < 1e-6
    assert s["precision"] == s["recall"] == s["f1"] == pytest.approx(1.0)
    assert abs(s["kid"]) < 5e-3 and s["n_generated"] == s["n_real"] == 40


def test_fid_and_sfid_grow_monotonically_with_noise():
    real = discs(40, 0)
    eps = torch.randn(real.shape, generator=torch.Generator().manual_seed(1))
    scores = [
        stand_in((real + sigma * eps).clamp(0, 1), real) for sigma in (0.0, 0.05, 0.1, 0.2, 0.4)
    ]
    for key in ("fid", "sfid", "kid"):
        values = [s[key] for s in scores]
        assert all(a < b for a, b in pairwise(values)), (key, values)


def test_precision_and_recall_are_not_swapped():
    # Real slices come from four families; the generated set covers only one of them: every
    # sample looks real (high precision) but most real slices are never generated (low recall).
    real = discs(48, 0)
    generated = discs(24, 5, families=(0,))
    s = stand_in(generated, real)
    assert s["precision"] >= 0.8 and s["recall"] <= 0.4, s
    swapped = stand_in(real, generated)
    assert swapped["precision"] <= 0.4 and swapped["recall"] >= 0.8, swapped


def _scipy_frechet(x1: np.ndarray, x2: np.ndarray) -> float:
    """The guided-diffusion / TTUR formula, independently: scipy sqrtm of Σ1 Σ2."""
    mu1, mu2 = x1.mean(0), x2.mean(0)
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


@pytest.mark.parametrize("n1,n2,dim", [(30, 40, 64), (200, 150, 12), (25, 25, 25)])
def test_frechet_distance_matches_scipy(n1, n2, dim):
    rng = np.random.default_rng(dim)
    mix = rng.normal(size=(dim, dim))
    x1 = rng.normal(size=(n1, dim)) @ mix
    x2 = rng.normal(0.3, 1.2, size=(n2, dim)) @ mix
    assert frechet_distance(x1, x2) == pytest.approx(_scipy_frechet(x1, x2), rel=1e-6, abs=1e-6)
    assert frechet_distance(x1, x1) == pytest.approx(0.0, abs=1e-8)


def test_torch_fidelity_fid_is_the_frechet_distance_of_the_pool_features():
    generated, real = discs(30, 1, families=(0, 1)), discs(36, 2)
    extractor = create_feature_extractor("labelbench-stand-in", ["pool"], cuda=False)
    feats = [
        get_featuresdict_from_dataset(UInt8Images(x), extractor, 16, False, True, False)
        for x in (generated, real)
    ]
    s = stand_in(generated, real)
    assert s["fid"] == pytest.approx(frechet_distance(feats[0]["pool"], feats[1]["pool"]), 1e-4)
    # sFID against torch-fidelity's own Fréchet code (eigenvalues of Σ1 Σ2) on the same features.
    stats = [fid_features_to_statistics(f["spatial"].double()) for f in feats]
    expected = fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]
    assert s["sfid"] == pytest.approx(expected, rel=1e-6)


def test_one_feature_pass_per_image(monkeypatch):
    seen = []
    forward = StandInExtractor.forward

    def counting(self, x):
        seen.append(len(x))
        return forward(self, x)

    monkeypatch.setattr(StandInExtractor, "forward", counting)
    batches = []
    stand_in(discs(20, 0), discs(12, 1), batch_size=8, on_batch=batches.append)
    assert sum(seen) == 20 + 12 and sum(batches) == 20 + 12


@pytest.fixture
def random_inception(tmp_path, monkeypatch):
    """torch-fidelity's Inception-v3 with random weights, and those weights saved to a file
    named like the real one."""
    with monkeypatch.context() as m:
        m.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *a: None)
        torch.manual_seed(0)
        model = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path / generative.INCEPTION_FILE
    torch.save(model.state_dict(), path)
    return model.eval(), str(path)


def test_sfid_features_with_the_real_inception_architecture(random_inception):
    ref, weights = random_inception
    extractor = create_feature_extractor(
        EXTRACTORS["inception"][0], ["2048"], feature_extractor_weights_path=weights, cuda=False
    )
    assert extractor.get_requested_features_list() == ["2048", "sfid"]
    images = UInt8Images(discs(3, 0, size=64))
    batch = torch.stack([images[i] for i in range(3)])
    with torch.no_grad():
        pool, sfid = extractor(batch)
    assert pool.shape == (3, 2048) and sfid.shape == (3, 2023) == (3, 17 * 17 * 7)
    # Independently: torch-fidelity's own Inception with the same weights, run by hand up to
    # Mixed_6d's 1×1 branch (conv, bn, ReLU); first 7 channels, flattened (H, W, C) like TF.
    with torch.no_grad():
        x = interpolate_bilinear_2d_like_tensorflow1x(
            batch.float(), size=(299, 299), align_corners=False
        )
        x = (x - 128) / 128
        for block in INCEPTION_UP_TO_MIXED_6C:
            x = getattr(ref, block)(x)
        branch = ref.Mixed_6d.branch1x1(x)
    assert branch.shape == (3, 192, 17, 17) and branch.min() >= 0 and branch.max() > 0
    torch.testing.assert_close(sfid, branch[:, :7].permute(0, 2, 3, 1).reshape(3, -1))
    # Random weights under the real file's name are not the real file: refused, unless the
    # caller (a test, a speed script) says the numbers may mean nothing.
    with pytest.raises(WeightsError, match="is not that of torch-fidelity's Inception weights"):
        resolve_inception_weights(weights)
    assert resolve_inception_weights(weights, verify=False).name == generative.INCEPTION_FILE


def test_missing_or_wrong_weights_name_the_file_and_the_url(tmp_path, monkeypatch):
    monkeypatch.delenv(generative.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError) as exc:
        resolve_inception_weights()
    msg = str(exc.value)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / generative.INCEPTION_FILE
    assert str(expected) in msg and INCEPTION_URL in msg and "\n" not in msg
    monkeypatch.setenv(generative.WEIGHTS_ENV, str(tmp_path / "env.pth"))
    with pytest.raises(WeightsError, match="env.pth"):
        resolve_inception_weights()
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="SHA-256 .* is not that of torch-fidelity"):
        resolve_inception_weights(bad)
    with pytest.raises(WeightsError, match="cannot be read"):
        resolve_inception_weights(bad, verify=False)
    torch.save({"fc.weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match="not torch-fidelity's Inception"):
        resolve_inception_weights(bad, verify=False)


def test_non_finite_samples_are_refused_not_scored_as_black_images():
    from benchmark.errors import PredictionError
    from benchmark.fidelity import check_samples

    samples = discs(4, 0, size=16).float() / 255
    check_samples(samples, "m", 4)
    samples[2, 0, 3, 3] = float("nan")
    with pytest.raises(PredictionError, match="1 of 4 samples hold NaN"):
        check_samples(samples, "m", 4)
    with pytest.raises(PredictionError, match="returned 4 images, not 5"):
        check_samples(samples, "m", 5)


def test_ms_ssim_diversity():
    same = discs(1, 0, size=64).repeat(6, 1, 1, 1)
    assert mean_pairwise_ms_ssim(same) == (pytest.approx(1.0, abs=1e-5), 15)
    varied, pairs = mean_pairwise_ms_ssim(discs(6, 0, size=64))
    assert pairs == 15 and varied < 0.9
    value, pairs = mean_pairwise_ms_ssim(discs(30, 0, size=16), max_pairs=50, seed=1)
    assert pairs == 50 and 0 < value < 1
    assert [ms_ssim_scales(s) for s in (16, 64, 128, 256)] == [1, 3, 4, 5]


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def _tiny_set() -> list[str]:
    return [a for s in TINY_SET for a in ("--set", s)]


@pytest.mark.parametrize(
    "args,message",
    [
        (["-m", "unet-scratch"], "cannot sample"),
        (["-m", "diffusion-linear", "--inception-weights", "/nonexistent/w.pth"], INCEPTION_URL),
        (["-m", "diffusion-linear", "--sampler", "euler"], "--sampler euler"),
    ],
)
def test_bad_options_are_one_red_line_before_any_work(tmp_path, args, message):
    extra = [] if "--inception-weights" in args else ["--feature-extractor", "stand-in"]
    r = _invoke("fidelity", "-p", "tiny", "--results", str(tmp_path), *args, *extra, "-q")
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error:") and r.output.count("\n") == 1 and message in r.output
    assert not (tmp_path / "labelbench.sqlite").exists()


def test_fidelity_command_stores_a_row_and_report_shows_it(tmp_path, isolated):
    results = tmp_path / "runs"
    base = ["fidelity", "-m", "diffusion-linear", "-p", "tiny", "--results", str(results), "-q"]
    base += ["--feature-extractor", "stand-in", *_tiny_set()]
    for n, message in (
        ("100000", "or --protocol phantom-fidelity (the phantom with 20 test cases)"),
        ("2", "at least 4"),
    ):
        r = _invoke(*base, "--n", n)
        errors = [line for line in r.output.splitlines() if line.startswith("error:")]
        assert r.exit_code == 2 and len(errors) == 1 and message in errors[0], r.output
    r = _invoke(*base, "--n", "8", "--sampler", "ddim", "--steps", "2")
    assert r.exit_code == 0, r.output
    assert "not Inception" in r.output and "sampling" in r.output and "metrics" in r.output
    gen = ResultsStore(results).generative()
    assert len(gen) == 1
    row = gen.iloc[0]
    assert (row.sampler, row.steps, row.n, row.extractor) == ("ddim", 2, 8, "stand-in")
    assert (isolated / "pretrain" / row.pretrain_cache / "model.pt").exists()
    from benchmark.fingerprint import fidelity_code

    assert row.code == fidelity_code("methods.diffusion.linear") and row.code.count("-") == 3
    for key in ("fid", "sfid", "precision", "recall", "f1", "kid", "ms_ssim"):
        assert np.isfinite(row[key])
    assert set(json.loads(row.phases)) >= {"pretrain", "sample", "metrics", "diversity"}
    # Real slices only from the test cases, never the training pool.
    ctx = load_data(load_protocol("tiny"), None, Progress(quiet=True))
    real_ids = json.loads(row.real_ids)
    assert len(set(real_ids)) == 8 and {i.split(":")[0] for i in real_ids} <= set(ctx.split.test)

    # Before any segmentation run, `bench report` shows the generative section alone.
    r = _invoke("report", "-p", "tiny", "--results", str(results), "--out", str(tmp_path / "g"))
    assert r.exit_code == 0, r.output
    md = (tmp_path / "g" / "LEADERBOARD.md").read_text()
    assert "## Generative quality" in md and "No completed segmentation runs" in md

    # `bench report` adds the section next to the segmentation runs of the same protocol.
    runs, metrics = synthetic()
    store = ResultsStore(results)
    for run in runs.itertuples():
        rows = metrics[metrics.run_id == run.run_id]
        store.write_run(
            RunRecord(**{**run_record(run.run_id), "method": run.method, "budget": run.budget}),
            [
                (m.case_id, m.organ_id, m.organ, name, getattr(m, name))
                for m in rows.itertuples()
                for name in ("dsc", "nsd")
            ],
        )
    r = _invoke("report", "-p", "tiny", "--results", str(results), "--out", str(tmp_path / "rep"))
    assert r.exit_code == 0, r.output
    md = (tmp_path / "rep" / "LEADERBOARD.md").read_text()
    assert "## Generative quality" in md and "diffusion-linear †" in md and "Stand-in" in md


def run_record(run_id: str) -> dict:
    return dict(
        run_id=run_id, run_key=run_id, status="completed", error=None, protocol="tiny",
        protocol_hash="h1", dataset_key="d", split_hash="s", method="m", config={},
        budget="1pct", n_labeled=4, budget_ids=[], seed=0, versions={"torch": "x"},
        git_commit="abc", device="cpu", phases={}, wall_s=1.0, peak_mem_mb=1.0, info={},
        started_at="t0", finished_at="t1",
    )  # fmt: skip


def test_store_replaces_an_evaluation_with_the_same_key(tmp_path):
    store = ResultsStore(tmp_path)
    record = GenerativeRecord(
        gen_id="g1", gen_key="k", protocol="tiny", protocol_hash="h", dataset_key="d",
        split_hash="s", method="diffusion-linear", pretrain_cache="c", config={}, sampler="ddim",
        steps=50, n=8, seed=0, extractor="inception", extractor_weights="w", real_ids=["a:0"],
        fid=1.0, sfid=2.0, precision=0.5, recall=0.4, f1=0.44, kid=0.01, kid_std=0.0,
        ms_ssim=0.3, versions={}, git_commit="abc", device="cpu", phases={"sample": 1.0},
        wall_s=2.0, info={}, started_at="t0", finished_at="t1",
    )  # fmt: skip
    store.write_generative(record)
    store.write_generative(replace(record, gen_id="g2", fid=0.5))
    store.write_generative(replace(record, gen_id="g3", gen_key="other", protocol="p2"))
    gen = store.generative(protocol="tiny")
    assert list(gen.gen_id) == ["g2"] and gen.fid[0] == 0.5
    assert json.loads(gen.real_ids[0]) == ["a:0"] and len(store.generative()) == 2


def test_report_has_a_generative_section_only_with_rows():
    runs, metrics = synthetic()
    assert "Generative quality" not in render_markdown("tiny", runs, metrics)
    gen = pd.DataFrame(
        [
            {
                "protocol": "tiny", "protocol_hash": "h1", "method": "diffusion-linear",
                "sampler": "ddim", "steps": 50, "n": 1000, "seed": 0, "extractor": "inception",
                "fid": 12.345, "sfid": 23.456, "precision": 0.71, "recall": 0.52, "f1": 0.6,
                "kid": 0.0123, "ms_ssim": 0.31, "finished_at": "2025-01-02T00:00:00",
            }
        ]
    )  # fmt: skip
    md = render_markdown("tiny", runs, metrics, generative=gen)
    section = md.split("## Generative quality")[1].split("## Provenance")[0]
    for text in ("FID ↓", "sFID ↓", "MS-SSIM", "diffusion-linear", "ddim", "1000", "12.35"):
        assert text in section
    assert "†" not in section and "different code" not in section
    assert "Generative quality" not in render_markdown("tiny", runs, metrics, generative=gen[:0])
    # rows made by other sampling or FID code are flagged, naming each row's fingerprint
    two = pd.concat([gen.assign(code="a-b-c-d"), gen.assign(n=500, code="")])
    section = render_markdown("tiny", runs, metrics, generative=two).split("## Generative")[1]
    assert "made by different code" in section
    assert "N=1000 `a-b-c-d`" in section and "N=500 `unknown`" in section


def test_larger_test_set_hint_only_where_the_fidelity_protocol_has_more_test_cases():
    fidelity = load_protocol(FIDELITY_PROTOCOL)
    assert "20 test cases" in _larger_test_set_hint(load_protocol("phantom"))
    assert _larger_test_set_hint(fidelity) == ""
