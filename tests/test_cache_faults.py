"""Caches and inputs that are damaged, moved or edited never change a score, and a killed
run leaves the store and caches consistent (the fault corpus's second half; see
`tests/test_faults.py`)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.data.cache import check_folder
from benchmark.data.digests import DigestMemo
from tests.conftest import write_case
from tests.faults import (
    CASES,
    SPACING,
    bench,
    error_line,
    label,
    resave,
    stored_rows,
)

# --------------------------------------------------------------------------- caches
# A damaged, moved or edited input or cache never changes a score: each run below is compared
# with a clean run on a fresh cache. The method is a toy (class-mean intensities) that fits in
# milliseconds and predicts the same on every run, so scores differ only if the data do.

TOY = """
from dataclasses import dataclass

import torch

from benchmark.method import Method


@dataclass(frozen=True)
class Config:
    pass


class NearestMean(Method):
    name = "nearest-mean"
    summary = "labels each pixel by the nearest class-mean intensity of the labeled slices"
    Config = Config

    def fit(self, labeled, ctx):
        x, y = labeled.images()[:, 0], labeled.labels()
        self.means = torch.tensor(
            [x[y == k].mean() if (y == k).any() else 10.0 for k in range(ctx.num_classes)]
        )

    def predict(self, images):
        return (images - self.means.view(1, -1, 1, 1)).abs().argmin(1)
