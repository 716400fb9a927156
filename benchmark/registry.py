"""The method registry: every method, built-in or third-party, comes from one entry-point group.

Built-ins are declared in this project's `pyproject.toml` under
`[project.entry-points."labelbench.methods"]`, exactly as a plugin package declares its own.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from benchmark.errors import PluginError, UnknownMethodError, did_you_mean
from benchmark.method import GenerativeMethod, Method

GROUP = "labelbench.methods"


def _distribution(ep: EntryPoint) -> str:
    """'name version' of the distribution that declares `ep` ('?' when unknown)."""
    dist = ep.dist
    return f"{dist.name} {dist.version}" if dist is not None else "?"


def _same_registration(ep: EntryPoint) -> tuple[str, str]:
    """What makes two finds of an entry point one registration: the distribution (its name
    normalised as pip does) and the value. The same distribution found twice on sys.path
    (an editable install and a checkout) declares nothing new."""
    dist = ep.dist
    owner = re.sub(r"[-_.]+", "-", dist.name).lower() if dist is not None else "?"
    return owner, ep.value


@dataclass(frozen=True)
class MethodEntry:
    name: str
    entry_points: tuple[EntryPoint, ...]
    """Each distinct registration of `name`, in discovery order: one, or several when
    distributions clash over the name (then the method is refused, never picked)."""

    @property
    def entry_point(self) -> EntryPoint:
        return self.entry_points[0]

    @property
    def distribution(self) -> str:
        return ", ".join(_distribution(ep) for ep in self.entry_points)

    @property
    def clash(self) -> str | None:
        """Why `name` is ambiguous (several distributions register it), or None."""
        if len(self.entry_points) < 2:
            return None
        who = [f"{_distribution(ep)} ({ep.value})" for ep in self.entry_points]
        count = "two" if len(who) == 2 else str(len(who))
        return (
            f"method '{self.name}' is registered by {count} distributions, "
            f"{', '.join(who[:-1])} and {who[-1]}: uninstall one, or rename its entry point"
        )

    def load(self) -> type[Method]:
        """The method's class, checked as far as the core relies on it; `PluginError` (one
        line naming the entry point and the class) when it cannot be used."""
        if self.clash:
            raise PluginError(self.clash)
        ep = self.entry_point
        where = f"entry point '{self.name}' = {ep.value} ({_distribution(ep)})"
        cls = _resolve(ep, where)
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise PluginError(f"{where}: {ep.value} is not a Method subclass")
        if problem := method_problem(cls):
            raise PluginError(f"{where}: {problem}")
        if getattr(cls, "name", None) != self.name:  # runs, caches and reports use both
            raise PluginError(
                f"{where}: {cls.__qualname__}.name is {getattr(cls, 'name', None)!r}; it must "
                f"be the entry-point name '{self.name}'"
            )
        return cls


def _resolve(ep: EntryPoint, where: str) -> object:
    """What `ep` points to (`EntryPoint.load`), with a missing module or attribute as one line.
    An `AttributeError` raised while the module runs stays a traceback: it is a bug in it."""
    try:
        found: object = importlib.import_module(ep.module)
    except ImportError as exc:  # the module, or something it imports, is not installed
        raise PluginError(f"{where}: cannot import {ep.module}: {exc}") from None
    path = ep.module
    for attr in filter(None, (ep.attr or "").split(".")):
        if not hasattr(found, attr):
            raise PluginError(f"{where}: {path} has no attribute '{attr}'")
        found, path = getattr(found, attr), f"{path}.{attr}"
    return found


def method_problem(cls: type[Method]) -> str | None:
    """Why the core cannot use method class `cls`, or None: it leaves an abstract method
    unimplemented, its `Config` is not a dataclass or has a field without a default (a run
    builds it from its defaults and `--set`), or its `compute` names config fields that the
    `Config` lacks (each otherwise a traceback, or an unclear error, at a run)."""
    who = cls.__qualname__
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        return f"{who} does not implement {missing}"
    config = getattr(cls, "Config", None)
    if config is None:
        return f"{who} has no Config: declare its settings as a frozen dataclass, `Config = ...`"
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        return (
            f"{who}.Config ({getattr(config, '__qualname__', config)!s}) is not a dataclass: "
            "declare it with @dataclass(frozen=True)"
        )
    for field in dataclasses.fields(config):  # else a missing argument at the first run
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            return f"{who}.Config.{field.name} has no default: every config field needs one"
    compute = cls.compute
    if compute is None:
        return None
    shape = "{phase: (steps field, batch field)}, as benchmark.method.FINETUNE"
    if not isinstance(compute, dict) or not all(
        isinstance(v, tuple) and len(v) == 2 for v in compute.values()
    ):
        return f"{who}.compute must be {shape}"
    for phase, (_, batch) in compute.items():
        if phase not in ("finetune", "pretrain"):
            return f"{who}.compute: unknown phase '{phase}' (finetune or pretrain)"
        if batch is None and phase != "finetune":
            return f"{who}.compute: only fine-tuning may choose its batch in fit (batch None)"
    fields = {f.name for f in dataclasses.fields(config)}
    named = [f for pair in compute.values() for f in pair if f is not None]
    if missing := [f for f in named if f not in fields]:
        return (
            f"{who}.compute names config field(s) {', '.join(missing)} that {who}.Config "
            f"({config.__qualname__}) lacks: add them (benchmark.supervised.SupervisedConfig "
            "has iterations and batch_size), or name the fields that set its steps and batch"
        )
    return None


def installed_methods() -> dict[str, MethodEntry]:
    """Method name → entry, sorted by name. A name that two distributions register is kept
    with both (its `clash`), so that it is shown and refused, never silently one of them."""
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=GROUP):
        same = found.setdefault(ep.name, [])
        if all(_same_registration(ep) != _same_registration(e) for e in same):
            same.append(ep)
    return {name: MethodEntry(name, tuple(eps)) for name, eps in sorted(found.items())}


def get_method(name: str) -> type[Method]:
    methods = installed_methods()
    if name not in methods:
        raise UnknownMethodError(
            f"unknown method '{name}'{did_you_mean(name, methods)}; "
            f"installed: {', '.join(methods) or 'none'} (see `bench methods`)"
        )
    return methods[name].load()


def generative_methods() -> list[str]:
    """Installed methods that can sample (`GenerativeMethod` subclasses)."""
    names = []
    for name, entry in installed_methods().items():
        try:
            if issubclass(entry.load(), GenerativeMethod):
                names.append(name)
        except Exception:  # a broken plugin must not hide the others
            continue
    return names


def get_generative(name: str) -> type[GenerativeMethod]:
    """The method `name` if it can sample; UnknownMethodError naming those that can."""
    cls = get_method(name)
    if not issubclass(cls, GenerativeMethod):
        can = ", ".join(generative_methods()) or "none installed"
        raise UnknownMethodError(
            f"method '{name}' cannot sample (not generative); methods that can: {can}"
        )
    return cls
