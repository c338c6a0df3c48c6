"""Resume: a run killed with SIGKILL and started again reuses every finished request (evals/cache.py)."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LIMIT = 25
TOTAL = 100  # arc_easy: 4 choices per question in the first 25 test questions


# Phi-2's 32 layers at an eighth of its width, random (seeded) weights: loads in 11 s where the
# embedded model's GGUF file takes 30 s to dequantise (three loads here), and a request still
# takes tens of milliseconds, so the kill lands part-way
MODEL, MODEL_DIR = "random:phi-2-narrow", "random-phi-2-narrow"


def command(out: Path) -> list[str]:
    return [sys.executable, "-m", "evals.cli", "run", "arc_easy", "--limit", str(LIMIT), "--batch-size", "1",
            "--backend", "hf",  # one request at a time, so the kill lands part-way
            "--model", MODEL, "--device", "cpu", "--output-dir", str(out)]


def cached_rows(cache_dir: Path) -> int:
    """Rows committed in the (single) cache file, as another process sees them."""
    total = 0
    for path in cache_dir.glob("*.sqlite"):
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
                total += db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        except sqlite3.OperationalError:  # created but no table yet
            pass
    return total


def read(out: Path) -> tuple[dict, list[dict]]:
    folder = out / MODEL_DIR
    result = json.loads((folder / "arc_easy.json").read_text())
    samples = [json.loads(line) for line in (folder / "arc_easy.samples.jsonl").read_text().splitlines()]
    return result, samples


@pytest.mark.integration
@pytest.mark.slow
def test_a_killed_run_resumes_without_recomputing(tmp_path):
    from tests.conftest import real_data_dir

    data = real_data_dir()
    if data is None:
        pytest.skip("real data (../shared/data) not present")
    env = {**os.environ, "PHI2EVAL_DATA_DIR": str(data), "OMP_NUM_THREADS": "1", "PHI2EVAL_CACHE_COMMIT": "4"}

    # the reference: one uninterrupted run with its own empty cache
    ref = subprocess.run(command(tmp_path / "ref"), cwd=REPO, env={**env, "PHI2EVAL_CACHE_DIR": str(tmp_path / "c0")},
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    r0, s0 = read(tmp_path / "ref")
    assert r0["cache"] == {"hits": 0, "misses": TOTAL, "enabled": True}

    # the same command, killed with SIGKILL once some requests are committed
    cache_dir = tmp_path / "c1"
    env1 = {**env, "PHI2EVAL_CACHE_DIR": str(cache_dir)}
    proc = subprocess.Popen(command(tmp_path / "out"), cwd=REPO, env=env1,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while cached_rows(cache_dir) < 8 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = cached_rows(cache_dir)
    assert 0 < before < TOTAL, f"kill came too late or too early: {before} rows of {TOTAL}"
    assert not (tmp_path / "out" / MODEL_DIR / "arc_easy.json").exists()

    # started again: every committed request is reused, only the rest is computed
    again = subprocess.run(command(tmp_path / "out"), cwd=REPO, env=env1, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    r1, s1 = read(tmp_path / "out")
    assert r1["cache"]["hits"] == before
    assert r1["cache"]["misses"] == TOTAL - before
    assert r1["cache"]["hits"] + r1["cache"]["misses"] == TOTAL
    assert cached_rows(cache_dir) == TOTAL
    assert [s["loglikelihoods"] for s in s1] == [s["loglikelihoods"] for s in s0]
    assert s1 == s0
    assert (r1["score"], r1["stderr"], r1["metrics"]) == (r0["score"], r0["stderr"], r0["metrics"])
    print(f"resume: {before} of {TOTAL} requests cached at the kill; restart hits={r1['cache']['hits']} "
          f"misses={r1['cache']['misses']}")