"""


@pytest.fixture
def toy(tmp_path_factory, monkeypatch) -> str:
    """Install the toy method (as a package with its entry point) and return its name."""
    site = tmp_path_factory.mktemp("site")
    (site / "toy_cache_method").mkdir()
    (site / "toy_cache_method" / "__init__.py").write_text(TOY)
    info = site / "toy_cache_method-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-cache-method\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[labelbench.methods]\nnearest-mean = toy_cache_method:NearestMean\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield "nearest-mean"
    sys.modules.pop("toy_cache_method", None)


def scores(results: Path) -> tuple[float, list[tuple]]:
    """The last run's validation DSC and its (case, organ, metric, value) rows."""
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        run_id, val = conn.execute(
            "SELECT run_id, val_dsc FROM runs ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
        rows = conn.execute(
            "SELECT case_id, organ_id, metric, value FROM case_metrics WHERE run_id = ? "
            "ORDER BY case_id, organ_id, metric",
            (run_id,),
        ).fetchall()
    assert rows and val is not None
    return val, rows


def last_run(results: Path) -> tuple[str, str]:
    """The last run's id and status."""
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        return conn.execute(
            "SELECT run_id, status FROM runs ORDER BY rowid DESC LIMIT 1"
        ).fetchone()


def clean_scores(root: Path, tmp_path: Path, method: str, monkeypatch) -> tuple:
    """Scores of a run on `root` with a cache and results folder of its own."""
    fresh = tmp_path / f"fresh-{len(list(tmp_path.glob('fresh-*')))}"
    with monkeypatch.context() as m:
        m.setenv("LABELBENCH_CACHE", str(fresh / "cache"))
        r = bench(root, fresh / "runs", method=method)
    assert r.exit_code == 0, r.output
    return scores(fresh / "runs")


def store_root(cache: Path) -> Path:
    (root,) = [p for p in (cache / "slices").iterdir() if not p.name.startswith(".")]
    return root


def scored_case() -> str:
    """A test case of tinypath's split of CASES: its ground truth is scored."""
    from benchmark.protocol import load_protocol, split_cases

    protocol = load_protocol("tinypath")
    return split_cases(CASES, protocol.n_test, protocol.n_val, protocol.split_seed).test[0]


def flip(path: Path, offset: int, value: int | None = None) -> None:
    """Overwrite one byte in place (with `value`, or its bits inverted), keeping mtime."""
    st = path.stat()
    with path.open("r+b") as f:
        f.seek(offset)
        old = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([(~old & 0xFF) if value is None else value]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def corrupt_index(store: Path) -> None:
    flip(store / "index.json", 0)


def corrupt_npy_header(store: Path) -> None:
    flip(store / "images.npy", 20)  # inside the header's dict: the file no longer parses


def flipped_label_bytes(store: Path) -> None:
    labels = store / "labels.npy"
    flip(labels, labels.stat().st_size // 2, 255)


def flipped_ground_truth(store: Path) -> None:
    truth = store / "truth" / f"{scored_case()}.npy"
    flip(truth, truth.stat().st_size // 2, 255)


def missing_ground_truth(store: Path) -> None:
    (store / "truth" / f"{scored_case()}.npy").unlink()


def truncated_slices(store: Path) -> None:
    images = store / "images.npy"
    images.write_bytes(images.read_bytes()[:-100])


def no_manifest(store: Path) -> None:
    (store / "manifest.json").unlink()


@pytest.mark.parametrize(
    "damage",
    [
        corrupt_index,
        corrupt_npy_header,
        flipped_label_bytes,
        flipped_ground_truth,
        missing_ground_truth,
        truncated_slices,
        no_manifest,
    ],
    ids=lambda f: f.__name__,
)
def test_damaged_slice_store_is_rebuilt_with_one_warning(
    flare, results, isolated, toy, damage, caplog
):
    r = bench(flare, results, method=toy)
    assert r.exit_code == 0, r.output
    clean, clean_run = scores(results), last_run(results)
    store = store_root(isolated)
    damage(store)
    before = stored_rows(results)
    r = bench(flare, results, "--force", method=toy)
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    warnings = [rec.getMessage() for rec in caplog.records if rec.name == "labelbench.cache"]
    assert len(warnings) == 1 and warnings[0].startswith(f"rebuilding the slice store {store}")
    # --force replaced the clean run (same run key) by a new, completed one with its scores
    assert stored_rows(results) == before
    assert last_run(results)[0] != clean_run[0] and last_run(results)[1] == "completed"
    assert scores(results) == clean
    assert store_root(isolated) == store  # the same key, rebuilt in place


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_verify_rereads_what_the_memo_cannot_see(flare, results, isolated, toy, caplog, command):
    """Damage below the file system keeps a file's size and times: the memo still vouches for
    it, and only `--verify` (or every 10th open) reads the bytes again."""
    r = bench(flare, results, method=toy)
    assert r.exit_code == 0, r.output
    clean = scores(results)
    store = store_root(isolated)
    labels = store / "labels.npy"
    old = time.time_ns() - 3_600 * 10**9
    os.utime(labels, ns=(old, old))
    assert check_folder(store, DigestMemo.in_cache(isolated)) is None  # memoised now
    flipped_label_bytes(store)
    with sqlite3.connect(isolated / "digests.sqlite") as conn:  # as if the disk did it
        st = labels.stat()
        conn.execute(
            "UPDATE digests SET ctime_ns = ?, mtime_ns = ? WHERE path = ?",
            (st.st_ctime_ns, st.st_mtime_ns, str(labels.resolve())),
        )
    assert check_folder(store, DigestMemo.in_cache(isolated)) is None
    before = stored_rows(results)
    if command == "run":
        r = bench(flare, results, "--force", "--verify", method=toy)
    else:
        args = ["sweep", "--methods", toy, "--budgets", "4slices", "--seeds", "0", "-p"]
        args += ["tinypath", "--data", str(flare), "--results", str(results), "--force"]
        r = CliRunner().invoke(app, [*args, "--verify"])
    assert r.exit_code == 0, r.output
    assert stored_rows(results) == before and last_run(results)[1] == "completed"
    warnings = [rec.getMessage() for rec in caplog.records if rec.name == "labelbench.cache"]
    assert len(warnings) == 1 and "labels.npy does not match its sha256" in warnings[0]
    assert scores(results) == clean


def test_moved_folder_and_relative_data_from_another_directory(
    flare, results, tmp_path, isolated, toy, monkeypatch
):
    """The store holds no path: a moved data folder, named relative to another working
    directory, reuses it and scores as a fresh cache does."""
    r = bench(flare, results, method=toy)
    assert r.exit_code == 0, r.output
    first = scores(results)
    store = store_root(isolated)
    moved = tmp_path / "elsewhere" / "FLARE22-moved"
    moved.parent.mkdir()
    flare.rename(moved)
    cwd = tmp_path / "other" / "cwd"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    before, first_run = stored_rows(results), last_run(results)
    r = bench(Path("../../elsewhere/FLARE22-moved"), results, "--force", method=toy)
    assert r.exit_code == 0, r.output
    assert stored_rows(results) == before and last_run(results)[0] != first_run[0]
    assert store_root(isolated) == store  # reused: the content did not change
    assert scores(results) == first == clean_scores(moved, tmp_path, toy, monkeypatch)


BIG = (64, 64, 40)
"""A case whose uncompressed label (160 KiB) is larger than the 64 KiB head the old cache key
hashed."""


def as_uncompressed(root: Path, case: str) -> Path:
    """Make `case` a BIG one with its label stored as an uncompressed .nii, an hour old (so its
    digest is memoised); returns the label's path."""
    write_case(root / "images", case, shape=BIG, spacing=SPACING, label_folder=root / "labels")
    nii = root / "labels" / f"{case}.nii"
    nib.save(nib.load(label(root, case)), nii)
    label(root, case).unlink()
    old = time.time_ns() - 3_600 * 10**9
    os.utime(nii, ns=(old, old))
    return nii


def test_label_edited_mid_file_changes_the_key(
    flare, results, tmp_path, isolated, toy, monkeypatch
):
    """One byte written in the middle of an uncompressed label, its mtime kept: the key (and
    with it the store) follows the content, as a fresh cache does."""
    case = scored_case()
    nii = as_uncompressed(flare, case)
    r = bench(flare, results, method=toy)
    assert r.exit_code == 0, r.output
    first = scores(results)
    x, y, z = 8, 18, BIG[2] // 2  # inside organ 1's box, half way through the file
    middle = int(nib.load(nii).dataobj.offset) + x + BIG[0] * (y + BIG[1] * z)
    assert np.asanyarray(nib.load(nii).dataobj)[x, y, z] == 1
    assert 65536 < middle < nii.stat().st_size - 8
    flip(nii, middle, 14)
    before = stored_rows(results)
    r = bench(flare, results, "--force", method=toy)
    assert r.exit_code == 2
    line = error_line(r)
    assert str(nii) in line and "label ids [14]" in line
    assert stored_rows(results) == before
    flip(nii, middle, 2)  # an organ id the protocol knows, where organ 1 was
    r = bench(flare, results, "--force", method=toy)
    assert r.exit_code == 0, r.output
    assert stored_rows(results)[0] == before[0] + 1  # another store key: another run key
    edited = scores(results)
    assert edited != first
    assert edited == clean_scores(flare, tmp_path, toy, monkeypatch)
    assert len([p for p in (isolated / "slices").iterdir() if not p.name.startswith(".")]) == 2


def test_two_copies_with_one_label_edited_never_share_a_store(
    flare, results, tmp_path, isolated, toy, monkeypatch
):
    """Copy X's label is edited after a run on it; a run on the untouched copy Y is scored
    against Y's labels, and X's against its edited ones."""
    x, y = tmp_path / "X", tmp_path / "Y"
    shutil.copytree(flare, x)
    shutil.copytree(flare, y)
    r = bench(x, results, method=toy)
    assert r.exit_code == 0, r.output
    untouched = scores(results)
    case = scored_case()
    data = np.asanyarray(nib.load(label(x, case)).dataobj).copy()
    data[data == 1] = 0  # organ 1 removed from a test case's ground truth
    resave(label(x, case), data)
    before = stored_rows(results)
    r = bench(y, results, "--force", method=toy)
    assert r.exit_code == 0, r.output
    assert stored_rows(results) == before  # Y's content is X's first: the same run key
    assert scores(results) == untouched
    r = bench(x, results, "--force", method=toy)
    assert r.exit_code == 0, r.output
    assert stored_rows(results)[0] == before[0] + 1
    edited = scores(results)
    assert edited != untouched
    assert edited == clean_scores(x, tmp_path, toy, monkeypatch)
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        keys = [k for (k,) in conn.execute("SELECT dataset_key FROM runs ORDER BY rowid")][-2:]
    assert keys[0] != keys[1]  # Y's run (Y = X as first run) and edited X's
    assert len([p for p in (isolated / "slices").iterdir() if not p.name.startswith(".")]) == 2


# --------------------------------------------------------------------------- clean kills


def _children(pid: int) -> set[int]:
    """Every live descendant of `pid` (Linux /proc), zombies left out."""
    parent_of = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parent_of[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent_of.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_during_phantom_generation_leaves_no_process_and_the_rerun_works(tmp_path):
    out = tmp_path / "phantom"
    script = tmp_path / "build.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from benchmark.data.phantom import PhantomSettings, write_phantom

            if __name__ == "__main__":
                settings = PhantomSettings(cases=40, unlabeled=0, size=128)
                write_phantom({str(out)!r}, settings, workers=2)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    build = subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while time.monotonic() < deadline and len(workers) < 3:  # 2 workers + resource tracker
        time.sleep(0.2)
        workers = _children(build.pid)
        written = list(tmp_path.glob(".phantom.tmp-*/imagesTr/*"))
        if written and len(workers) >= 2:
            break
    assert build.poll() is None and len(workers) >= 2, "the build ended before it was killed"
    build.send_signal(signal.SIGKILL)
    build.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    assert not [p for p in workers if _alive(p)], "workers outlived their killed parent"
    assert list(tmp_path.glob(".phantom.tmp-*")) and not out.exists()

    from benchmark.data.phantom import PhantomSettings, write_phantom

    write_phantom(out, PhantomSettings(cases=1, unlabeled=0, size=32), workers=1)
    assert (out / "dataset.json").exists()
    assert not list(tmp_path.glob(".phantom.tmp-*")), "the killed build's folder was not swept"


def reorient_all(root: Path, axes: tuple[int, ...]) -> None:
    """Store every image and label flipped along `axes`, with the affine that keeps each voxel
    where it was in space (LPS: x and y flipped; LAS: x flipped)."""
    for path in [*(root / "images").iterdir(), *(root / "labels").iterdir()]:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
        flip = np.eye(4)
        for axis in axes:
            flip[axis, axis] = -1
            flip[axis, 3] = data.shape[axis] - 1
        resave(path, np.flip(data, axes).copy(), img.affine @ flip)


@pytest.mark.parametrize("axes", [(0, 1), (0,)], ids=["LPS", "LAS"])
def test_orientation_does_not_change_a_score(flare, tmp_path, toy, monkeypatch, axes):
    """The same cases stored RAS, LPS or LAS give identical per-case, per-organ scores."""
    ras = clean_scores(flare, tmp_path, toy, monkeypatch)
    reorient_all(flare, axes)
    assert nib.aff2axcodes(nib.load(label(flare)).affine) != ("R", "A", "S")
    assert clean_scores(flare, tmp_path, toy, monkeypatch) == ras
