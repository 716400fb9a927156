"""Method configs: frozen dataclasses, overridden from the command line with `--set key=value`.

Every numeric field declares its range next to it, in the field's metadata, with one of the
helpers below (`iterations: int = positive(300)`); `apply_overrides` rejects a value outside
it before any work, so a config that could never run is never recorded as a failed run.

A field that changes how a run is executed but not what it computes (worker processes, a
prediction batch size, how often a checkpoint is written, whether scratch files are kept) is
declared with `execution=True` (`processes: int = positive(2, execution=True)`, or
`execution_only(False)` for a field without a range). It is recorded with the run like every
field, but it is left out of the run's identity (`identity_dict`): the run key and the
pretraining cache keys. So a run made with 4 augmentation workers on a GPU is the same run as
one made in-process on a CPU, as a run made on another device is: equal in what it computes,
not necessarily in its last bits or in its random draws (nnU-Net's workers draw unseeded).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from benchmark.errors import ConfigError, did_you_mean

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}

T = TypeVar("T")

RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "positive": (lambda v: v > 0, "> 0"),
    "non_negative": (lambda v: v >= 0, ">= 0"),
    "unit_interval": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "open_unit_interval": (lambda v: 0 < v < 1, "in (0, 1)"),
    "fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
}
"""Range name → (test, how the error message states it). A tuple field's range holds for each
item; None (in an optional field) is always accepted."""


def _field(default: T, kind: str | None, execution: bool) -> T:
    metadata: dict[str, Any] = {}
    if kind is not None:
        metadata["range"] = kind
    if execution:
        metadata["execution"] = True
    return dataclasses.field(default=default, metadata=metadata)


def positive(default: T, *, execution: bool = False) -> T:
    """A field whose value is > 0 (counts, sizes, learning rates)."""
    return _field(default, "positive", execution)


def non_negative(default: T, *, execution: bool = False) -> T:
    """A field whose value is >= 0 (seeds, weight decay, sizes where 0 means "default")."""
    return _field(default, "non_negative", execution)


def unit_interval(default: T, *, execution: bool = False) -> T:
    """A field in [0, 1] (EMA decay)."""
    return _field(default, "unit_interval", execution)


def open_unit_interval(default: T, *, execution: bool = False) -> T:
    """A field in (0, 1) (mask ratio, a held-out share)."""
    return _field(default, "open_unit_interval", execution)


def fraction(default: T, *, execution: bool = False) -> T:
    """A field in (0, 1] (a share that may be all)."""
    return _field(default, "fraction", execution)


def execution_only(default: T) -> T:
    """A field without a range that changes how a run is executed, not what it computes."""
    return _field(default, None, True)


def is_execution(field: dataclasses.Field) -> bool:
    """Whether `field` was declared execution-only (left out of the run's identity)."""
    return bool(field.metadata.get("execution"))


def range_error(field: dataclasses.Field, value: Any) -> str | None:
    """Why `value` is outside `field`'s declared range, or None when it is inside (or the
    field declares none)."""
    kind = field.metadata.get("range")
    if kind is None or value is None:
        return None
    test, text = RANGES[kind]
    each = " (each item)" if isinstance(value, tuple) else ""
    for item in value if isinstance(value, tuple) else (value,):
        if not math.isfinite(item):
            return f"{field.name} must be a finite number{each}"
        if not test(item):
            return f"{field.name} must be {text}{each}"
    return None


def _convert(key: str, text: str, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin is tuple:
        args = typing.get_args(kind)
        items = [t.strip() for t in text.strip("()[] ").split(",") if t.strip()]
        inner = args[0]
        return tuple(_convert(key, t, inner) for t in items)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        return _convert(key, text, args[0])
    try:
        if kind is bool:
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
    except ValueError:
        raise ConfigError(f"--set {key}={text}: expected a value of type {kind.__name__}") from None
    raise ConfigError(f"--set {key}: unsupported field type {kind}")


def apply_overrides(config_cls: type, overrides: Sequence[str]) -> Any:
    """Build `config_cls` from its defaults and `key=value` strings, validating each.

    A config class with a `PRESETS` mapping accepts `preset=NAME`: the preset's values are
    applied first, then the other overrides, whatever their order.
    """
    hints = typing.get_type_hints(config_cls)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    values: dict[str, Any] = {}
    presets: dict[str, dict[str, Any]] = getattr(config_cls, "PRESETS", {})
    for item in overrides:
        key, _, text = item.partition("=")
        if presets and key.strip() == "preset":
            name = text.strip()
            if name not in presets:
                raise ConfigError(
                    f"--set preset={name}: unknown preset{did_you_mean(name, presets)}; "
                    f"known: {', '.join(presets)}"
                )
            values.update(presets[name], preset=name)  # explicit keys below win
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected key=value")
        key, text = (s.strip() for s in item.split("=", 1))
        if key not in fields:
            raise ConfigError(
                f"--set {key}: unknown key for {config_cls.__qualname__}"
                f"{did_you_mean(key, fields)}; known: {', '.join(sorted(fields))}"
            )
        if not (presets and key == "preset"):
            values[key] = _convert(key, text, hints[key])
    given = {k.strip(): v.strip() for k, _, v in (item.partition("=") for item in overrides)}
    for f in dataclasses.fields(config_cls):  # before construction: __post_init__ may divide
        if f.name in values and (reason := range_error(f, values[f.name])):
            where = f"{f.name}={given[f.name]}" if f.name in given else f"preset={values['preset']}"
            raise ConfigError(f"--set {where}: {reason}")
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--set: {exc}") from None


def config_dict(config: Any) -> dict[str, Any]:
    """A config as a JSON-ready dict: every field, as the run's record holds it."""
    return dataclasses.asdict(config)


def execution_fields(config_cls: Any) -> set[str]:
    """The names of a config class's (or config's) execution-only fields."""
    return {f.name for f in dataclasses.fields(config_cls) if is_execution(f)}


def identity_dict(config: Any) -> dict[str, Any]:
    """The fields of a config that define what a run computes: all but the execution-only
    ones. This, not `config_dict`, goes into the run key and the pretraining cache keys."""
    execution = execution_fields(config)
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in execution}


def default_text(field: dataclasses.Field) -> str:
    """A field's default as `bench methods --verbose` shows it: its repr (of what its
    `default_factory` makes, for one), or `(no default)`."""
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return repr(field.default_factory())
    return "(no default)"


def describe_fields(config_cls: type) -> list[tuple[str, str, str, bool]]:
    """(name, type, default as shown, execution-only) for each field, for `bench methods
    --verbose`."""
    hints = typing.get_type_hints(config_cls)
    return [
        (
            f.name,
            getattr(hints[f.name], "__name__", str(hints[f.name])),
            default_text(f),
            is_execution(f),
        )
        for f in dataclasses.fields(config_cls)
    ]
