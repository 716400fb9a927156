"""`bench evaluate`: score predictions made outside the harness under a protocol's rules.

A folder of 3D label maps, one per test case of the protocol's split, named like the case's
ground-truth file, as nnU-Net writes them and the official FLARE22 script looks them up
(`<case>.nii.gz`), or like the case's image (`<case>_0000.nii.gz`); `.nii` works too and
JSON files (nnU-Net's `plans.json`, ...) are ignored. Every file must lie on the voxel grid
of its case's ground-truth file, stored in its axis order (shape, spacing, direction, origin:
the official script and nnU-Net compare stored arrays; the same voxels in another axis order
are refused with a message that says so), and hold only the protocol's label ids. A
submission name stands for one set of files per protocol: the same files scored again
replace their rows (after an edit to the protocol or the scoring code too), other files under
a name in the store are refused, before any file is scored. Everything is read and
checked before anything is written: bad input is one `DatasetError` and no row, no CSV.

The scores go into the results store as a finished run whose method is the submission's name
and whose budget is `submission`, with the SHA-256 of every file (its provenance). It is
listed in the leaderboard under "Not ranked", never ranked with the protocol's methods:
its training data, label budget and compute are unknown to the harness. A per-case CSV like
the official FLARE22 script's (`Name`, then `<organ>_<METRIC>` columns) is written next to
the store, `<results>/submissions/<protocol>/<name>.csv`, at full precision (the official
rounds to 4 decimals).
"""

from __future__ import annotations

import csv
import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmark.data.context import DataContext, load_data
from benchmark.data.digests import file_digest
from benchmark.data.reader import (
    NIFTI_SUFFIXES,
    check_same_grid,
    read_header,
    read_label,
    same_voxels_reordered,
)
from benchmark.errors import ConfigError, DatasetError, StoreError
from benchmark.metrics.registry import display_name
from benchmark.progress import Progress
from benchmark.protocol import load_protocol, stable_hash
from benchmark.provenance import build_provenance, timestamp
from benchmark.registry import installed_methods
from benchmark.runner import ensure_ceiling, score_prediction
from benchmark.store import MetricRow, ResultsStore, RunRecord, check_results_dir

SUBMISSION = "submission"
"""The budget of every `bench evaluate` run: how the report tells submissions apart."""
SUBMISSION_NOTE = (
    "a submission scored with `bench evaluate`: trained outside the harness, so its label "
    "budget and compute are unknown"
)
IGNORED_SUFFIXES = (".json",)


@dataclass
class EvaluateRequest:
    pred: Path
    protocol: str = "phantom"
    data: Path | None = None
    name: str | None = None
    results: Path = Path("runs")


@dataclass
class Evaluation:
    record: RunRecord
    rows: list[MetricRow]
    csv: Path


IMAGE_SUFFIX = "_0000"
"""What nnU-Net (and FLARE22's images) put after a case id in an image's name."""


