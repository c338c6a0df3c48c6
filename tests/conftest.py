"""Shared fixtures: fixture data dir, the real data dir and the embedded model (loaded once)."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURE_DATA = Path(__file__).resolve().parent / "fixtures" / "data"


def real_data_dir() -> Path | None:
    """../shared/data (or PHI2EVAL_DATA_DIR) when present, else None."""
    path = Path(os.environ.get("PHI2EVAL_DATA_DIR", REPO.parent / "shared" / "data"))
    return path if (path / "MANIFEST.md").is_file() else None


@pytest.fixture
def fixture_data(monkeypatch) -> Path:
    """Point the loaders at the hand-written fixtures."""
    monkeypatch.setenv("PHI2EVAL_DATA_DIR", str(FIXTURE_DATA))
    return FIXTURE_DATA


@pytest.fixture
def shared_data(monkeypatch) -> Path:
    """Point the loaders at the real benchmark data; skip when it is absent."""
    path = real_data_dir()
    if path is None:
        pytest.skip("real data (../shared/data) not present")
    monkeypatch.setenv("PHI2EVAL_DATA_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def embedded_model():
    """The embedded SmolLM2-135M GGUF, de-quantised once per test session (~20 s)."""
    from evals.models import load_model

    return load_model("smollm2-135m", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def embedded_lm(embedded_model):
    """The default backend around the embedded model (shared by the integration tests)."""
    from evals.backends import DEFAULT_BACKEND, make_lm

    return make_lm(DEFAULT_BACKEND, embedded_model)
