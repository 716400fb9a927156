from __future__ import annotations

from dataclasses import dataclass

import pytest

from baselines.unet_scratch import UNetConfig
from benchmark.config import apply_overrides
from benchmark.errors import ConfigError


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
