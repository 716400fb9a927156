"""A third-party method package with its own entry point runs like a built-in."""

from __future__ import annotations

import re
import sqlite3
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmark.cli import app, catalog
from benchmark.errors import PluginError, UnknownMethodError
from benchmark.registry import get_method, installed_methods

README = Path(__file__).resolve().parents[1] / "README.md"

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


def add_plugin(
    site: Path,
    module: str,
    source: str,
    entry_points: dict[str, str],
    dist: str = "",
    version: str = "0.1",
) -> None:
    """Lay out a plugin as pip installs it, without installing anything: package `module`
    (its `__init__.py` holds `source`) and `<module>-<version>.dist-info` declaring
    `entry_points` (name → value) in the method group, for distribution `dist` (default: the
    module's name with dashes). Found once `site` is on sys.path (the `site` fixture)."""
    pkg = site / module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(source)
    info = site / f"{module}-{version}.dist-info"
    info.mkdir()
    name = dist or module.replace("_", "-")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[labelbench.methods]\n{lines}")


@contextmanager
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for `add_plugin`; the plugins imported from the test's folders
    are forgotten after it."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.fixture
def site(tmp_path, monkeypatch):
    """An empty `plugin_site`."""
    with plugin_site(tmp_path, monkeypatch) as folder:
        yield folder


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The toy plugin, with a working method and a broken entry point (other test modules
    import this fixture alone)."""
    with plugin_site(tmp_path, monkeypatch) as folder:
        add_plugin(
            folder,
            "toy_plugin",
            PLUGIN,
            {"nearest-mean": "toy_plugin:NearestMean", "broken": "toy_plugin:does_not_exist"},
        )
        yield


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


CLASH = """
from baselines.unet_scratch import UNetScratch


class OtherNet(UNetScratch):
    \"\"\"Another network under the built-in's name.\"\"\"
"""


def test_name_registered_by_two_distributions_is_refused_and_shown(site, tmp_path, monkeypatch):
    # Which one a dict of names kept depended on sys.path order: a plugin's net was recorded
    # and ranked as the built-in. Now neither is run, and the listing shows both.
    add_plugin(site, "clash_plugin", CLASH, {"unet-scratch": "clash_plugin:OtherNet"})
    results = tmp_path / "runs"
    r = CliRunner().invoke(
        app, ["run", "-m", "unet-scratch", "-b", "4slices", "-p", "tiny", "--results", str(results)]
    )
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert "registered by two distributions" in r.stderr
    assert "clash-plugin 0.1 (clash_plugin:OtherNet)" in r.stderr
    assert "labelbench 0.1.0 (baselines.unet_scratch:UNetScratch)" in r.stderr
    assert not (results / "labelbench.sqlite").exists()
    with pytest.raises(PluginError, match="registered by two distributions"):
        get_method("unet-scratch")
    monkeypatch.setattr(catalog.out, "width", 400)  # one table row per method
    listing = CliRunner().invoke(app, ["methods"])
    row = next(line for line in listing.stdout.splitlines() if "│ unet-scratch " in line)
    assert "registered by two distributions" in row
    assert "clash-plugin 0.1, labelbench 0.1.0" in row


def test_same_distribution_found_twice_is_no_clash(site, tmp_path, monkeypatch):
    entry_points = {"nearest-mean": "toy_plugin:NearestMean"}
    add_plugin(site, "toy_plugin", PLUGIN, entry_points)
    again = tmp_path / "again"  # e.g. an editable install and its checkout both on sys.path
    add_plugin(again, "toy_plugin", PLUGIN, entry_points)
    monkeypatch.syspath_prepend(str(again))
    entry = installed_methods()["nearest-mean"]
    assert entry.clash is None and entry.distribution == "toy-plugin 0.1"
    assert get_method("nearest-mean").name == "nearest-mean"


BROKEN = """
from dataclasses import dataclass, field

from benchmark.method import FINETUNE, Method


class Settings:  # not a dataclass
    width = 3


@dataclass(frozen=True)
class NoSteps:
    lr: float = 0.1


class Base(Method):
    summary = "broken on purpose"

    def fit(self, labeled, ctx):
        pass

    def predict(self, images):
        return images[:, 0].long()


class PlainConfig(Base):
    name = "plain-config"
    Config = Settings


