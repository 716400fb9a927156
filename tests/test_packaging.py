"""The built-in protocols (top-level `protocols/`) ship as the package `benchmark.protocols`,
so a plain `pip install .` finds them; pyproject's package list names every package."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import pytest

import benchmark.protocols
from benchmark.protocol import PROTOCOLS_DIR

REPO = Path(__file__).resolve().parent.parent
BUILTIN = ("phantom", "phantom-fidelity", "flare22")


def test_builtin_protocols_are_declared_package_data() -> None:
    assert Path(benchmark.protocols.__file__).parent == PROTOCOLS_DIR
    files = sorted(PROTOCOLS_DIR.glob("*.toml"))
    assert set(BUILTIN) <= {p.stem for p in files}
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["benchmark.protocols"]
    assert all(any(fnmatch(p.name, pat) for pat in patterns) for p in files)


def test_the_package_list_names_every_package_in_the_tree() -> None:
    """`[tool.setuptools] packages` is written out (for the protocols' package-dir): a new
    subpackage that is not added there would be missing from an installed labelbench."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {d: name for name, d in setuptools["package-dir"].items()}
    found = {"benchmark"}  # a namespace package: no __init__.py of its own
    for root in ("benchmark", "methods", "baselines", *mapped):
        for init in (REPO / root).glob("**/__init__.py"):
            rel = init.parent.relative_to(REPO).as_posix()
            found.add(mapped.get(rel, rel.replace("/", ".")))
    assert set(setuptools["packages"]) == found
    assert PROTOCOLS_DIR == REPO / "protocols"


@pytest.mark.slow
def test_wheel_holds_the_builtin_protocols(tmp_path: Path) -> None:
    """Build the wheel from a copy of the sources (the checkout stays clean) and list it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for package in ("benchmark", "methods", "baselines", "protocols"):
        shutil.copytree(REPO / package, src / package, ignore=skip)
    pip = [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, "-q", "-w", str(tmp_path / "dist")],
        cwd=src,
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("labelbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"benchmark/protocols/{name}.toml" for name in BUILTIN} <= names
    assert not any(n.startswith(("perf/", "tests/")) for n in names)
