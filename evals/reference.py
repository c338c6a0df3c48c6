"""Published reference numbers (configs/reference/*.yaml) and the suite file (configs/suites/*.yaml).

Pure data loading: YAML in, plain dicts out. No model, no lm-eval, no torch.

Reference rows look like (values in percent, as published)::

    {"table": "A1", "model": "phi-2", "size": "2.7B", "category": "bbh", "value": 59.2,
     "shots": "3 (CoT)", "metric": "category mean", "source": "A1", "url": "https://...",
     "name": "Phi-2"}

Every row has either ``category`` or ``benchmark``. ``url`` and ``name`` are filled in by the loader
from the file's ``sources`` block and from ``models.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from evals.errors import ConfigError
from evals.paths import config_dir

REQUIRED_ROW_KEYS = ("table", "model", "size", "value", "shots", "metric", "source")


@dataclass
class Reference:
    """All published numbers: rows, the sources they cite, the models and blog protocol notes."""

    rows: list[dict]
    sources: dict[str, dict]
    models: dict[str, dict]
    category_protocol: dict[str, dict] = field(default_factory=dict)

    def select(self, table: str | None = None, model: str | None = None) -> list[dict]:
        """Rows of one table and/or one model, in file order."""
        return [r for r in self.rows
                if (table is None or r["table"] == table) and (model is None or r["model"] == model)]

    def categories(self, model: str, table: str = "A1") -> dict[str, float]:
        """``{category: value}`` of one model's row in a category table (default: the blog's Table 1)."""
        return {r["category"]: r["value"] for r in self.select(table, model) if "category" in r}

    def benchmarks(self, model: str, table: str) -> dict[str, float]:
        """``{benchmark: value}`` of one model in a per-benchmark table (A2, A3, ...)."""
        return {r["benchmark"]: r["value"] for r in self.select(table, model) if "benchmark" in r}

    def table_models(self, table: str) -> list[str]:
        """Model slugs of a table, in the order they first appear in the file."""
        seen: list[str] = []
        for r in self.select(table):
            if r["model"] not in seen:
                seen.append(r["model"])
        return seen

    def match_model(self, *names: str | None) -> str | None:
        """The reference model slug one of ``names`` (folder slug, model name, HF id) is an alias of."""
        wanted = {n.strip().lower() for n in names if n}
        for slug in sorted(self.models):
            aliases = {a.lower() for a in self.models[slug].get("aliases", [])} | {slug}
            if wanted & aliases:
                return slug
        return None

    def label(self, slug: str) -> str:
        """Display label of a reference model, e.g. ``Llama-2 7B``."""
        info = self.models.get(slug, {})
        return f"{info.get('name', slug)} {info.get('size', '')}".strip()


def reference_dir() -> Path:
    """configs/reference (follows PHI2EVAL_CONFIG_DIR)."""
    return config_dir() / "reference"


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_reference(ref_dir: Path | str | None = None) -> Reference:
    """Read every YAML file of ``ref_dir`` (default configs/reference) and validate the rows."""
    ref_dir = Path(ref_dir) if ref_dir else reference_dir()
    models_file = ref_dir / "models.yaml"
    if not models_file.is_file():
        raise ConfigError(f"{models_file} is missing: it lists the reference models and their aliases")
    models = _read_yaml(models_file).get("models") or {}
    rows: list[dict] = []
    sources: dict[str, dict] = {}
    protocol: dict[str, dict] = {}
    for path in sorted(ref_dir.glob("*.yaml")):
        if path.name == "models.yaml":
            continue
        data = _read_yaml(path)
        for sid, src in (data.get("sources") or {}).items():
            if sid in sources:
                raise ConfigError(f"{path}: source id {sid!r} is defined twice")
            sources[sid] = dict(src, id=sid, file=path.name)
        protocol.update(data.get("category_protocol") or {})
        for i, row in enumerate(data.get("rows") or []):
            rows.append(_check_row(dict(row), f"{path.name} row {i + 1}"))
    for row in rows:
        src = sources.get(row["source"])
        if src is None or not src.get("url"):
            raise ConfigError(f"reference row {row} cites source {row['source']!r} with no url")
        if row["model"] not in models:
            raise ConfigError(f"reference row {row} names model {row['model']!r}, not in models.yaml")
        row["url"] = src["url"]
        row["name"] = models[row["model"]].get("name", row["model"])
    return Reference(rows=rows, sources=sources, models=models, category_protocol=protocol)


def _check_row(row: dict, where: str) -> dict:
    missing = [k for k in REQUIRED_ROW_KEYS if k not in row]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    if ("category" in row) == ("benchmark" in row):
        raise ConfigError(f"{where}: give exactly one of 'category' or 'benchmark'")
    if not isinstance(row["value"], (int, float)) or isinstance(row["value"], bool):
        raise ConfigError(f"{where}: value {row['value']!r} is not a number")
    row["value"] = float(row["value"])
    return row


def load_suite(name_or_path: str | Path = "phi2") -> dict:
    """Read a suite (configs/suites/<name>.yaml or a path) and check its categories.

    Returns ``{"name", "aggregation", "reference_table", "categories": [{"name", "label",
    "benchmarks": [{"benchmark", "metric"}]}]}``.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = config_dir() / "suites" / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"suite file {path} not found")
    suite = _read_yaml(path)
    cats = suite.get("categories")
    if not isinstance(cats, list) or not cats:
        raise ConfigError(f"{path}: 'categories' must be a non-empty list")
    seen: set[str] = set()
    for cat in cats:
        if not cat.get("name") or not cat.get("benchmarks"):
            raise ConfigError(f"{path}: each category needs a name and benchmarks: {cat}")
        for b in cat["benchmarks"]:
            if not b.get("benchmark") or not b.get("metric"):
                raise ConfigError(f"{path}: category {cat['name']}: entry {b} needs benchmark and metric")
            if b["benchmark"] in seen:
                raise ConfigError(f"{path}: benchmark {b['benchmark']} appears in two categories")
            seen.add(b["benchmark"])
    suite.setdefault("name", path.stem)
    suite.setdefault("reference_table", "A1")
    return suite


def suite_benchmarks(suite: dict) -> list[str]:
    """All benchmark names of a suite, in category order."""
    return [b["benchmark"] for cat in suite["categories"] for b in cat["benchmarks"]]
