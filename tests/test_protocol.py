from __future__ import annotations

import pytest

from benchmark.errors import BudgetError, ProtocolError
from benchmark.protocol import (
    PROTOCOLS_DIR,
    Budget,
    available_protocols,
    draw_budget,
    load_protocol,
    split_cases,
)


def test_builtin_protocols_load_and_hash_is_stable():
    assert {"phantom", "phantom-fidelity", "flare22"} <= set(available_protocols())
    a, b = load_protocol("phantom"), load_protocol("phantom")
    assert a.hash == b.hash and len(a.hash) == 16
    assert a.num_classes == 14 and a.labels[1] == "liver" and a.labels[13] == "left_kidney"
    nsd = a.scoring.params["nsd"]
    assert nsd.tolerance_mm[12] == 7 and nsd.min_dsc == 0.2
    assert a.scoring.names == ("dsc", "nsd") and a.scoring.zrange_labels == (5, 6, 10)
    f = load_protocol("flare22")
    assert f.slice_size == 256 and {"1pct", "10pct", "4slices", "100pct"} <= set(f.budgets)
    assert f.hash != a.hash


def test_fidelity_protocol_is_the_phantom_with_a_larger_test_split():
    # Same data, preprocessing, labels and metrics, so runs reuse the phantom's files and its
    # cached pretraining (keyed by the unlabeled pool); only the split differs.
    p, f = load_protocol("phantom"), load_protocol("phantom-fidelity")
    assert f.dataset == p.dataset
    assert (f.window_hu, f.slice_size, f.labels) == (p.window_hu, p.slice_size, p.labels)
    assert f.scoring == p.scoring
    assert f.split_seed == p.split_seed and f.n_val == p.n_val
    assert f.training == p.training  # the same pretraining budget: one cached DDPM for both
    assert f.n_test == 20 > p.n_test
    assert f.hash != p.hash


def test_unknown_protocol_suggests_close_names():
    with pytest.raises(ProtocolError, match="did you mean: phantom"):
        load_protocol("phantm")


def test_invalid_protocol_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[dataset]\nsource = "ftp"\n')
    with pytest.raises(ProtocolError, match="bad.toml"):
        load_protocol(str(bad))
    broken = tmp_path / "broken.toml"
    broken.write_text("name = ")
    with pytest.raises(ProtocolError, match="not a readable TOML"):
        load_protocol(str(broken))


def test_unknown_budget_suggests():
    with pytest.raises(BudgetError, match="did you mean: 1pct"):
        load_protocol("phantom").budget("1pc")


def test_split_is_seeded_disjoint_and_complete():
    ids = [f"c{i:02d}" for i in range(20)]
    s1, s2 = split_cases(ids, 5, 2, seed=0), split_cases(list(reversed(ids)), 5, 2, seed=0)
    assert s1 == s2
    assert len(s1.test) == 5 and len(s1.val) == 2 and len(s1.train) == 13
    assert set(s1.train) | set(s1.val) | set(s1.test) == set(ids)
    assert not set(s1.train) & set(s1.test)
    assert split_cases(ids, 5, 2, seed=1) != s1
    with pytest.raises(BudgetError, match="no train pool"):
        split_cases(ids[:4], 3, 1, seed=0)


def test_budgets_are_nested_and_seeded():
    slices = [f"c{c}:{z:04d}" for c in range(10) for z in range(30)]
    cases = [s.split(":")[0] for s in slices]
    small = draw_budget(Budget("1pct", "slices", fraction=0.01), slices, cases, seed=3)
    big = draw_budget(Budget("10pct", "slices", fraction=0.10), slices, cases, seed=3)
    four = draw_budget(Budget("4slices", "slices", count=4), slices, cases, seed=3)
    assert len(small) == 3 and len(big) == 30 and len(four) == 4
    assert set(small) <= set(four) <= set(big)
    assert draw_budget(Budget("4slices", "slices", count=4), slices[::-1], cases[::-1], 3) == four
    assert draw_budget(Budget("4slices", "slices", count=4), slices, cases, seed=4) != four
    by_case = draw_budget(Budget("2cases", "cases", count=2), slices, cases, seed=0)
    assert len({s.split(":")[0] for s in by_case}) == 2 and len(by_case) == 60


