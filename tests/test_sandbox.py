"""The sandbox: honest programs pass; hostile ones are contained and reported as failures."""

import os
import socket
import textwrap
import time
from pathlib import Path

import pytest

from evals import sandbox

SANDBOX_UIDS = range(2_000_000, 2_100_000_000)


def run(src: str, **kw) -> sandbox.ExecResult:
    return sandbox.run_program(textwrap.dedent(src), **kw)


def sandbox_processes() -> list[int]:
    """Host pids owned by a sandbox uid (should be none once a run returned)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid in SANDBOX_UIDS:
                    pids.append(int(entry.name))
            except FileNotFoundError:
                pass
    return pids


def test_honest_program_passes():
    result = run("x = sum(range(10))\nprint(x)\nassert x == 45\n")
    assert result.status == "passed", result
    assert result.stdout_tail == "45\n"
    assert result.returncode == 0


def test_failing_assert_is_failed_with_reason():
    result = run("assert 1 + 1 == 3, 'arithmetic'\n")
    assert result.status == "failed"
    assert result.reason == "AssertionError: arithmetic"


def test_syntax_error_is_failed():
    result = run("def f(:\n    pass\n")
    assert result.status == "failed"
    assert "SyntaxError" in result.reason


@pytest.mark.parametrize("exit_call", ["exit(0)", "quit()", "import sys; sys.exit(0)", "import os; os._exit(0)",
                                       "raise SystemExit"])
def test_exit_before_asserts_is_not_a_pass(exit_call):
    result = run(f"{exit_call}\nassert False, 'the tests'\n")
    assert result.status == "failed", result
    assert "before the end" in result.reason


def test_killing_the_parent_is_contained_and_not_a_pass():
    result = run("""
        import os, signal
        try:
            os.kill(os.getppid(), signal.SIGKILL)
        except OSError:
            pass
        try:
            os.kill(-1, signal.SIGKILL)   # everything it may signal: at most its own processes
        except OSError:
            pass
        os._exit(0)
    """)
    assert result.status == "failed", result
    assert os.getppid() > 1  # this test process and its parent survived


def test_infinite_loop_times_out():
    start = time.monotonic()
    result = run("while True:\n    pass\n", timeout_s=1.5)
    assert result.status == "timeout"
    assert time.monotonic() - start < 6


def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock():
    result = run("while True:\n    pass\n", timeout_s=30, cpu_s=1)
    assert result.status == "timeout"
    assert result.reason == "CPU time limit"
    assert result.wall_s < 15


def test_fork_bomb_is_contained():
    start = time.monotonic()
    result = run("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, timeout_s=2, max_procs=32)
    assert result.status in ("timeout", "failed")
    assert time.monotonic() - start < 10
    assert sandbox_processes() == []


def test_huge_allocation_is_refused():
    result = run("x = bytearray(20 * 1024 ** 3)\nassert len(x)\n", memory_mb=512)
    assert result.status == "failed"
    assert "MemoryError" in result.reason


def test_cannot_write_outside_its_dir(tmp_path):
    tmp_path.chmod(0o777)  # even a world-writable folder of the host is out of reach
    target = tmp_path / "escaped.txt"
    result = run(f"""
        open({str(target)!r}, "w").write("escaped")
        open("inside.txt", "w").write("fine")
    """)
    assert result.status == "failed"
    assert not target.exists()
    assert "Error" in result.reason


def test_cannot_delete_files_in_home(tmp_path):
    canaries = [Path.home() / f".phi2eval-canary-{os.getpid()}", tmp_path / "canary.txt"]
    for canary in canaries:
        canary.write_text("alive")
    try:
        result = run(f"""
            import os, shutil
            shutil.rmtree(os.path.expanduser("~"), ignore_errors=True)   # its own home: allowed
            for path in {[str(c) for c in canaries]!r}:
                os.remove(path)
        """)
        assert result.status == "failed"
        assert "Error" in result.reason
        assert all(c.read_text() == "alive" for c in canaries)
    finally:
        canaries[0].unlink()


def test_no_network_to_localhost():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        result = run(f"""
            import socket
            s = socket.create_connection(("127.0.0.1", {port}), timeout=2)
            s.sendall(b"hello")
        """)
        assert result.status == "failed"
        assert "Error" in result.reason
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_environment_secrets_are_not_inherited(monkeypatch):
    monkeypatch.setenv("PHI2EVAL_TEST_SECRET", "hunter2-s3cr3t")
    result = run("""
        import os
        print(sorted(os.environ))
        for pid in os.listdir("/proc"):
            try:
                print(open(f"/proc/{pid}/environ", "rb").read())
            except OSError:
                pass
        assert os.environ.get("PHI2EVAL_TEST_SECRET") == "hunter2-s3cr3t"
    """)
    assert result.status == "failed"
    assert "hunter2" not in result.stdout_tail + result.stderr_tail


def test_runs_as_unprivileged_user_without_network_when_kernel_allows():
    iso = sandbox.isolation()
    if "uid" not in iso or "net" not in iso:
        pytest.skip(f"kernel grants only {sorted(iso)}")
    result = run("""
        import os, socket
        assert os.getuid() != 0 and os.getgid() != 0 and os.getgroups() == []
        assert [name for _, name in socket.if_nameindex()] == ["lo"]
        assert os.getcwd() == os.environ["HOME"]
        open("scratch.txt", "w").write("ok")
    """)
    assert result.status == "passed", result


def test_fallback_without_namespaces_still_blocks_sockets_and_early_exit():
    assert run("assert 2 * 2 == 4\n", namespaces=False).status == "passed"
    blocked = run("import socket\nsocket.socket()\n", namespaces=False)
    assert blocked.status == "failed" and "network is disabled" in blocked.reason
    assert run("import os\nos._exit(0)\nassert False\n", namespaces=False).status == "failed"


def test_run_many_keeps_order_and_runs_in_parallel():
    programs = ["import time\ntime.sleep(0.5)\nassert True\n"] * 4 + ["assert False\n"]
    start = time.monotonic()
    results = sandbox.run_many(programs, workers=4)
    assert [r.status for r in results] == ["passed"] * 4 + ["failed"]
    assert time.monotonic() - start < 1.9  # 4 sleeps of 0.5 s overlapped


def test_kill_uid_sweeps_every_process_of_a_sandbox_uid():
    if os.geteuid() != 0:
        pytest.skip("needs root to start a process as another uid")
    import subprocess

    uid = 2_000_123
    procs = [subprocess.Popen(["sleep", "30"], user=uid, group=uid, extra_groups=[], start_new_session=True)
             for _ in range(2)]
    sandbox._kill_uid(uid)
    assert [p.wait(timeout=5) for p in procs] == [-9, -9]
