"""The fault corpus: inputs a new user may hand `bench run`, each built here in a FLARE22-layout
folder of tiny volumes.

Every bad input gives exit code 2 and one error line that names the file at fault, and writes
nothing: the results store holds the same rows before and after. None is scored.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.data.cache import check_folder
from benchmark.data.digests import DigestMemo
from benchmark.store import ResultsStore
from tests.conftest import tiny_protocol_text, write_case
from tests.test_store import ROWS, record

SPACING = (0.8, 0.8, 3.0)
CASES = [f"FLARE22_Tr_{i:04d}" for i in range(1, 7)]
BAD = CASES[2]  # the case each data fault damages


@pytest.fixture
def flare(tmp_path) -> Path:
    """FLARE22's own layout: images/<case>_0000.nii.gz, labels/<case>.nii.gz."""
    root = tmp_path / "FLARE22"
    for i, case in enumerate(CASES):
        write_case(root / "images", case, seed=i, spacing=SPACING, label_folder=root / "labels")
    return root


@pytest.fixture
def results(tmp_path) -> Path:
    """A results folder whose store already holds one run, as after earlier work."""
    folder = tmp_path / "runs"
    ResultsStore(folder).write_run(record(), ROWS)
    return folder


def bench(
    root: Path, results: Path, *extra: str, protocol: str = "tinypath", method: str = "unet-scratch"
):
    args = ["run", "-m", method, "-b", "4slices", "-p", protocol]
    args += ["--data", str(root), "--results", str(results), *extra]
    return CliRunner().invoke(app, args)


