"""The method registry: every method, built-in or third-party, comes from one entry-point group.

Built-ins are declared in this project's `pyproject.toml` under
`[project.entry-points."labelbench.methods"]`, exactly as a plugin package declares its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from benchmark.errors import UnknownMethodError, did_you_mean
from benchmark.method import GenerativeMethod, Method

GROUP = "labelbench.methods"


@dataclass(frozen=True)
class MethodEntry:
    name: str
    entry_point: EntryPoint

    @property
    def distribution(self) -> str:
        dist = self.entry_point.dist
        return f"{dist.name} {dist.version}" if dist is not None else "?"

    def load(self) -> type[Method]:
        cls = self.entry_point.load()
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise UnknownMethodError(
                f"entry point '{self.name}' = {self.entry_point.value} is not a Method subclass"
            )
        return cls


def installed_methods() -> dict[str, MethodEntry]:
    """Method name → entry, sorted by name."""
    found = {ep.name: MethodEntry(ep.name, ep) for ep in entry_points(group=GROUP)}
    return dict(sorted(found.items()))


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
