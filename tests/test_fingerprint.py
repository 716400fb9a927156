"""The code fingerprint: what it covers, and that it is the same wherever the code lives."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from benchmark import fingerprint
from benchmark.fingerprint import CORE, NOT_CORE, code_fingerprint, plugin_files
from benchmark.store import ResultsStore
from tests.test_sweep import sweep, toy  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
PRINT = "from benchmark.fingerprint import code_fingerprint as f; print(f({!r}))"


def test_every_core_module_is_declared_affecting_scores_or_not():
    names = {
        f"benchmark.{p.stem}" if p.suffix else f"benchmark.{p.name}"
        for p in (REPO / "benchmark").iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").is_file()) and p.name != "__init__.py"
    }
    assert not set(CORE) & set(NOT_CORE)
    assert names == set(CORE) | set(NOT_CORE), "add the new module to CORE or NOT_CORE"


def test_the_fid_code_is_not_core():
    """No segmentation score passes through FID's module: an edit to it re-keys no run."""
    core = set(fingerprint.core_files())
    assert "benchmark/metrics/generative.py" not in core
    assert {"benchmark/metrics/nsd.py", "benchmark/metrics/segmentation.py"} <= core


def test_a_method_covers_the_modules_of_its_package_that_it_imports():
    assert set(plugin_files("baselines.mae")) == {
        "baselines/__init__.py",
        "baselines/mae.py",
        "baselines/pretrained_unet.py",
        "baselines/unet_scratch.py",
    }
    linear = set(plugin_files("methods.diffusion.linear"))
    assert {"methods/__init__.py", "methods/diffusion/__init__.py"} < linear
    assert {"methods/diffusion/features.py", "methods/diffusion/pretrain.py"} < linear
    assert "methods/diffusion/decoder.py" not in linear


def test_a_plugin_that_builds_on_a_baseline_covers_the_baselines_code(tmp_path, monkeypatch):
    """A plugin's own package, and the `baselines` modules it imports: an edit to
    `baselines/unet_scratch.py` must re-run the plugin's runs too."""
    pkg = tmp_path / "myunet"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "method.py").write_text(
        "from baselines.unet_scratch import build_unet\nfrom . import heads\nimport numpy\n"
    )
    (pkg / "heads.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    files = set(plugin_files("myunet.method"))
    assert {"myunet/__init__.py", "myunet/method.py", "myunet/heads.py"} <= files
    assert {"baselines/__init__.py", "baselines/unet_scratch.py"} <= files
    assert not any(f.startswith(("numpy", "benchmark")) for f in files)


def test_fingerprint_has_three_parts_and_is_cached():
    value = code_fingerprint("baselines.unet_scratch")
    core, method, packages = value.split("-")
    assert len(core) == len(method) == len(packages) == fingerprint.DIGITS
    assert code_fingerprint("baselines.nnunet").split("-")[::2] == [core, packages]
    assert code_fingerprint("baselines.nnunet").split("-")[1] != method
    assert fingerprint.core_digest.cache_info().hits > 0


def _copy_tree(dest: Path) -> Path:
    for package in ("benchmark", "baselines"):
        shutil.copytree(
            REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return dest


def _in_process(root: Path, module: str) -> str:
    """The fingerprint computed by a new Python process that imports the code under `root`."""
    out = subprocess.run(
        [sys.executable, "-c", PRINT.format(module)],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_same_in_another_process_and_folder_and_changed_only_by_its_code(tmp_path):
    here = code_fingerprint("baselines.mae")
    root = _copy_tree(tmp_path / "elsewhere")
    assert _in_process(root, "baselines.mae") == here  # no absolute paths, no mtimes
    (root / "baselines" / "nnunet" / "method.py").write_text("# not imported by mae\n")
    (root / "benchmark" / "report" / "markdown.py").write_text("# reporting changes no score\n")
    assert _in_process(root, "baselines.mae") == here
    with (root / "baselines" / "pretrained_unet.py").open("a") as f:
        f.write("\n# imported by mae\n")
    core, method, packages = _in_process(root, "baselines.mae").split("-")
    assert method != here.split("-")[1] and [core, packages] == here.split("-")[::2]
    with (root / "benchmark" / "data" / "reader.py").open("a") as f:
        f.write("\n# core\n")
    assert _in_process(root, "baselines.mae").split("-")[0] != core


def test_a_sweep_reuses_a_finished_run_only_under_the_same_code(tmp_path, toy):  # noqa: F811
    results, grid = tmp_path / "runs", ("--methods", "toy-mean", "--budgets", "4slices")
    assert sweep(results, *grid, "--seeds", "0").exit_code == 0
    again = sweep(results, *grid, "--seeds", "0")
    assert "0 completed, 0 unfit, 1 already done" in again.output
    with (tmp_path / "site" / "toy_methods" / "__init__.py").open("a") as f:
        f.write("\n# an edit to the method\n")
    fingerprint._method_digest.cache_clear()  # a new process would see the edit by itself
    edited = sweep(results, *grid, "--seeds", "0")
    assert "1 completed, 0 unfit, 0 already done" in edited.output, edited.output
    codes = ResultsStore(results).runs().sort_values("finished_at")["code"].tolist()
    assert len(codes) == 2 and codes[0] != codes[1]
    assert codes[0].split("-")[::2] == codes[1].split("-")[::2]  # core and packages as before


def test_a_package_version_changes_the_fingerprint(monkeypatch):
    """Another installed version of a package that makes numbers (torch here) is other code."""
    before = fingerprint.code_fingerprint("baselines.unet_scratch")
    real = fingerprint.version
    monkeypatch.setattr(
        fingerprint, "version", lambda name: "0.0.1" if name == "torch" else real(name)
    )
    fingerprint.packages_digest.cache_clear()
    try:
        after = fingerprint.code_fingerprint("baselines.unet_scratch")
    finally:
        monkeypatch.undo()
        fingerprint.packages_digest.cache_clear()
    assert after != before
    assert after.split("-")[:2] == before.split("-")[:2]  # core and method unchanged
    assert fingerprint.code_fingerprint("baselines.unet_scratch") == before
