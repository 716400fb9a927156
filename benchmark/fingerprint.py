"""The code fingerprint of a run: which code and which package versions made its numbers.

A run is keyed by it (`benchmark.runner.prepare`), so a finished run is reused only by the
same code, and `bench report` does not pool runs of different code unless asked. It has
three parts, joined by `-`, each the first 16 hex digits of a SHA-256:

- **core**: the modules of this package that decide a number (`CORE`, less the FID code in
  `CORE_EXCEPT`): data reading, preprocessing, split and budget draw (`benchmark.data`, its
  `context` included), protocol, metrics, runner and its sanity gate (`benchmark.trust`),
  the shared supervised recipe, validation and selection, compute matching, augmentation,
  the method interface, config parsing, checkpoints and the check of predictions.
  Reporting, storage, the CLI and the sweep driver (`NOT_CORE`) are left out: changing them
  changes no score.
- **method**: the method's own source: its module and every module of the same top-level
  package, or of this project's method packages (`METHOD_PACKAGES`), that it imports,
  directly or not (found by reading the `import` statements, without importing anything),
  with the `__init__.py` files on their way. `mae` covers `baselines/mae.py`,
  `pretrained_unet.py` and `unet_scratch.py`; an edit to `baselines/nnunet/` leaves it
  alone; a plugin that imports `baselines.unet_scratch` covers that file too. Code in
  another top-level module of a plugin's distribution, or read from non-Python files, is
  not covered: keep a plugin's code in its package.
- **packages**: the installed versions of `PACKAGES`.

Files are hashed by their bytes under their module-derived relative path (`benchmark/
runner.py`), sorted: no absolute paths, no modification times, so the fingerprint is the same
in every process and on every machine with the same files. Each part is computed once per
process.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CORE = (
    "benchmark.augment",
    "benchmark.checkpoint",
    "benchmark.compute",
    "benchmark.config",
    "benchmark.data",
    "benchmark.distributed",
    "benchmark.method",
    "benchmark.metrics",
    "benchmark.prediction",
    "benchmark.protocol",
    "benchmark.runner",
    "benchmark.supervised",
    "benchmark.trust",
    "benchmark.validation",
)
"""Core modules and packages (every `.py` file inside) whose code can change a score."""

CORE_EXCEPT = ("benchmark.metrics.generative",)
"""Modules inside a `CORE` package that no segmentation score passes through: FID and its
kin, computed by `bench fidelity` only. An edit to them re-keys no run and no ceiling."""

NOT_CORE = (
    "benchmark.cli",
    "benchmark.errors",
    "benchmark.evaluate",
    "benchmark.fidelity",
    "benchmark.fingerprint",
    "benchmark.processes",
    "benchmark.progress",
    "benchmark.provenance",
    "benchmark.registry",
    "benchmark.report",
    "benchmark.samples",
    "benchmark.store",
    "benchmark.store_schema",
    "benchmark.sweep",
    "benchmark.sweep_local",
    "benchmark.sweep_ray",
    "benchmark.sweep_worker",
)
"""Core modules that cannot change a segmentation score (a test keeps every module of
`benchmark` in exactly one of the two lists, so a new module needs a decision)."""

PACKAGES = (
    "torch",
    "torchvision",
    "monai",
    "segmentation-models-pytorch",
    "nnunetv2",
    "numpy",
    "scipy",
    "nibabel",
)
"""Installed distributions that a run's numbers pass through."""

DIGITS = 16


def _locate(name: str) -> tuple[Path, bool] | None:
    """(source file, is a package) of module `name`, found by path under its top-level
    package's folders; None when no module has that name (an imported attribute). Imports
    the top-level package only, never the module itself."""
    top, *rest = name.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None:
        return None
    if not spec.submodule_search_locations:  # a top-level module
        origin = spec.origin or ""
        return (Path(origin), False) if not rest and origin.endswith(".py") else None
    for location in spec.submodule_search_locations:
        base = Path(location).joinpath(*rest)
        if (base / "__init__.py").is_file():
            return base / "__init__.py", True
        if rest and base.with_suffix(".py").is_file():
            return base.with_suffix(".py"), False
    return None  # an attribute, or a namespace package (no file of its own)


def _module_files(name: str) -> dict[str, Path]:
    """Relative path → file of a module, or of every `.py` file of a package."""
    found = _locate(name)
    if found is None:
        raise ModuleNotFoundError(f"no Python source for module {name!r}")
    path, is_package = found
    prefix = name.replace(".", "/")
    if is_package:
        return {f"{prefix}/{p.relative_to(path.parent).as_posix()}": p
                for p in path.parent.rglob("*.py")}  # fmt: skip
    return {f"{prefix}.py": path}