class NoComputeFields(Base):
    name = "no-compute-fields"
    Config = NoSteps
    compute = FINETUNE


@dataclass(frozen=True)
class WidthWithoutDefault:
    width: int
    sizes: tuple[int, ...] = field(default_factory=lambda: (1, 2))


class NoDefault(Base):
    name = "no-default"
    Config = WidthWithoutDefault


@dataclass(frozen=True)
class Factory:
    sizes: tuple[int, ...] = field(default_factory=lambda: (1, 2))


class FactoryDefault(Base):
    name = "factory-default"
    Config = Factory


class NamedOther(Base):
    name = "other-name"
    Config = NoSteps


class NoPredict(Method):
    name = "no-predict"
    summary = "broken on purpose"
    Config = NoSteps

    def fit(self, labeled, ctx):
        pass
"""
BROKEN_ENTRY_POINTS = {
    "missing-module": (
        "not_installed.module:Method",
        "cannot import not_installed.module: No module named 'not_installed'",
    ),
    "missing-attribute": ("broken_plugin:Gone", "broken_plugin has no attribute 'Gone'"),
    "plain-config": (
        "broken_plugin:PlainConfig",
        "PlainConfig.Config (Settings) is not a dataclass",
    ),
    "no-compute-fields": (
        "broken_plugin:NoComputeFields",
        "NoComputeFields.compute names config field(s) iterations, batch_size that "
        "NoComputeFields.Config (NoSteps) lacks",
    ),
    "no-predict": ("broken_plugin:NoPredict", "NoPredict does not implement predict"),
    "wrong-name": (
        "broken_plugin:NamedOther",
        "NamedOther.name is 'other-name'; it must be the entry-point name 'wrong-name'",
    ),
    "no-default": (
        "broken_plugin:NoDefault",  # was "--set: ...__init__() missing ... 'width'" without --set
        "NoDefault.Config.width has no default: every config field needs one",
    ),
}


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_broken_entry_point_is_one_line(site, tmp_path, command):
    # Each was a traceback (exit 1) from deep in a run; now one line when the method loads.
    add_plugin(site, "broken_plugin", BROKEN, {k: v for k, (v, _) in BROKEN_ENTRY_POINTS.items()})
    results = tmp_path / "runs"
    for name, (value, reason) in BROKEN_ENTRY_POINTS.items():
        args = ["-m", name, "-b", "4slices"] if command == "run" else ["--methods", name]
        r = CliRunner().invoke(app, [command, *args, "-p", "tiny", "--results", str(results)])
        assert r.exit_code == 2, f"{name}: {r.output}"
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output, name
        where = f"error: entry point '{name}' = {value} (broken-plugin 0.1): "
        assert r.stderr.startswith(where + reason), name
    assert not (results / "labelbench.sqlite").exists()


def test_listing_shows_defaults_and_why_a_method_cannot_load(site, monkeypatch):
    entry_points = {k: v for k, (v, _) in BROKEN_ENTRY_POINTS.items()}
    entry_points["factory-default"] = "broken_plugin:FactoryDefault"
    add_plugin(site, "broken_plugin", BROKEN, entry_points)
    monkeypatch.setattr(catalog.out, "width", 400)  # one table row per line
    listing = CliRunner().invoke(app, ["methods", "--verbose"])
    assert listing.exit_code == 0, listing.output
    assert "_MISSING_TYPE" not in listing.stdout
    assert "sizes: tuple = (1, 2)" in listing.stdout  # a default_factory's value
    row = next(line for line in listing.stdout.splitlines() if "│ no-default " in line)
    assert "cannot load" in row and "NoDefault.Config.width has no default" in row


SELECTING = """
from dataclasses import dataclass

import torch

from benchmark.config import positive
from benchmark.method import FINETUNE, Method
from benchmark.validation import Selection


@dataclass(frozen=True)
class Steps:
    iterations: int | None = positive(None)
    batch_size: int = positive(2)


