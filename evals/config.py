"""The benchmark registry: the entry YAMLs under configs/tasks, validated before any model loads."""

import dataclasses
import difflib
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from evals import paths
from evals.errors import ConfigError

CATEGORIES = ("bbh", "commonsense", "language", "math", "coding")
PHI2_KEYS = {"category": str, "primary_metric": str, "shots": int, "split": str, "protocol": str, "source": str}
ORDER = ("bbh", "piqa", "winogrande", "arc_easy", "arc_challenge", "siqa", "hellaswag", "openbookqa",
         "mmlu", "squad_v2", "boolq", "gsm8k", "humaneval", "mbpp")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark of the table: its lm-eval task or group and its protocol."""

    name: str
    path: Path
    category: str
    primary_metric: str
    shots: int
    split: str
    protocol: str
    source: str
    subtasks: tuple[str, ...]
    hub_path: str | None

    @property
    def metric_name(self) -> str:
        """The primary metric as result files name it ('acc,none' -> 'acc'; filtered keys stay whole)."""
        return self.primary_metric.removesuffix(",none")

    @property
    def metric_key(self) -> str:
        """The key of the primary metric in lm-eval's results ('acc' -> 'acc,none')."""
        return self.primary_metric if "," in self.primary_metric else f"{self.primary_metric},none"


class _TagLoader(yaml.SafeLoader):
    """A YAML loader that keeps lm-eval's `!function` tags as plain strings."""


_TagLoader.add_multi_constructor("!", lambda loader, suffix, node: f"!{suffix} {loader.construct_scalar(node)}")


def read_yaml(path: Path) -> dict:
    """Parse one config YAML; malformed YAML raises ConfigError naming file and line."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_TagLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: malformed YAML ({getattr(exc, 'problem', exc)}); fix the file") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _validate_phi2(path: Path, block) -> dict:
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: metadata.phi2 must be a mapping with keys {', '.join(PHI2_KEYS)}")
    for key, typ in PHI2_KEYS.items():
        if key not in block:
            raise ConfigError(f"{path}: metadata.phi2 is missing '{key}' ({typ.__name__}); "
                              "docs/DESIGN.md shows the block")
        if not isinstance(block[key], typ):
            raise ConfigError(f"{path}: metadata.phi2.{key} must be {typ.__name__}, got {type(block[key]).__name__}; "
                              "fix the file")
    unknown = set(block) - set(PHI2_KEYS) - {"notes"}
    if unknown:
        raise ConfigError(f"{path}: metadata.phi2 has unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(PHI2_KEYS)}, notes")
    if block["category"] not in CATEGORIES:
        raise ConfigError(f"{path}: metadata.phi2.category {block['category']!r} is not one of {', '.join(CATEGORIES)}")
    return block


# How lm-eval's annotations read in YAML: `!function` tags parse as strings here.
_YAML_TYPES = {"str": (str,), "int": (int,), "bool": (bool,), "float": (float, int), "None": (type(None),),
               "dict": (dict,), "list": (list,), "Callable": (str,), "OutputType": (str,), "FewshotConfig": (dict,)}


@lru_cache(maxsize=1)
def lm_eval_schema() -> dict[str, dict[str, tuple | None]]:
    """{'task' | 'group': {key: allowed YAML types or None (unchecked)}} from lm-eval's TaskConfig/GroupConfig."""
    from lm_eval.api.group import GroupConfig
    from lm_eval.api.task import TaskConfig

    def types(annotation) -> tuple | None:
        out = ()
        for part in _split_union(str(annotation)):
            known = _YAML_TYPES.get(part.split("[", 1)[0].strip())
            if known is None:
                return None
            out += known
        return tuple(dict.fromkeys(out))

    task = {f.name: types(f.type) for f in dataclasses.fields(TaskConfig)}
    for key in ("doc_to_text", "doc_to_target", "doc_to_choice"):  # lm-eval also takes a literal index
        task[key] = tuple(dict.fromkeys((*task[key], int))) if task[key] else None
    group = {f.name: types(f.type) for f in dataclasses.fields(GroupConfig)}
    return {"task": {**task, "include": (str,), "class": (str,)}, "group": {**group, "include": (str,)}}


