"""Where the project's configs, results and data live."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_ENV = "PHI2EVAL_DATA_DIR"


def config_dir() -> Path:
    """The configs/ folder (override with PHI2EVAL_CONFIG_DIR)."""
    return Path(os.environ.get("PHI2EVAL_CONFIG_DIR", REPO_ROOT / "configs"))


def tasks_dir() -> Path:
    """The folder of lm-eval task YAMLs."""
    return config_dir() / "tasks"


def data_dir() -> Path | None:
    """The local data folder from PHI2EVAL_DATA_DIR, or None (then data comes from the hub)."""
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser().resolve() if value else None


def default_results_dir() -> Path:
    """results/ at the repository root."""
    return REPO_ROOT / "results"
