"""Method configs: frozen dataclasses, overridden from the command line with `--set key=value`."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from typing import Any

from benchmark.errors import ConfigError, did_you_mean

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


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
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--set: {exc}") from None


def config_dict(config: Any) -> dict[str, Any]:
    """A config as a JSON-ready dict."""
    return dataclasses.asdict(config)


def describe_fields(config_cls: type) -> list[tuple[str, str, Any]]:
    """(name, type, default) for each field, for `bench methods --verbose`."""
    hints = typing.get_type_hints(config_cls)
    return [
        (f.name, getattr(hints[f.name], "__name__", str(hints[f.name])), f.default)
        for f in dataclasses.fields(config_cls)
    ]