def _split_union(annotation: str) -> list[str]:
    """'str | list[int | str] | None' -> ['str', 'list[int | str]', 'None'] (top-level '|' only)."""
    parts, depth, cur = [], 0, ""
    for ch in annotation.replace("<class '", "").replace("'>", ""):
        depth += (ch == "[") - (ch == "]")
        if ch == "|" and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return parts + [cur.strip()]


def validate_lm_eval_keys(path: Path, data: dict, template: bool = False) -> None:
    """Top-level keys of a task/group YAML must be lm-eval TaskConfig/GroupConfig fields of the right type."""
    kind = "group" if "group" in data else "task"
    schema = lm_eval_schema()[kind]
    for key, value in data.items():
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"{path}: unknown key '{key}': {hint}a {kind} YAML takes lm-eval's "
                              f"{'GroupConfig' if kind == 'group' else 'TaskConfig'} fields")
        allowed = schema[key]
        if value is not None and allowed is not None and not isinstance(value, allowed):
            names = " or ".join(sorted({t.__name__ for t in allowed} - {"NoneType"}))
            raise ConfigError(f"{path}: key '{key}' must be {names}, got {type(value).__name__} ({value!r:.40}); "
                              "fix the file")
    if not template and "include" not in data and not isinstance(data.get(kind), (str, list)):
        raise ConfigError(f"{path}: missing '{kind}' (the {kind} name lm-eval registers)")


def benchmarks(tasks_dir: Path | None = None) -> dict[str, Benchmark]:
    """Every benchmark (entry YAML with a metadata.phi2 block) under configs/tasks, in table order.

    Every YAML (and `*_yaml` template) is checked against lm-eval's config schema on the way.
    """
    tasks_dir = tasks_dir or paths.tasks_dir()
    found: dict[str, Benchmark] = {}
    for path in sorted(tasks_dir.rglob("*_yaml")):
        validate_lm_eval_keys(path, read_yaml(path), template=True)
    for path in sorted(tasks_dir.rglob("*.yaml")):
        data = read_yaml(path)
        validate_lm_eval_keys(path, data)
        meta = data.get("metadata") or {}
        if not isinstance(meta, dict) or "phi2" not in meta:
            continue
        block = _validate_phi2(path, meta["phi2"])
        name = data.get("group") or data.get("task")
        if not isinstance(name, str):
            raise ConfigError(f"{path}: needs a 'task' or 'group' name")
        subtasks = data.get("task") if "group" in data else []
        kwargs = data.get("dataset_kwargs") or {}
        found[name] = Benchmark(name, path, block["category"], block["primary_metric"], block["shots"],
                                block["split"], block["protocol"], block["source"],
                                tuple(s for s in subtasks if isinstance(s, str)), kwargs.get("hub_path"))
    rank = {n: i for i, n in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def select(names: list[str], table: dict[str, Benchmark] | None = None) -> list[Benchmark]:
    """The benchmarks named on the command line ('all' = every one); unknown names raise ConfigError."""
    table = table if table is not None else benchmarks()
    if not names or names == ["all"]:
        return list(table.values())
    out = []
    for name in names:
        if name not in table:
            close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.4)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ConfigError(f"unknown benchmark {name!r}: {hint}run `phi2eval list` to see them all")
        out.append(table[name])
    return out


def config_sha256(bench: Benchmark) -> str:
    """sha256 over the benchmark's YAML files (entry, sub-tasks and templates in its folder)."""
    digest = hashlib.sha256()
    files = [bench.path] if bench.path.parent == paths.tasks_dir() else sorted(bench.path.parent.rglob("*"))
    for path in files:
        if path.is_file() and not path.name.endswith(".pyc"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
