"""Caches that check themselves: digests and their memo, manifests, and what killed builds leave."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from benchmark.data import cache, digests
from benchmark.data.cache import (
    VERIFY_EVERY,
    building,
    check_folder,
    full_check_due,
    sweep_stale_builds,
    verifying,
    write_manifest,
)
from benchmark.data.digests import DigestMemo, file_digest
from benchmark.data.reader import discover, read_label
from benchmark.data.slicestore import Preprocessing, build_slice_store, store_key

HOUR_NS = 3_600 * 10**9


def aged(path: Path) -> Path:
    """Make `path` an hour old, as data on disk usually is (young files are never memoised)."""
    old = time.time_ns() - HOUR_NS
    os.utime(path, ns=(old, old))
    return path


@pytest.fixture
def hashed(monkeypatch) -> list[Path]:
    """Every file whose bytes are read for a digest, in order."""
    seen: list[Path] = []
    real = digests.file_digest

    def counting(path: Path) -> str:
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(digests, "file_digest", counting)
    return seen


def test_memo_reads_a_file_once_and_sees_every_edit(tmp_path, hashed):
    memo = DigestMemo(tmp_path / "memo.sqlite")
    data = tmp_path / "label.nii"
    data.write_bytes(b"\0" * 1000)
    aged(data)
    first = memo.digest(data)
    assert first == file_digest(data) and memo.digest(data) == first
    assert len(hashed) == 1  # the second call only stat'ed the file
    # One byte in the middle, size and mtime kept (as `touch -r` would): ctime moved on.
    st = data.stat()
    with data.open("r+b") as f:
        f.seek(500)
        f.write(b"\1")
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert memo.digest(data) != first and len(hashed) == 2
    assert memo.digest(data, fresh=True) == memo.digest(data) and len(hashed) == 3


def test_young_files_are_hashed_every_time(tmp_path, hashed):
    """A file written within the last seconds may be written again in the same timestamp tick."""
    memo = DigestMemo(tmp_path / "memo.sqlite")
    young = tmp_path / "young.bin"
    young.write_bytes(b"abc")
    memo.digest(young)
    memo.digest(young)
    assert len(hashed) == 2


def test_a_damaged_or_unwritable_memo_only_costs_time(tmp_path):
    db = tmp_path / "memo.sqlite"
    db.write_bytes(os.urandom(4096))
    data = tmp_path / "x.bin"
    data.write_bytes(b"x" * 10)
    aged(data)
    assert DigestMemo(db).digest(data) == file_digest(data)  # a new memo replaced the old
    assert DigestMemo(tmp_path / "no" / "such" / "dir" / "memo.sqlite").digest(data)
    assert DigestMemo(None).digest(data) == file_digest(data)


def folder_with_manifest(tmp_path: Path) -> Path:
    folder = tmp_path / "store"
    (folder / "truth").mkdir(parents=True)
    (folder / "index.json").write_text('{"key": "k"}')
    np.save(folder / "truth" / "a.npy", np.arange(100, dtype=np.uint8))
    write_manifest(folder)
    return folder


def test_manifest_names_what_is_wrong(tmp_path):
    folder = folder_with_manifest(tmp_path)
    memo = DigestMemo(tmp_path / "memo.sqlite")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {"index.json", "truth/a.npy"}
    assert check_folder(folder, memo) is None
    (folder / "index.json").write_text('{"key": "j"}')
    assert check_folder(folder, memo) == "index.json does not match its sha256 in manifest.json"
    (folder / "index.json").write_text('{"key": "jj"}')
    assert check_folder(folder, memo) == "index.json has 13 bytes, its manifest says 12"
    (folder / "index.json").write_text('{"key": "k"}')
    assert check_folder(folder, memo) is None
    (folder / "truth" / "a.npy").unlink()
    assert check_folder(folder, memo) == "truth/a.npy is missing"
    (folder / "manifest.json").write_text("{")
    assert check_folder(folder, memo) == "its manifest.json cannot be read"
    (folder / "manifest.json").unlink()
    assert check_folder(folder, memo) == "it has no manifest.json"


def test_full_check_every_tenth_open_or_when_asked(tmp_path):
    memo = DigestMemo(tmp_path / "memo.sqlite")
    due = [full_check_due(tmp_path / "a", memo) for _ in range(2 * VERIFY_EVERY)]
    assert [i + 1 for i, d in enumerate(due) if d] == [VERIFY_EVERY, 2 * VERIFY_EVERY]
    with verifying():
        assert full_check_due(tmp_path / "a", memo)
    assert not full_check_due(tmp_path / "a", memo)


def test_stale_build_folders_are_swept_live_ones_kept(tmp_path):
    slices = tmp_path / "slices"
    with building(slices, "abc") as live:
        os.utime(live, (0, 0))  # old, but its builder holds the lock
        dead = slices / ".def-x1"
        dead.mkdir()
        (dead / cache.LOCK).touch()
        os.utime(dead, (0, 0))
        young = slices / ".def-x2"
        young.mkdir()  # not yet locked by the build that just made it
        kept = slices / "0123456789abcdef"
        kept.mkdir()
        os.utime(kept, (0, 0))
        assert sweep_stale_builds(slices) == [dead]
        assert live.exists() and young.exists() and kept.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock semantics")
def test_a_killed_builders_folder_is_swept(tmp_path):
    slices = tmp_path / "slices"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from benchmark.data.cache import building

        with building(Path({str(slices)!r}), "key") as tmp:
            print(tmp, flush=True)
            time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    tmp = Path(proc.stdout.readline().decode().strip())
    try:
        assert sweep_stale_builds(slices, min_age_s=0) == []  # its builder lives
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert sweep_stale_builds(slices, min_age_s=0) == [tmp] and not tmp.exists()


PREP = Preprocessing((-160.0, 240.0), 32)


def test_store_keeps_ground_truth_and_no_paths(tiny_dataset, isolated):
    index = discover(tiny_dataset)
    store = build_slice_store(index.labeled, PREP, isolated, known_labels=range(1, 14))
    for case in index.labeled:
        truth, spacing = store.ground_truth(case.case_id)
        expected, expected_spacing = read_label(case.label, range(1, 14))
        assert truth.dtype == np.uint8 and np.array_equal(truth, expected)
        assert spacing == expected_spacing
    index_json = (store.root / "index.json").read_text()
    assert str(tiny_dataset) not in index_json and ".nii" not in index_json
    assert check_folder(store.root, DigestMemo.in_cache(isolated)) is None


def test_store_key_follows_every_byte_and_the_label_ids(tiny_dataset, isolated):
    cases = discover(tiny_dataset).labeled
    memo = DigestMemo.in_cache(isolated)
    key = store_key(cases, PREP, range(1, 14), memo)
    assert store_key(cases, PREP, range(1, 4), memo) != key  # labels were checked on these ids
    label = aged(cases[0].label)
    assert store_key(cases, PREP, range(1, 14), memo) == key  # and memoised, being old
    raw = bytearray(label.read_bytes())
    raw[len(raw) // 2] ^= 1  # one bit in the middle of the file
    label.write_bytes(bytes(raw))
    aged(label)
    assert store_key(cases, PREP, range(1, 14), memo) != key


def test_phantom_is_generated_again_when_damaged(isolated, caplog):
    from benchmark.data.source import phantom_dir, resolve_dataset
    from benchmark.progress import Progress
    from benchmark.protocol import load_protocol

    protocol = load_protocol("tiny")
    resolve_dataset(protocol, None, Progress(quiet=True))
    folder = phantom_dir(protocol)
    assert check_folder(folder, DigestMemo.in_cache(isolated)) is None
    label = next((folder / "labelsTr").iterdir())
    good = label.read_bytes()
    label.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    caplog.clear()
    resolve_dataset(protocol, None, Progress(quiet=True))
    warnings = [r.getMessage() for r in caplog.records if r.name == "labelbench.cache"]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"generating the phantom again in {folder}"
    )
    assert f"labelsTr/{label.name} does not match" in warnings[0]
    assert label.read_bytes() == good  # generated again, byte for byte


def test_the_phantom_and_the_slice_store_are_keyed_by_their_settings_and_code(
    tiny_dataset, isolated, monkeypatch, tmp_path
):
    """A default written out is the same phantom, a changed one or a changed generator is
    not; a changed reader or preprocessing builds the store again (no version to bump)."""
    import dataclasses

    from benchmark.data import slicestore, source
    from benchmark.data.phantom import PhantomSettings
    from benchmark.protocol import load_protocol

    text = (Path(__file__).parent / "protocols" / "tiny.toml").read_text()
    table = "[dataset.phantom]"
    assert table in text

    def folder(extra: str) -> Path:
        path = tmp_path / f"p{abs(hash(extra))}.toml"
        path.write_text(text.replace(table, f"{table}\n{extra}"))
        return source.phantom_dir(load_protocol(str(path)))

    default = {f.name: f.default for f in dataclasses.fields(PhantomSettings)}["deform_mm"]
    plain = folder("")
    assert folder(f"deform_mm = {default}") == plain
    assert folder(f"deform_mm = {default + 1}") != plain
    monkeypatch.setattr(source, "source_digest", lambda *modules: "edited generator")
    assert folder("") != plain

    cases = discover(tiny_dataset).labeled
    memo = DigestMemo.in_cache(isolated)
    key = store_key(cases, PREP, range(1, 14), memo)
    assert slicestore.STORE_CODE == ("benchmark.data.slicestore", "benchmark.data.reader")
    monkeypatch.setattr(slicestore, "source_digest", lambda *modules: "edited reader")
    assert store_key(cases, PREP, range(1, 14), memo) != key
