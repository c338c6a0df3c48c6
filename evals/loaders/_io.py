"""Small readers shared by the local loaders."""

import csv
import json
from pathlib import Path

from evals.errors import DataError


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file; a bad line raises DataError naming file and line."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg}); restore the original file") from exc
    return rows


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a text file (label files)."""
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def read_csv(path: Path, delimiter: str = ",", header: bool = False) -> list[list[str]] | list[dict]:
    """Rows of a CSV/TSV file: lists, or dicts when `header` is true."""
    with open(path, encoding="utf-8", newline="") as fh:
        if header:
            return list(csv.DictReader(fh, delimiter=delimiter))
        return list(csv.reader(fh, delimiter=delimiter))


def zip_labels(path: Path, rows: list[dict], labels: list[str]) -> None:
    """Check that a label file has one label per row."""
    if len(rows) != len(labels):
        raise DataError(f"{path}: {len(labels)} labels for {len(rows)} rows; restore the original files")
