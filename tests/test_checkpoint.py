"""Hash-checked checkpoint files: a reader never deletes a file a writer is replacing."""

from __future__ import annotations

import os
import threading

import torch

from benchmark import checkpoint
from benchmark.checkpoint import load_verified, save_verified


def test_round_trip_and_config_mismatch_rebuilds(tmp_path):
    path = tmp_path / "m.pt"
    save_verified({"w": torch.arange(3.0)}, path, {"config": {"a": 1}})
    obj, meta = load_verified(path, {"a": 1})
    assert torch.equal(obj["w"], torch.arange(3.0)) and meta["config"] == {"a": 1}
    assert load_verified(path, {"a": 2}) is None
    assert not path.exists() and not path.with_suffix(".json").exists()


def test_a_reader_waits_for_a_writer_between_file_and_sidecar(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    save_verified({"w": torch.zeros(2)}, path, {"config": {"a": 1}})
    real_replace = os.replace
    halfway, resume = threading.Event(), threading.Event()

    def replace_then_pause(src, dst):
        real_replace(src, dst)
        if str(dst).endswith(".pt"):  # new file in place, its sidecar still the old one
            halfway.set()
            resume.wait(10)

    monkeypatch.setattr(checkpoint.os, "replace", replace_then_pause)
    writer = threading.Thread(
        target=save_verified, args=({"w": torch.ones(2)}, path, {"config": {"a": 1}})
    )
    writer.start()
    assert halfway.wait(10)
    got: dict = {}
    reader = threading.Thread(target=lambda: got.update(v=load_verified(path, {"a": 1})))
    reader.start()
    reader.join(0.5)
    assert reader.is_alive(), "the reader must wait for the writer's lock"
    resume.set()
    writer.join(10)
    reader.join(10)
    assert got["v"] is not None, "a good file was deleted"
    assert torch.equal(got["v"][0]["w"], torch.ones(2))
    assert path.exists()


def test_saving_or_loading_a_name_removes_what_killed_saves_of_it_left(tmp_path):
    """Only temporaries whose process is gone: not a live one's, not another host's (its pid
    means nothing here), not another name's, nor a recent one in the older pid-only form."""
    import socket
    import subprocess
    import time

    gone = subprocess.Popen(["true"])
    gone.wait()
    host, dead, live = socket.gethostname(), gone.pid, os.getppid()
    names = {
        f"m.{host}-{dead}.tmp": False,
        f"m.{host}-{dead}.json.tmp": False,
        f"m.{dead}.tmp": False,  # older form, old enough
        f"m.{dead}.json.tmp": True,  # older form, recent: maybe another host's live save
        f"m.{host}-{live}.tmp": True,
        f"m.elsewhere-{dead}.tmp": True,
        f"n.{host}-{dead}.tmp": True,
        # recent: another container with this host name (its own pids) may be saving it
        f"m.{host}-{dead + 1}.tmp": True,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    old = time.time() - 3600
    for name in (f"m.{dead}.tmp", f"m.{host}-{dead}.tmp", f"m.{host}-{dead}.json.tmp"):
        os.utime(tmp_path / name, (old, old))
    save_verified({"w": torch.zeros(2)}, tmp_path / "m.pt", {"config": {}})
    kept = {p.name for p in tmp_path.glob("*.tmp")}
    assert kept == {name for name, stays in names.items() if stays}
    assert load_verified(tmp_path / "m.pt", {}) is not None

    (tmp_path / f"n.{host}-{dead}.json.tmp").write_bytes(b"partial")  # never saved at all
    for name in (f"n.{host}-{dead}.json.tmp", f"n.{host}-{dead}.tmp"):
        os.utime(tmp_path / name, (old, old))
    assert load_verified(tmp_path / "n.pt", {}) is None
    assert not list(tmp_path.glob("n.*"))
