"""A prediction that is not a label map of the protocol's ids fails its run, named as such;
it is never cast into valid ids and scored (id 256 had become background, and a model
predicting truth + 256 scored the ceiling)."""

from __future__ import annotations

import sqlite3

import pytest
import torch
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.errors import PredictionError
from benchmark.prediction import check_labels
from benchmark.registry import get_method
from tests.test_plugins import plugin  # noqa: F401  (fixture)
from tests.test_validation import tiny_data  # noqa: F401  (fixture)

IMAGES = torch.zeros(2, 1, 8, 8)


@pytest.mark.parametrize(
    ("pred", "message"),
    [
        (
            torch.zeros(2, 8, 8, dtype=torch.long) + 256,
            "label ids 256..256: the protocol's are 0..13",
        ),
        (torch.full((2, 8, 8), -1), "label ids -1..-1"),
        (torch.zeros(2, 8, 8), "torch.float32: expected integer label ids"),
        (torch.zeros(2, 14, 8, 8).softmax(1), "shape (2, 14, 8, 8)"),
        (torch.zeros(2, 4, 4, dtype=torch.long), "expected (2, 8, 8) label maps"),
        (torch.zeros(2, 8, 8, dtype=torch.bool), "not scores, probabilities or masks"),
        (torch.zeros(2, 8, 8).numpy(), "returned ndarray, not a torch.Tensor"),
    ],
)
def test_what_predict_must_return(pred, message):
    with pytest.raises(PredictionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_labels(pred, IMAGES, 14)
    good = torch.randint(0, 14, (2, 8, 8))
    assert check_labels(good, IMAGES, 14) is good
    for dtype in (torch.uint8, torch.int16, torch.int32, torch.uint16, torch.uint32):
        assert check_labels(good.to(dtype), IMAGES, 14) is not None, dtype


@pytest.mark.parametrize(
    ("shift", "message"),
    [
        (lambda p: p + 256, "predict returned label ids"),
        (lambda p: p.float() + 0.7, "expected integer label ids"),
        (lambda p: p[:, None], "label maps"),
    ],
)
def test_a_run_whose_predict_breaks_the_contract_fails_unscored(
    plugin,  # noqa: F811
    tmp_path,
    monkeypatch,
    shift,
    message,
):
    # Broken only after fit and the checks: the test cases' prediction is checked too.
    import benchmark.runner as runner

    cls = get_method("nearest-mean")
    real, checked = cls.predict, runner.check_fitted
    state = {"tested": False}

    def after_checks(*args):
        trust = checked(*args)
        state["tested"] = True
        return trust

    def predict(self, images):
        pred = real(self, images)
        return shift(pred) if state["tested"] else pred

    monkeypatch.setattr(runner, "check_fitted", after_checks)
    monkeypatch.setattr(cls, "predict", predict)
    results = tmp_path / "runs"
    r = CliRunner().invoke(
        app, ["run", "-m", "nearest-mean", "-b", "4slices", "-p", "tiny", "--results", str(results)]
    )
    assert r.exit_code == 1 and message in r.stderr
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        status, error = conn.execute("SELECT status, error FROM runs").fetchone()
        assert status == "failed" and error.startswith("PredictionError: predict returned")
        assert conn.execute("SELECT count(*) FROM case_metrics").fetchone()[0] == 0


def test_a_method_sees_its_own_rows_only(tiny_data):  # noqa: F811
    """The store behind a slice set holds the validation and test cases too: a method is not
    handed it, and a view of its rows never gains labels it was not given."""
    from benchmark.method import SliceSet

    _, rows = tiny_data.budget_rows(tiny_data.protocol.budget("4slices"), 0)
    labeled = SliceSet(tiny_data.store, rows, labeled=True)
    assert not hasattr(labeled, "store")
    two = labeled.subset(slice(0, 2))
    assert two.labeled and list(two.rows) == list(rows[:2])
    images = labeled.subset(slice(None), labeled=False)
    assert not images.labeled and not images.subset([0], labeled=True).labeled
    with pytest.raises(ValueError, match="no labels"):
        images.labels()


def test_the_validator_takes_any_array_of_label_maps(tiny_data):  # noqa: F811
    """A flipped view (negative strides, as a test-time flip makes) and unsigned ids score as
    their int64 copy does."""
    import numpy as np

    from benchmark.validation import Validator

    val = Validator(tiny_data.store, tiny_data.split.val, tiny_data.protocol)
    truth = np.asarray(tiny_data.store.labels[val.slices.rows], dtype=np.int64)
    expected = val.score_slices(truth)
    flipped = np.ascontiguousarray(truth[:, ::-1])[:, ::-1]  # a view with negative strides
    assert flipped.strides[1] < 0
    assert val.score_slices(flipped) == expected
    assert val.score_slices(torch.from_numpy(truth).to(torch.uint16)) == expected
