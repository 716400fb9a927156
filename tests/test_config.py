from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass

import pytest

from baselines.unet_scratch import UNetConfig
from benchmark.config import (
    apply_overrides,
    config_dict,
    describe_fields,
    execution_only,
    identity_dict,
    positive,
    range_error,
    unit_interval,
)
from benchmark.errors import ConfigError
from benchmark.registry import installed_methods


@dataclass(frozen=True)
class Demo:
    steps: int = 1
    lr: float = 0.1
    flag: bool = False
    name: str = "a"
    blocks: tuple[int, ...] = (1, 2)
    maybe: int | None = None


def test_overrides_are_typed():
    cfg = apply_overrides(
        Demo, ["steps=5", "lr=1e-3", "flag=true", "name=x", "blocks=3,4,5", "maybe=2"]
    )
    assert cfg == Demo(5, 1e-3, True, "x", (3, 4, 5), 2)
    assert apply_overrides(Demo, []) == Demo()


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match="unknown key.*did you mean: iterations"):
        apply_overrides(UNetConfig, ["iteration=3"])


@pytest.mark.parametrize("item", ["steps=abc", "lr=fast", "flag=maybe", "steps"])
def test_bad_values(item):
    with pytest.raises(ConfigError, match="--set"):
        apply_overrides(Demo, [item])


@dataclass(frozen=True)
class WithPresets:
    PRESETS = {"small": {"width": 8, "depth": 2}, "big": {"width": 64, "depth": 8}}  # noqa: RUF012
    preset: str = "small"
    width: int = 8
    depth: int = 2


def test_presets_apply_first_and_explicit_keys_win():
    assert apply_overrides(WithPresets, ["preset=big"]) == WithPresets("big", 64, 8)
    assert apply_overrides(WithPresets, ["width=16", "preset=big"]) == WithPresets("big", 16, 8)
    with pytest.raises(ConfigError, match="unknown preset.*did you mean: big"):
        apply_overrides(WithPresets, ["preset=bgi"])


@dataclass(frozen=True)
class Ranged:
    steps: int = positive(1)
    decay: float = unit_interval(0.5)
    sizes: tuple[int, ...] = positive((8, 16))
    budget: int | None = positive(None)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("steps=0", "--set steps=0: steps must be > 0"),
        ("steps=-5", "--set steps=-5: steps must be > 0"),
        ("decay=1.5", "--set decay=1.5: decay must be in [0, 1]"),
        ("decay=nan", "decay must be a finite number"),
        ("sizes=8,0", "sizes must be > 0 (each item)"),
        ("budget=-1", "budget must be > 0"),
    ],
)
def test_values_outside_the_declared_range_are_rejected(item, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        apply_overrides(Ranged, [item])


def test_none_is_in_range_for_optional_fields():
    assert apply_overrides(Ranged, ["budget=none", "decay=1", "steps=3"]) == Ranged(
        3, 1.0, budget=None
    )


def _numeric(kind: object) -> bool:
    args = [a for a in typing.get_args(kind) if a is not type(None) and a is not Ellipsis]
    if typing.get_origin(kind) is not None:  # int | None, tuple[int, ...]
        return any(_numeric(a) for a in args)
    return kind in (int, float)


def test_every_numeric_method_config_field_declares_a_range_its_default_is_in():
    for name, entry in installed_methods().items():
        config = entry.load().Config
        hints = typing.get_type_hints(config)
        for f in dataclasses.fields(config):
            if _numeric(hints[f.name]):
                assert "range" in f.metadata, f"{name}: {f.name} declares no range"
                assert range_error(f, f.default) is None, f"{name}: default of {f.name}"


@dataclass(frozen=True)
class Run:
    lr: float = positive(0.1)
    workers: int = positive(2, execution=True)
    keep: bool = execution_only(False)


def test_execution_only_fields_are_recorded_but_are_not_the_runs_identity():
    cfg = apply_overrides(Run, ["workers=8", "keep=true"])
    assert config_dict(cfg) == {"lr": 0.1, "workers": 8, "keep": True}
    assert identity_dict(cfg) == identity_dict(Run()) == {"lr": 0.1}
    assert identity_dict(apply_overrides(Run, ["lr=0.2"])) == {"lr": 0.2}
    assert [x for *_, x in describe_fields(Run)] == [False, True, True]
    with pytest.raises(ConfigError, match="workers must be > 0"):
        apply_overrides(Run, ["workers=0"])  # the range still holds


EXECUTION_ONLY = {
    "unet-scratch": {"predict_batch_size"},
    "simclr": {"predict_batch_size"},
    "mae": {"predict_batch_size"},
    "diffusion-linear": {"predict_batch_size", "checkpoint_every", "feature_memory_mb"},
    "diffusion-decoder": {"predict_batch_size", "checkpoint_every"},
    "nnunet": {"processes", "augmentation_processes", "keep_files"},
}


def test_the_built_in_methods_declare_only_settings_that_change_no_number_execution_only():
    """What may differ between two runs that count as one. A field that changes what is
    computed (a learning rate, a length, float16 feature storage, bf16) must never be here."""
    found = {}
    for name, entry in installed_methods().items():
        if name in EXECUTION_ONLY:
            config = entry.load().Config
            found[name] = {n for n, *_, x in describe_fields(config) if x}
    assert found == EXECUTION_ONLY


EXECUTION_SET = {
    "diffusion-linear": "checkpoint_every=7",
    "simclr": "predict_batch_size=3",
    "mae": "predict_batch_size=3",
}


def test_execution_only_fields_leave_the_pretraining_keys_alone():
    """One pretrained model serves runs that differ only in how they are executed."""
    for name in EXECUTION_SET:
        method = installed_methods()[name].load()
        assert method(method.Config()).pretrain_key(0) == method(
            apply_overrides(method.Config, [EXECUTION_SET[name]])
        ).pretrain_key(0)
        assert method(method.Config()).pretrain_key(0) != method(
            apply_overrides(method.Config, ["pretrain_seed=1"])
        ).pretrain_key(0)