class PixelClassifier(Method):
    \"\"\"A 1×1 convolution fitted by its own loop, validated as the README shows.\"\"\"

    name = "pixel-classifier"
    summary = "1x1 convolution, own training loop"
    Config = Steps
    compute = FINETUNE
    calls_finish = True

    def fit(self, labeled, ctx):
        torch.manual_seed(ctx.seed)
        self.model = torch.nn.Conv2d(1, ctx.num_classes, 1)
        opt = torch.optim.SGD(self.model.parameters(), lr=0.5)
        steps, batch = self.config.iterations, self.config.batch_size
        sel = Selection.for_context(
            ctx, self.model, lambda: ctx.validator.score(self.predict), batch, steps
        )
        x, y = labeled.images()[:batch], labeled.labels()[:batch]
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(self.model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sel is not None:
                sel.step(loss.item())
        if sel is not None and self.calls_finish:
            sel.finish(ctx.info)

    def predict(self, images):
        with torch.no_grad():
            return self.model(images).argmax(1)


class Forgetful(PixelClassifier):
    name = "forgetful"
    calls_finish = False
"""


def test_selection_never_finished_is_named(site, tmp_path):
    # Was "kept no validated model": true, but not what the method's author must change.
    add_plugin(
        site,
        "selecting_plugin",
        SELECTING,
        {
            "pixel-classifier": "selecting_plugin:PixelClassifier",
            "forgetful": "selecting_plugin:Forgetful",
        },
    )
    results = tmp_path / "runs"
    for name in ("forgetful", "pixel-classifier"):
        r = CliRunner().invoke(
            app, ["run", "-m", name, "-b", "4slices", "-p", "tiny", "--results", str(results)]
        )
        assert r.exit_code == 0, r.output
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        off = dict(conn.execute("SELECT method, off_protocol FROM runs"))
    assert off["forgetful"] == (
        "the method called Selection.step but never finish(ctx.info), so it kept no validated "
        "model where the protocol selects on validation"
    )
    assert off["pixel-classifier"] is None  # the same loop, finished: on-protocol


def readme_block(language: str, first_line: str) -> str:
    """The README's ```language code block whose first line is `first_line`."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.DOTALL | re.M)
    found = [b for b in blocks if b.startswith(first_line + "\n")]
    assert len(found) == 1, f"README: no single ```{language} block that starts {first_line!r}"
    return found[0]


def test_readme_plugin_example_runs(site, tmp_path, monkeypatch):
    """The README's complete plugin, as it is written there, is listed and runs on-protocol:
    the docs cannot rot."""
    pyproject = tomllib.loads(readme_block("toml", "# my-methods/pyproject.toml"))
    source = readme_block("python", "# my-methods/my_methods/__init__.py")
    project = pyproject["project"]
    entry_points = project["entry-points"]["labelbench.methods"]
    ((name, value),) = entry_points.items()
    module = value.split(":")[0]
    add_plugin(site, module, source, entry_points, project["name"], project["version"])
    monkeypatch.setattr(catalog.out, "width", 400)  # one table row per method
    listing = CliRunner().invoke(app, ["methods"])
    row = next(line for line in listing.stdout.splitlines() if f"│ {name} " in line)
    assert "cannot load" not in row and f"{project['name']} {project['version']}" in row
    results = tmp_path / "runs"
    r = CliRunner().invoke(
        app, ["run", "-m", name, "-b", "4slices", "-p", "tiny", "--results", str(results)]
    )
    assert r.exit_code == 0, r.output
    assert "not ranked" not in r.stderr, r.stderr  # SupervisedMethod's compute: on-protocol
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        run = conn.execute("SELECT status, off_protocol, finetune_samples, info FROM runs")
        status, off_protocol, samples, info = run.fetchone()
    assert (status, off_protocol, samples) == ("completed", None, 8)  # 1 step of batch 8
    assert '"selection"' in info  # validated and selected by the shared recipe


def test_unknown_method_lists_installed():
    with pytest.raises(UnknownMethodError, match="installed: .*unet-scratch"):
        get_method("nothing-like-it")


def test_a_plugins_text_is_listed_as_written_never_as_markup(plugin, monkeypatch):
    """Brackets in a summary ("[x]", a closing "[/]") were read as rich markup: mangled, or a
    MarkupError that stopped the whole listing."""
    cls = get_method("nearest-mean")
    monkeypatch.setattr(cls, "summary", "[x] [/] [b]y[/b]")
    listing = CliRunner().invoke(app, ["methods"])
    assert listing.exit_code == 0, listing.output
    assert "[x] [/] [b]y[/b]" in listing.stdout