def test_budget_larger_than_pool_is_an_error():
    with pytest.raises(BudgetError, match="only 3 candidate slices"):
        draw_budget(Budget("4slices", "slices", count=4), ["a:1", "a:2", "b:1"], ["a", "a", "b"], 0)


PHANTOM = (PROTOCOLS_DIR / "phantom.toml").read_text()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("finetune_samples = 38400", ""), "training.finetune_samples is missing"),
        (("finetune_samples = 38400", "finetune_samples = 0"), "must be a positive integer"),
        (("pretrain_samples = 12800", "pretrain_samples = -5"), "must be a positive integer"),
        (("validate_every = 1920", "validate_every = 1.5"), "must be a positive integer"),
        (("val_cases = 5", "val_cases = 0"), "needs validation cases"),
        (("sanity_min_dsc = 0.5", "sanity_min_dsc = 1.5"), r"must be in \[0, 1\]"),
        (("sanity_min_dsc = 0.5", "sanity_min_dsc = -0.1"), r"must be in \[0, 1\]"),
        (("[training]", "[trainin]"), "a \\[training\\] table is required"),
    ],
)
def test_bad_training_table_is_one_error_naming_the_file(tmp_path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(PHANTOM.replace(*edit))
    with pytest.raises(ProtocolError, match=message) as info:
        load_protocol(str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("test_cases = 8", "test_cases = -1"), "split.test_cases must be an integer >= 1, not -1"),
        (("test_cases = 8", "test_cases = 0"), "split.test_cases must be an integer >= 1, not 0"),
        (("test_cases = 8", "test_cases = 2.5"), "split.test_cases must be an integer >= 1"),
        (("val_cases = 5", "val_cases = -2"), "split.val_cases must be an integer >= 0"),
        (("seed = 0\ntest_cases", "seed = -3\ntest_cases"), "split.seed must be an integer >= 0"),
        (("slice_size = 128", "slice_size = 0"), "preprocess.slice_size must be an integer >= 16"),
        (("slice_size = 128", "slice_size = true"), "preprocess.slice_size must be an integer"),
        (("seed = 0\nsize", "sead = 0\nsize"), "dataset.phantom: unknown setting sead"),
        (("seed = 0\nsize", "seed = 1.7\nsize"), "dataset.phantom.seed must be an integer"),
        (("seed = 0\nsize", "seed = -1\nsize"), "dataset.phantom.seed must be an integer >= 0"),
        (("cases = 30", "cases = 30\nfov_mm = [400.0, 300.0]"), "dataset.phantom: fov_mm must"),
    ],
)
def test_split_counts_and_slice_size_are_checked_before_any_data(tmp_path, edit, message):
    """A negative test count drew every test case into the train pool, and was scored."""
    path = tmp_path / "bad.toml"
    text = PHANTOM.replace(*edit)
    assert text != PHANTOM
    path.write_text(text)
    with pytest.raises(ProtocolError, match=message) as info:
        load_protocol(str(path))
    assert str(path) in str(info.value)
    with pytest.raises(ProtocolError, match="at least 1 test case"):
        split_cases([f"c{i}" for i in range(9)], -1, 0, seed=0)


def test_selection_off_allows_no_validation_cases(tmp_path):
    path = tmp_path / "noval.toml"
    path.write_text(
        PHANTOM.replace("val_cases = 5", "val_cases = 0").replace("select = true", "select = false")
    )
    training = load_protocol(str(path)).training
    assert not training.select
    assert (training.finetune_samples, training.sanity_min_dsc) == (38400, 0.5)


def test_a_missing_protocol_file_says_so(tmp_path):
    with pytest.raises(ProtocolError, match=r"nope.toml: protocol file does not exist"):
        load_protocol(str(tmp_path / "nope.toml"))
    with pytest.raises(ProtocolError, match=r"is not a file"):
        load_protocol(str(tmp_path))
