"""bench_runner's record fields that say where and at which code a benchmark ran."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_runner  # noqa: E402


def test_git_commit_names_the_checkout():
    """The short hash of HEAD, marked dirty only when evals/ or scripts/ differ from it."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    got = bench_runner.git_commit()
    if not head:  # not a git checkout (an unpacked source tree)
        assert got is None
        return
    assert re.fullmatch(re.escape(head) + r"(\+dirty)?", got)


def test_git_commit_outside_git(monkeypatch, tmp_path):
    """Outside a git checkout there is no commit to name."""
    monkeypatch.setattr(bench_runner, "ROOT", tmp_path)
    assert bench_runner.git_commit() is None


def test_cpu_model_is_named():
    """A CPU name from /proc/cpuinfo where Linux has one."""
    name = bench_runner.cpu_model()
    assert isinstance(name, str) and name
    info = Path("/proc/cpuinfo")
    if info.exists() and "model name" in info.read_text():
        assert name != "cpu"