def error_line(result) -> str:
    """The one error line, with no traceback and no stray `Aborted.` from click."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), result.output
    assert sum(ln.startswith("error") for ln in lines) == 1, result.output
    assert "Traceback" not in result.output and "Aborted" not in result.output
    return lines[-1]


def stored_rows(results: Path) -> tuple[int, int]:
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        metrics = conn.execute("SELECT count(*) FROM case_metrics").fetchone()[0]
    return runs, metrics


def image(root: Path, case: str = BAD) -> Path:
    return root / "images" / f"{case}_0000.nii.gz"


def label(root: Path, case: str = BAD) -> Path:
    return root / "labels" / f"{case}.nii.gz"


def resave(path: Path, data: np.ndarray | None = None, affine: np.ndarray | None = None) -> None:
    """Write `path` again with new voxels and/or a new affine."""
    old = nib.load(path)
    data = np.asanyarray(old.dataobj) if data is None else data
    nib.save(nib.Nifti1Image(data, old.affine if affine is None else affine), path)


def diag(*spacing: float) -> np.ndarray:
    return np.diag([*spacing, 1.0])


# --------------------------------------------------------------------------- data faults
# Each fault damages the folder and returns what the error line must contain: the file's
# path first, then the words that say what is wrong.


def origin_shifted(root: Path) -> list[str]:
    affine = diag(*SPACING)
    affine[0, 3] += 50.0
    resave(label(root), affine=affine)
    return [str(label(root)), str(image(root)), "origin (50.00, 0.00, 0.00) mm"]


def x_axis_flipped(root: Path) -> list[str]:
    resave(label(root), affine=diag(-SPACING[0], SPACING[1], SPACING[2]))
    return [str(label(root)), str(image(root)), "direction LAS differs from image direction RAS"]


def nan_in_image(root: Path) -> list[str]:
    data = np.asanyarray(nib.load(image(root)).dataobj).astype(np.float32)
    data[5:8, 5, 2] = np.nan
    resave(image(root), data)
    return [str(image(root)), "3 voxels are not finite (3 NaN, 0 ±Inf)", "[preprocess]"]


def inf_in_image(root: Path) -> list[str]:
    data = np.asanyarray(nib.load(image(root)).dataobj).astype(np.float32)
    data[1, 1, 1], data[2, 2, 2] = np.inf, -np.inf
    resave(image(root), data)
    return [str(image(root)), "2 voxels are not finite (0 NaN, 2 ±Inf)"]


def truncated_image(root: Path) -> list[str]:
    raw = image(root).read_bytes()
    image(root).write_bytes(raw[: len(raw) // 2])
    return [str(image(root)), "corrupt NIfTI data"]


def truncated_lps_label(root: Path) -> list[str]:
    # Stored LPS like most scanner exports: reorienting it reads the voxels (once `Aborted.`).
    lps = diag(-SPACING[0], -SPACING[1], SPACING[2])
    resave(image(root), np.asanyarray(nib.load(image(root)).dataobj)[::-1, ::-1], lps)
    resave(label(root), np.asanyarray(nib.load(label(root)).dataobj)[::-1, ::-1], lps)
    raw = label(root).read_bytes()
    label(root).write_bytes(raw[: len(raw) - 40])
    return [str(label(root)), "corrupt NIfTI data"]


def truncated_in_header(root: Path) -> list[str]:
    image(root).write_bytes(image(root).read_bytes()[:60])
    return [str(image(root)), "not a readable NIfTI file"]


def corrupt_deflate(root: Path) -> list[str]:
    raw = bytearray(image(root).read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 16):
        raw[i] ^= 0x5A
    image(root).write_bytes(bytes(raw))
    return [str(image(root)), "corrupt NIfTI data"]


def bad_header(root: Path) -> list[str]:
    image(root).write_bytes(gzip.compress(b"\x07" * 2000))
    return [str(image(root)), "not a readable NIfTI file"]


def not_nifti(root: Path) -> list[str]:
    label(root).write_bytes(b"hello")
    return [str(label(root)), "not a readable NIfTI file"]


def shape_mismatch(root: Path) -> list[str]:
    data = np.zeros((40, 36, 7), np.uint8)
    resave(label(root), data)
    return [str(label(root)), str(image(root)), "label shape (40, 36, 7) differs"]


def spacing_mismatch(root: Path) -> list[str]:
    resave(label(root), affine=diag(0.8, 0.8, 5.0))
    return [str(label(root)), str(image(root)), "label spacing"]


def unknown_label_ids(root: Path) -> list[str]:
    write_case(root / "images", BAD, label_ids=(1, 99), label_folder=root / "labels")
    return [str(label(root)), "label ids [99]"]


def float_labels(root: Path) -> list[str]:
    data = np.asanyarray(nib.load(label(root)).dataobj).astype(np.float32)
    data[data == 1] = 1.5
    resave(label(root), data)
    return [str(label(root)), "non-integer values"]


def missing_label(root: Path) -> list[str]:
    label(root).unlink()
    return [str(image(root)), "image has no label"]


def empty_folder(root: Path) -> list[str]:
    for path in [*(root / "images").iterdir(), *(root / "labels").iterdir()]:
        path.unlink()
    return [str(root / "images"), "empty folder"]


DATA_FAULTS: list[Callable[[Path], list[str]]] = [
    origin_shifted,
    x_axis_flipped,
    nan_in_image,
    inf_in_image,
    truncated_image,
    truncated_lps_label,
    truncated_in_header,
    corrupt_deflate,
    bad_header,
    not_nifti,
    shape_mismatch,
    spacing_mismatch,
    unknown_label_ids,
    float_labels,
    missing_label,
    empty_folder,
]


@pytest.mark.parametrize("fault", DATA_FAULTS, ids=lambda f: f.__name__)
def test_bad_data_is_one_line_exit_2_and_nothing_written(flare, results, fault):
    expected = fault(flare)
    before = stored_rows(results)
    r = bench(flare, results)
    assert r.exit_code == 2, r.output
    line = error_line(r)
    for text in expected:
        assert text in line
    assert stored_rows(results) == before


# --------------------------------------------------------------------------- option faults


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("iterations=-5", "--set iterations=-5: iterations must be > 0"),
        ("batch_size=0", "--set batch_size=0: batch_size must be > 0"),
        ("lr=nan", "--set lr=nan: lr must be a finite number"),
    ],
)
def test_out_of_range_config_is_rejected_before_any_work(flare, results, isolated, option, message):
    before = stored_rows(results)
    r = bench(flare, results, "--set", option)
    assert r.exit_code == 2 and message in error_line(r)
    assert stored_rows(results) == before
    assert not (isolated / "slices").exists()  # no data was read


def flip_pages(db: Path) -> None:
    """Damage the b-tree pages after the first (the schema) so that queries hit them."""
    raw = bytearray(db.read_bytes())
    for i in range(4096, len(raw)):
        raw[i] ^= 0xFF
    db.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage", [flip_pages, lambda db: db.write_bytes(os.urandom(8192))], ids=["flipped", "random"]
)
def test_damaged_results_store_says_what_to_do(flare, results, isolated, damage):
    db = results / "labelbench.sqlite"
    damage(db)
    before = db.read_bytes()
    r = bench(flare, results)
    assert r.exit_code == 2
    line = error_line(r)
    assert str(db) in line and "damaged" in line and "move it away" in line
    assert db.read_bytes() == before
    assert not (isolated / "slices").exists()
    report = CliRunner().invoke(app, ["report", "-p", "tinypath", "--results", str(results)])
    assert report.exit_code == 2 and str(db) in error_line(report)


def test_results_path_that_is_a_file_fails_before_any_work(flare, tmp_path, isolated):
    file = tmp_path / "runs.txt"
    file.write_text("notes\n")
    for results, message in [
        (file, "the results path is a file"),
        (file / "runs", f"cannot create the results folder, {file} is a file"),
    ]:
        r = bench(flare, results)
        assert r.exit_code == 2
        line = error_line(r)
        assert str(results) in line and message in line
    assert file.read_text() == "notes\n"
    assert not (isolated / "slices").exists()


def test_missing_protocol_file_says_so(flare, results, tmp_path):
    before = stored_rows(results)
    missing = tmp_path / "path" / "that" / "does" / "not" / "exist.toml"
    r = bench(flare, results, protocol=str(missing))
    assert r.exit_code == 2
    assert f"{missing}: protocol file does not exist" in error_line(r)
    assert stored_rows(results) == before


# --------------------------------------------------------------------------- what still runs


def test_nonfinite_window_min_is_a_protocol_choice(flare, tmp_path):
    """`nonfinite = "window_min"` reads the NaN image, with the window's low end in place of
    NaN; the choice changes the protocol's hash, which every run records."""
    from benchmark.data.context import load_data
    from benchmark.progress import Progress
    from benchmark.protocol import load_protocol

    nan_in_image(flare)
    text = tiny_protocol_text("path")
    assert "[preprocess]\n" in text
    path = tmp_path / "window_min.toml"
    path.write_text(text.replace("[preprocess]\n", '[preprocess]\nnonfinite = "window_min"\n'))
    protocol = load_protocol(str(path))
    assert protocol.nonfinite == "window_min"
    default = load_protocol("tinypath")
    assert default.nonfinite == "error" and default.hash != protocol.hash
    ctx = load_data(protocol, flare, Progress(quiet=True))
    rows = ctx.store.rows_of_case(BAD)
    assert np.isfinite(np.asarray(ctx.store.images[rows], dtype=np.float32)).all()

    path.write_text(text.replace("[preprocess]\n", '[preprocess]\nnonfinite = "zero"\n'))
    with pytest.raises(Exception, match="preprocess.nonfinite must be"):
        load_protocol(str(path))


def test_report_files_get_the_usual_permissions(tmp_path):
    from benchmark.report import write_report
    from tests.test_report import synthetic

    old = os.umask(0o022)
    try:
        write_report("tiny", *synthetic(), tmp_path / "report")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "report").iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes


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
