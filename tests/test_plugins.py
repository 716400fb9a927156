"""A third-party method package with its own entry point runs like a built-in."""

from __future__ import annotations

import sqlite3
import textwrap

import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.errors import UnknownMethodError
from benchmark.registry import get_method, installed_methods

PLUGIN = '''
from dataclasses import dataclass
import json

import torch

from benchmark.method import Method


@dataclass(frozen=True)
class Config:
    margin: float = 0.0


class NearestMean(Method):
    """Labels each pixel with the class whose mean labeled intensity is closest."""

    name = "nearest-mean"
    summary = "toy plugin: nearest class-mean intensity"
    Config = Config
    uses_pretraining = True
    pretrain_calls = 0

    def pretrain(self, unlabeled, ctx):
        cached = ctx.cache_dir / "stats.json"
        if not cached.exists():
            type(self).pretrain_calls += 1
            stats = {"mean": float(unlabeled.images().mean()), "n": len(unlabeled)}
            cached.write_text(json.dumps(stats))
        self.stats = json.loads(cached.read_text())
        ctx.info["unlabeled_slices"] = self.stats["n"]

    def fit(self, labeled, ctx):
        x, y = labeled.images()[:, 0], labeled.labels()
        self.means = torch.tensor(
            [x[y == k].mean() if (y == k).any() else 10.0 for k in range(ctx.num_classes)]
        )

    def predict(self, images):
        return (images - self.means.view(1, -1, 1, 1)).abs().argmin(1)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    site = tmp_path / "site"
    pkg = site / "toy_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(PLUGIN)
    info = site / "toy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent("""
        [labelbench.methods]
        nearest-mean = toy_plugin:NearestMean
        broken = toy_plugin:does_not_exist
        """)
    )
    monkeypatch.syspath_prepend(str(site))
    yield
    import sys

    sys.modules.pop("toy_plugin", None)


def test_plugin_is_discovered_listed_and_run(plugin, tmp_path):
    methods = installed_methods()
    assert "nearest-mean" in methods and "unet-scratch" in methods
    assert methods["nearest-mean"].distribution == "toy-plugin 0.1"
    listing = CliRunner().invoke(app, ["methods"])
    assert "nearest-mean" in listing.stdout and "cannot load" in listing.stdout  # broken one shown
    results = tmp_path / "runs"
    for budget in ("4slices", "1pct"):
        r = CliRunner().invoke(
            app,
            ["run", "-m", "nearest-mean", "-b", budget, "-p", "tiny", "--results", str(results)],
        )
        assert r.exit_code == 0, r.output
    cls = get_method("nearest-mean")
    assert cls.pretrain_calls == 1  # the second budget reused the cached pretraining
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        infos = [row[0] for row in conn.execute("SELECT info FROM runs WHERE status = 'completed'")]
        assert len(infos) == 2 and all('"pretrain_cache"' in i for i in infos)
        dsc = conn.execute("SELECT avg(value) FROM case_metrics WHERE metric = 'dsc'").fetchone()[0]
    assert 0 < dsc < 1


def test_failed_run_is_recorded(plugin, tmp_path, monkeypatch):
    cls = get_method("nearest-mean")

    def boom(self, images):
        raise RuntimeError("prediction exploded")

    monkeypatch.setattr(cls, "predict", boom)
    results = tmp_path / "runs"
    r = CliRunner().invoke(
        app, ["run", "-m", "nearest-mean", "-b", "4slices", "-p", "tiny", "--results", str(results)]
    )
    assert r.exit_code == 1 and "prediction exploded" in r.stderr
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        rows = conn.execute("SELECT status, error FROM runs").fetchall()
        assert rows == [("failed", "RuntimeError: prediction exploded")]
        assert conn.execute("SELECT count(*) FROM case_metrics").fetchone()[0] == 0


def test_unknown_method_lists_installed():
    with pytest.raises(UnknownMethodError, match="installed: .*unet-scratch"):
        get_method("nothing-like-it")
