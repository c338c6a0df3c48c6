"""evals.run's record of where a run happened: the git commit and the CPU."""

import re
import subprocess
from pathlib import Path

from evals import paths, run


def test_git_commit_names_the_checkout():
    """HEAD's full hash, marked dirty only by uncommitted changes outside results/."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True,
                          text=True).stdout.strip()
    got = run.git_commit()
    if not head:  # not a git checkout (an unpacked source tree)
        assert got is None
        return
    assert re.fullmatch(re.escape(head) + r"(\+dirty)?", got)


def test_git_commit_outside_git(monkeypatch, tmp_path):
    """Outside a git checkout there is no commit to name."""
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path)
    assert run.git_commit() is None


def test_cpu_model_is_named():
    """A CPU name from /proc/cpuinfo where Linux has one, and it is in the run's environment."""
    name = run.cpu_model()
    assert isinstance(name, str) and name
    info = Path("/proc/cpuinfo")
    if info.exists() and "model name" in info.read_text():
        assert name != "cpu"
    assert run.environment("cpu")["cpu"] == name