def _digest(files: dict[str, Path]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + hashlib.sha256(files[rel].read_bytes()).digest())
    return h.hexdigest()[:DIGITS]


def _imports(tree: ast.Module, name: str, is_package: bool) -> set[str]:
    """Absolute names of the modules (or attributes of modules) that `tree` imports."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            found.add(base)
            # `from pkg import mod` imports a submodule; `from mod import name` an attribute,
            # which `_locate` finds no file for.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


METHOD_PACKAGES = ("baselines", "methods")
"""This project's packages of methods: a method's code is followed into them from any package,
so a plugin that builds on `baselines.unet_scratch` is keyed by its source too."""


def plugin_files(module: str) -> dict[str, Path]:
    """Relative path → file of a plugin module and of every module of its top-level package
    (or of `METHOD_PACKAGES`) that it imports, transitively, with the `__init__.py` of each
    package on the way."""
    tops = {module.split(".")[0], *METHOD_PACKAGES}
    files: dict[str, Path] = {}
    todo, seen = [module], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages
        found = _locate(name)
        if found is None:
            continue
        path, is_package = found
        rel = name.replace(".", "/") + ("/__init__.py" if is_package else ".py")
        files[rel] = path
        tree = ast.parse(path.read_bytes(), filename=str(path))
        todo.extend(n for n in _imports(tree, name, is_package) if n.split(".")[0] in tops)
    return files


@cache
def source_digest(*modules: str) -> str:
    """Digest of the source files of `modules` (a package: every `.py` file in it), for a
    cache keyed by the code that builds it (the phantom, the slice store)."""
    return _digest({rel: path for name in modules for rel, path in _module_files(name).items()})


def core_files() -> dict[str, Path]:
    """Relative path → file of every core module that can change a score (`CORE`, less
    `CORE_EXCEPT`)."""
    left_out = {rel for name in CORE_EXCEPT for rel in _module_files(name)}
    return {
        rel: path
        for name in CORE
        for rel, path in _module_files(name).items()
        if rel not in left_out
    }


@cache
def core_digest() -> str:
    return _digest(core_files())


def method_digest(module: str) -> str:
    # Cached by where the module is found too: a name can point at another folder later in
    # one process (a plugin installed elsewhere, or the same-named packages of tests).
    found = _locate(module)
    return _method_digest(module, str(found[0]) if found else "")


@cache
def _method_digest(module: str, _where: str) -> str:
    return _digest(plugin_files(module))


def _installed(name: str) -> str:
    """`name==version` of an installed distribution, or `name==not installed`."""
    try:
        return f"{name}=={version(name)}"
    except PackageNotFoundError:
        return f"{name}==not installed"


@cache
def packages_digest() -> str:
    text = "\n".join(_installed(name) for name in sorted(PACKAGES))
    return hashlib.sha256(text.encode()).hexdigest()[:DIGITS]


def scoring_code() -> str:
    """The parts of every run's fingerprint that score a prediction, `core-packages`: what a
    ceiling (the ground truth resized and scored as a prediction) is keyed by."""
    return f"{core_digest()}-{packages_digest()}"


def scoring_part(fingerprint: str) -> str:
    """A run's `core-method-packages` fingerprint → its `core-packages` part."""
    core, _, rest = fingerprint.partition("-")
    return f"{core}-{rest.partition('-')[2]}"


FIDELITY_CODE = ("benchmark.metrics.generative", "benchmark.fidelity")
"""The modules that sample and score generative quality (`bench fidelity`)."""


@cache
def _fidelity_digest() -> str:
    text = f"{source_digest(*FIDELITY_CODE)}\n{_installed('torch-fidelity')}"
    return hashlib.sha256(text.encode()).hexdigest()[:DIGITS]


def fidelity_code(module: str) -> str:
    """`core-method-packages-fidelity`: the fingerprint of the generative method defined in
    `module` (which samples), and a fourth part for the FID code and torch-fidelity's version
    (which score the samples)."""
    return f"{code_fingerprint(module)}-{_fidelity_digest()}"


def code_fingerprint(module: str) -> str:
    """`core-method-packages` of the method defined in `module` (see the module docstring)."""
    return f"{core_digest()}-{method_digest(module)}-{packages_digest()}"
