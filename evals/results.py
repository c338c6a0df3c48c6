"""Result files: results/<model>/<benchmark>.json plus per-sample JSONL, written atomically."""

import json
import os
import tempfile
from pathlib import Path

SCHEMA = "phi2eval.result/1"


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temp file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def result_path(out_dir: Path, model_slug: str, benchmark: str) -> Path:
    """Where the result of `benchmark` for `model_slug` lives."""
    return Path(out_dir) / model_slug / f"{benchmark}.json"


def write_result(out_dir: Path, model_slug: str, result: dict, samples: list[dict]) -> Path:
    """Write the result JSON and its samples JSONL; a partial run never replaces a complete result.

    Returns the path of the written result (`<benchmark>.partial.json` when a complete result exists
    and this one is partial).
    """
    path = result_path(out_dir, model_slug, result["benchmark"])
    if result.get("partial") and _is_complete(path):
        path = path.with_name(f"{result['benchmark']}.partial.json")
    samples_path = path.with_name(path.name.replace(".json", ".samples.jsonl"))
    result = {**result, "schema": SCHEMA, "samples_file": samples_path.name}
    lines = "".join(json.dumps(s, ensure_ascii=False, default=str) + "\n" for s in samples)
    atomic_write_text(samples_path, lines)
    atomic_write_text(path, json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    return path


def _is_complete(path: Path) -> bool:
    try:
        return not json.loads(path.read_text()).get("partial", True)
    except (OSError, ValueError):
        return False


def read_result(path: Path) -> dict:
    """One result JSON."""
    return json.loads(Path(path).read_text())


def read_results(results_dir: Path) -> list[dict]:
    """Every result JSON under `results_dir` (one folder per model), sorted by model and benchmark."""
    out = []
    for path in sorted(Path(results_dir).glob("*/*.json")):
        if path.name.endswith(".partial.json"):
            continue
        data = json.loads(path.read_text())
        if data.get("schema") == SCHEMA:
            out.append(data)
    return out


def read_samples(result_file: Path) -> list[dict]:
    """The per-sample records that belong to a result file."""
    result_file = Path(result_file)
    name = read_result(result_file).get("samples_file") or result_file.name.replace(".json", ".samples.jsonl")
    with open(result_file.with_name(name), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