def _case_of(path: Path, wanted: set[str]) -> str | None:
    """The case a prediction file is for: its name less the NIfTI suffix when that is a
    test case (a case id may itself end in `_0000`), else less the image suffix too."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            stem = path.name[: -len(suffix)]
            if stem in wanted or not stem.endswith(IMAGE_SUFFIX):
                return stem
            return stem[: -len(IMAGE_SUFFIX)]
    return None


def find_predictions(folder: Path, test_cases: Sequence[str]) -> dict[str, Path]:
    """Test case id → its prediction file; `DatasetError` for a missing case, an extra file
    or two files for one case."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DatasetError(f"{folder}: prediction folder {what}")
    wanted = set(test_cases)
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.endswith(IGNORED_SUFFIXES) or path.name.startswith("."):
            continue
        if path.is_symlink() and not path.exists():
            raise DatasetError(f"{path}: a link to a file that does not exist")
        case = _case_of(path, wanted)
        if case is None or not path.is_file():
            raise DatasetError(
                f"{path}: not a prediction file (expected <case>.nii.gz for the test cases)"
            )
        if case not in wanted:
            raise DatasetError(
                f"{path}: extra file, '{case}' is not a test case of the protocol's split "
                f"(test cases: {', '.join(sorted(wanted))})"
            )
        if case in found:
            raise DatasetError(f"{path}: a second prediction for '{case}' ({found[case]})")
        found[case] = path
    missing = sorted(wanted - set(found))
    if missing:
        raise DatasetError(
            f"{folder}: no prediction for test case '{missing[0]}' (expected "
            f"{folder / (missing[0] + '.nii.gz')})"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    return found


def _check_grid(path: Path, reference: Path) -> None:
    """The prediction must be stored on its ground truth's voxel grid, in its axis order (the
    same affine): the official script and nnU-Net's evaluation compare the stored arrays."""
    header, ref = read_header(path), read_header(reference)
    try:
        check_same_grid(path, header, reference, ref, "prediction", "ground truth")
    except DatasetError:
        if not same_voxels_reordered(header, ref):
            raise
        codes, ref_codes = (nib.aff2axcodes(np.asarray(h.affine)) for h in (header, ref))
        raise DatasetError(
            f"{path}: prediction is stored {''.join(codes)}, its ground truth "
            f"{''.join(ref_codes)} ({reference}): the same voxels in another axis order; save "
            f"it in the ground truth's axis order (with its affine), as the official script "
            f"compares the stored arrays"
        ) from None


def _score(data: DataContext, files: dict[str, Path], progress: Progress) -> list[MetricRow]:
    references = {c.case_id: c.label for c in data.index.labeled}
    rows: list[MetricRow] = []
    for case_id in progress.track(data.split.test, "evaluate"):
        path, reference = files[case_id], references[case_id]
        assert reference is not None
        _check_grid(path, reference)
        labels, _ = read_label(path, data.protocol.labels)
        rows.extend(score_prediction(data, case_id, labels))
    return rows


def write_case_csv(rows: Sequence[MetricRow], files: dict[str, Path], path: Path) -> Path:
    """The per-case table as the official FLARE22 script writes it: `Name` (the file name),
    then one column per organ and metric, metric by metric (`liver_DSC`, ..., `liver_NSD`)."""
    organs = list(dict.fromkeys(r[2] for r in rows))
    names = list(dict.fromkeys(r[3] for r in rows))
    values = {(r[0], r[2], r[3]): r[4] for r in rows}
    header = ["Name"] + [f"{o}_{display_name(m).split()[0]}" for m in names for o in organs]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for case_id in sorted(files):
                row = [files[case_id].name]
                row += [repr(values[(case_id, o, m)]) for m in names for o in organs]
                writer.writerow(row)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _earlier_scorings(results: Path, name: str, protocol: str, digests: dict) -> list[str]:
    """The run_ids of the earlier scorings of these same files under `name` and `protocol`
    (to be replaced); `ConfigError` when other files were scored under that name: a name
    stands for one set of files per protocol, whose CSV it names."""
    store = ResultsStore(results)
    if not store.path.exists():
        return []
    runs = store.runs(protocol, status=None)
    mine = runs[(runs["method"] == name) & (runs["budget"] == SUBMISSION)]
    same, other = [], []
    for run in mine.itertuples():
        files = json.loads(run.info or "{}").get(SUBMISSION)
        (same if files == digests else other).append(run)
    if other:
        raise ConfigError(
            f"--name {name}: a submission of that name with other files is in {store.path} "
            f"(scored {other[-1].finished_at}); give these files another --name"
        )
    return [run.run_id for run in same]


def evaluate(request: EvaluateRequest, progress: Progress) -> Evaluation:
    """Check and score every prediction, then record the submission and write its CSV."""
    t0 = time.perf_counter()
    started = timestamp()
    check_results_dir(request.results)
    protocol = load_protocol(request.protocol)
    name = request.name or Path(request.pred).resolve().name
    if not name or "/" in name or name.startswith("."):
        raise DatasetError(f"--name {name!r}: give a plain name for the submission")
    if name in installed_methods():  # its runs would be taken for that method's newest code
        raise ConfigError(
            f"--name {name}: that is an installed method's name; give the submission its own"
        )
    csv_dir = Path(request.results) / "submissions" / protocol.name
    for folder in (csv_dir.parent, csv_dir):
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"{folder}: is a file, where the per-case tables go; move it away")
    data = load_data(protocol, request.data, progress)
    files = find_predictions(request.pred, data.split.test)
    digests = {c: {"file": p.name, "sha256": file_digest(p)} for c, p in sorted(files.items())}
    earlier = _earlier_scorings(request.results, name, protocol.name, digests)
    rows = _score(data, files, progress)  # reads and checks every file before any write
    key = stable_hash(
        {
            "submission": name,
            "protocol": protocol.hash,
            "dataset": data.store.key,
            "split": data.split.hash,
            "files": digests,
        }
    )
    wall = time.perf_counter() - t0
    record = RunRecord(
        **vars(build_provenance(data, "", {"evaluate": wall}, wall, started)),
        run_id=f"{key[:12]}-{uuid.uuid4().hex[:8]}",
        run_key=key,
        status="completed",
        error=None,
        method=name,
        config={"pred": str(Path(request.pred).resolve())},
        budget=SUBMISSION,
        n_labeled=0,
        budget_ids=[],
        seed=0,
        peak_mem_mb=0.0,
        info={SUBMISSION: digests},
        off_protocol=SUBMISSION_NOTE,
    )
    try:  # the table first: no store row without its table (a table alone is rewritten)
        csv_path = write_case_csv(rows, files, csv_dir / f"{name}.csv")
    except OSError as exc:
        where = csv_dir / f"{name}.csv"
        raise StoreError(f"{where}: cannot be written ({exc.strerror or exc})") from None
    # The same files scored again under the same name replace their earlier rows.
    ResultsStore(request.results).write_run(record, rows, replace=True, supersedes=earlier)
    ensure_ceiling(request.results, data, progress)
    return Evaluation(record, rows, csv_path)
