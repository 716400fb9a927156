"""`bench evaluate`: a run's own saved predictions score exactly as the run; bad input is one
line, exit 2, and nothing written."""

from __future__ import annotations

import csv
import shutil
import sqlite3

import nibabel as nib
import numpy as np

from benchmark.store import ResultsStore
from tests.test_cli import FAST, bench, error_line


def _rows(results, run_id: str) -> dict:
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        rows = conn.execute(
            "SELECT case_id, organ_id, metric, value FROM case_metrics WHERE run_id = ?", (run_id,)
        ).fetchall()
    return {(c, o, m): v for c, o, m, v in rows}


def test_evaluate_reproduces_the_run_and_rejects_bad_input(tmp_path):
    results, preds = tmp_path / "runs", tmp_path / "preds"
    r = bench(
        "run", "-m", "unet-scratch", "-b", "4slices", "-p", "tiny", "--results", str(results),
        "--save-predictions", str(preds), *FAST,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    files = sorted(preds.iterdir())
    assert len(files) == 2 and all(p.name.endswith(".nii.gz") for p in files)
    run_id = ResultsStore(results).runs().run_id.iloc[0]

    r = bench("evaluate", "--pred", str(preds), "-p", "tiny", "--results", str(results),
              "--name", "mine")  # fmt: skip
    assert r.exit_code == 0, r.output
    runs = ResultsStore(results).runs()
    sub = runs[runs.budget == "submission"].iloc[0]
    assert sub.method == "mine" and "bench evaluate" in sub.off_protocol
    assert '"sha256"' in sub["info"] and files[0].name in sub["info"]
    # the same per-case, per-organ values, exactly
    assert _rows(results, sub.run_id) == _rows(results, run_id)
    table = list(csv.reader((results / "submissions" / "tiny" / "mine.csv").open()))
    assert table[0][0] == "Name" and "liver_DSC" in table[0] and "liver_NSD" in table[0]
    assert sorted(row[0] for row in table[1:]) == [p.name for p in files]
    # image naming (<case>_0000.nii.gz) scores the same
    flare = tmp_path / "flare"
    flare.mkdir()
    for p in files:
        shutil.copy(p, flare / p.name.replace(".nii.gz", "_0000.nii.gz"))
    r = bench("evaluate", "--pred", str(flare), "-p", "tiny", "--results", str(results))
    assert r.exit_code == 0, r.output
    runs = ResultsStore(results).runs()
    assert _rows(results, runs[runs.method == "flare"].run_id.iloc[0]) == _rows(results, run_id)
    # the same files again replace their row, also when scored by other code (another run
    # key); other files under a taken name are refused
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        conn.execute("UPDATE runs SET run_key = 'scored-by-older-code' WHERE method = 'mine'")
    conn.close()
    r = bench("evaluate", "--pred", str(preds), "-p", "tiny", "--results", str(results),
              "--name", "mine")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (ResultsStore(results).runs().method == "mine").sum() == 1
    r = bench("evaluate", "--pred", str(flare), "-p", "tiny", "--results", str(results),
              "--name", "mine")  # fmt: skip
    assert r.exit_code == 2 and "other files" in error_line(r)
    assert (ResultsStore(results).runs().method == "mine").sum() == 1
    table = list(csv.reader((results / "submissions" / "tiny" / "mine.csv").open()))
    assert sorted(row[0] for row in table[1:]) == [p.name for p in files]  # not overwritten
    # the leaderboard lists the submission, unranked, with its scores in every metric
    r = bench("report", "-p", "tiny", "--results", str(results), "--out", str(tmp_path / "rep"))
    assert r.exit_code == 0, r.output
    board = (tmp_path / "rep" / "LEADERBOARD.md").read_text()
    unranked = board[board.index("## Not ranked") :]
    row = next(ln for ln in unranked.splitlines() if ln.startswith("| mine "))
    assert "| submission |" in row and "bench evaluate" in row
    assert "test DSC" in unranked and "test NSD" in unranked

    def broken(name: str, change) -> None:
        folder = tmp_path / name
        shutil.copytree(preds, folder)
        change(folder, sorted(folder.iterdir()))
        n_before = len(ResultsStore(results).runs(status=None))
        r = bench("evaluate", "--pred", str(folder), "-p", "tiny", "--results", str(results))
        assert r.exit_code == 2, r.output
        line = error_line(r)
        assert len(ResultsStore(results).runs(status=None)) == n_before
        assert not (results / "submissions" / "tiny" / f"{name}.csv").exists()
        return line

    def rewrite(path, edit) -> None:
        img = nib.load(path)
        data = edit(np.asarray(img.dataobj).copy())
        nib.save(nib.Nifti1Image(data, img.affine, img.header), path)

    line = broken("missing", lambda d, f: f[0].unlink())
    assert "no prediction for test case" in line
    line = broken("extra", lambda d, f: shutil.copy(f[0], d / "case_999.nii.gz"))
    assert "case_999.nii.gz: extra file" in line
    line = broken("shape", lambda d, f: rewrite(f[1], lambda a: a[:-1]))
    assert f"{f_name(files[1])}: prediction shape" in line and "ground truth" in line

    def half_voxel_off(path) -> None:  # stored LAS, half a voxel beside the truth's voxels
        img = nib.load(path).as_reoriented(np.array([[0, -1], [1, 1], [2, 1]]))
        affine = img.affine.copy()
        affine[:3, 3] += 0.5 * affine[:3, 0]
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), path)

    line = broken("half_voxel", lambda d, f: half_voxel_off(f[0]))
    assert "differs from ground truth" in line and "another axis order" not in line
    # the same voxels stored in another axis order: refused (their affine differs, and the
    # official script compares stored arrays), saying what is wrong
    for name, ornt in {
        "lps": [[0, -1], [1, -1], [2, 1]],
        "head_first": [[0, 1], [1, 1], [2, -1]],
        "permuted": [[2, 1], [0, 1], [1, 1]],
    }.items():
        line = broken(name, lambda d, f, o=ornt: nib.save(
            nib.load(f[0]).as_reoriented(np.array(o)), f[0]))  # fmt: skip
        assert "the same voxels in another axis order" in line, line
    shift = np.eye(4)
    shift[0, 3] = 7.3  # mm
    line = broken("moved", lambda d, f: nib.save(
        nib.Nifti1Image(np.asarray(nib.load(f[0]).dataobj), shift @ nib.load(f[0]).affine),
        f[0]))  # fmt: skip
    assert "origin" in line and "differs from ground truth" in line
    # mirrored in world x about the origin, around which the phantom is centred: the same
    # voxel centres, in another order
    line = broken("mirrored", lambda d, f: nib.save(
        nib.Nifti1Image(np.asarray(nib.load(f[0]).dataobj), np.diag([-1.0, 1, 1, 1])
                        @ nib.load(f[0]).affine), f[0]))  # fmt: skip
    assert "stored LAS" in line and "another axis order" in line
    line = broken("labels", lambda d, f: rewrite(f[0], lambda a: np.where(a == 1, 99, a)))
    assert "label ids [99]" in line
    line = broken("corrupt", lambda d, f: f[1].write_bytes(f[1].read_bytes()[:-40]))
    assert f_name(files[1]) in line and ("corrupt" in line or "not a readable" in line)

    n_before = len(ResultsStore(results).runs(status=None))
    r = bench("evaluate", "--pred", str(preds), "-p", "tiny", "--results", str(results),
              "--name", "unet-scratch")  # fmt: skip
    assert r.exit_code == 2 and "installed method's name" in error_line(r)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "submissions").parent.mkdir()
    (elsewhere / "submissions").write_text("not a folder")
    r = bench("evaluate", "--pred", str(preds), "-p", "tiny", "--results", str(elsewhere))
    assert r.exit_code == 2 and "submissions: is a file" in error_line(r)
    assert len(ResultsStore(results).runs(status=None)) == n_before
    assert not (elsewhere / "labelbench.sqlite").exists()


