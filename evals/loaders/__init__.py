"""Local loaders: read a benchmark's original release files and return rows in the hub schema.

A loader is `fn(data_dir: Path) -> dict[split, list[dict]]`, registered with the files it reads
(relative to the data dir) so that results can record their sha256 and `phi2eval list` can say
whether the data is present.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Loader:
    """A registered local loader."""

    benchmark: str
    files: tuple[str, ...]
    fn: Callable[[Path], dict]


REGISTRY: dict[str, Loader] = {}
_imported = False


def register(benchmark: str, files: list[str]):
    """Decorator: register `fn(data_dir)` as the local loader of `benchmark`."""

    def wrap(fn):
        REGISTRY[benchmark] = Loader(benchmark, tuple(files), fn)
        return fn

    return wrap


def _import_all() -> None:
    """Import every loader module so that it registers itself."""
    import importlib
    import pkgutil

    global _imported
    _imported = True
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def get(benchmark: str) -> Loader | None:
    """The loader registered for `benchmark`, or None."""
    if not _imported:
        _import_all()
    return REGISTRY.get(benchmark)


def all_loaders() -> dict[str, Loader]:
    """Every registered loader, by benchmark or sub-task name."""
    if not _imported:
        _import_all()
    return dict(REGISTRY)
