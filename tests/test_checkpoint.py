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