def f_name(path) -> str:
    return path.name


def test_a_case_id_may_end_like_an_image_name(tmp_path):
    """`a_0000.nii.gz` is the prediction of case `a_0000` when that is a test case, and of
    case `a` (image naming) when `a` is."""
    from benchmark.evaluate import find_predictions

    (tmp_path / "a_0000.nii.gz").write_bytes(b"")
    (tmp_path / "b.nii.gz").write_bytes(b"")
    assert find_predictions(tmp_path, ["a_0000", "b"]) == {
        "a_0000": tmp_path / "a_0000.nii.gz",
        "b": tmp_path / "b.nii.gz",
    }
    assert find_predictions(tmp_path, ["a", "b"])["a"] == tmp_path / "a_0000.nii.gz"


def test_the_prediction_folder_must_be_a_folder(tmp_path):
    from benchmark.errors import DatasetError
    from benchmark.evaluate import find_predictions

    (tmp_path / "file.nii.gz").write_bytes(b"")
    for path, says in ((tmp_path / "file.nii.gz", "is a file"), (tmp_path / "x", "does not")):
        try:
            find_predictions(path, ["a"])
        except DatasetError as exc:
            assert says in str(exc)
        else:
            raise AssertionError("no error")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    try:
        find_predictions(tmp_path / "d", ["a"])
    except DatasetError as exc:
        assert "does not exist" in str(exc) and "a.nii.gz" in str(exc)
    else:
        raise AssertionError("no error")


def test_a_grid_off_by_a_hair_is_not_called_another_axis_order():
    from benchmark.data.reader import Header, same_voxels_reordered

    def header(affine) -> Header:
        return Header((40, 36, 6), (0.8, 0.8, 3.0), tuple(map(tuple, affine)))

    ras = np.diag([0.8, 0.8, 3.0, 1.0])
    hair = ras.copy()
    hair[0, 3] = 1e-6  # mm: fails the origin check, in the same axis order
    assert not same_voxels_reordered(header(hair), header(ras))
    lps = np.diag([-0.8, -0.8, 3.0, 1.0])
    lps[:2, 3] = [39 * 0.8, 35 * 0.8]  # the far corner: the same voxel centres
    assert same_voxels_reordered(header(lps), header(ras))
    lps[0, 3] += 0.8  # one voxel beside them
    assert not same_voxels_reordered(header(lps), header(ras))
