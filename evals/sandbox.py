"""Run untrusted Python source in a child process with limits. Knows no benchmark.

`run_program(source)` runs `source` as a fresh `python -I -` child and says whether it ran to its
end. A per-run random nonce is appended to the source; the program passes only if the nonce arrives
on a private pipe (fd 3) AND the child exits 0, so `exit(0)`, `os._exit(0)` or a killed parent before
the last line is a failure, never a pass. (Code written on purpose to find and print the nonce,
e.g. by inspecting its own frames, could forge it; the guard is against premature exits.)

Layers of isolation (each applied where the kernel allows; `isolation()` says which were):
  * a bootstrap process (root) unshares new mount, network, PID, IPC and UTS namespaces:
    a network with only a down loopback; a private tmpfs on /tmp, /var/tmp and /dev/shm (the
    working dir lives there and vanishes with the namespace); a fresh /proc and /sys; folders
    closed to other users (/root) are covered by an empty tmpfs, the interpreter re-exposed read-only;
  * the program runs as a fresh unprivileged uid/gid (random, 2e6..2.1e9) with no groups, so it
    cannot write root's files, signal the harness, and RLIMIT_NPROC counts only its own processes;
    non-root harness: a user namespace instead (then RLIMIT_NPROC counts the caller's processes);
  * rlimits: CPU, address space, processes, file size, open files, no core dumps;
  * an empty environment (PATH, HOME=TMPDIR=work dir, LANG, *_NUM_THREADS=1) and `python -I`
    (no user site, no PYTHON* variables);
  * its own session; on timeout the PID namespace's init is SIGKILLed, which kills everything
    inside, then the process group; without a PID namespace every process of the uid is killed;
  * without a network namespace a preamble replaces socket.socket (weak, last resort).
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Iterable

TAIL_BYTES = 2000


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program: status is 'passed' | 'failed' | 'timeout' | 'error'.

    'failed': the program ran but did not reach its end with exit code 0 (an assertion, any
    exception, an early exit, a signal); 'timeout': wall-clock or CPU limit; 'error': the sandbox
    itself could not run the program (the program's fault is never 'error').
    """

    status: str
    reason: str
    returncode: int | None
    stdout_tail: str
    stderr_tail: str
    wall_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return asdict(self)


# --- the bootstrap: runs as `python -I -S -c BOOT <json>` in a new session, stdin = the program ---
_BOOT = r'''
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
if cfg["fd"] != 3:
    os.dup2(cfg["fd"], 3)
    os.close(cfg["fd"])
libc = ctypes.CDLL(None, use_errno=True)
NEWNS, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET = 0x20000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18

def call(rc):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))

def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None
    call(libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)))

root = os.geteuid() == 0
uid, gid = (cfg["uid"], cfg["gid"]) if root and cfg["uid"] is not None else (os.getuid(), os.getgid())
iso = []
want = cfg["namespaces"]
attempts = [(NEWNS | NEWNET | NEWPID | NEWIPC | NEWUTS, ["mount", "net", "pid", "ipc", "uts"]),
            (NEWNET, ["net"])] if want else []
for flags, names in attempts:
    try:
        call(libc.unshare((flags if root else flags | NEWUSER)))
    except OSError:
        continue
    if not root:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as fh:
                fh.write(text)
        iso.append("userns")
    iso += names
    break

work = cfg["workdir"]
if "mount" in iso:
    mount(None, "/", None, REC | PRIVATE)
    # the interpreter's directories, re-exposed if an ancestor is closed to other users (/root)
    # (and any under /tmp, /var/tmp or /dev/shm, which the private tmpfs below would cover)
    keep, hide = [], set()
    covered = ("/tmp/", "/var/tmp/", "/dev/shm/")
    for path in cfg["keep"]:
        if (path + "/").startswith(covered):
            keep.append((path, os.open(path, os.O_PATH)))
            continue
        if not root:
            continue
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            anc = "/" + "/".join(parts[:i])
            if not os.stat(anc).st_mode & 0o001:
                keep.append((path, os.open(path, os.O_PATH)))
                hide.add(anc)
                break
    size = f"size={cfg['tmpfs_mb']}m"
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(d):
            mount("tmpfs", d, "tmpfs", NOSUID | NODEV, f"{size},mode=1777")
    for anc in sorted(hide):
        mount("tmpfs", anc, "tmpfs", NOSUID | NODEV, "size=1m,mode=0755")
    for path, fd in keep:
        os.makedirs(path, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, None, BIND | REC)
        mount(None, path, None, REMOUNT | BIND | RDONLY)
        os.close(fd)
    work = "/tmp/work"
    os.mkdir(work, 0o700)

def reachable(path):  # can any user reach `path`?
    parts = path.strip("/").split("/")
    return all(os.stat("/" + "/".join(parts[:i])).st_mode & 0o001 for i in range(1, len(parts)))

switch = root and cfg["uid"] is not None and ("mount" in iso or all(reachable(p) for p in cfg["keep"]))
if not switch:
    uid, gid = os.getuid(), os.getgid()
os.chown(work, uid, gid)

def code_of(status):
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code

def limits():
    lim = cfg["limits"]
    for res, value in ((resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1)),
                       (resource.RLIMIT_AS, (lim["as_bytes"],) * 2),
                       (resource.RLIMIT_NPROC, (lim["nproc"],) * 2),
                       (resource.RLIMIT_FSIZE, (lim["fsize_bytes"],) * 2),
                       (resource.RLIMIT_NOFILE, (lim["nofile"],) * 2),
                       (resource.RLIMIT_CORE, (0, 0))):
        resource.setrlimit(res, value)

os.set_inheritable(3, True)
init = os.fork()
if init == 0:
    try:
        if "pid" in iso and "mount" in iso:
            mount("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC)
            try:  # sysfs of the new network namespace (shows only lo)
                mount("sysfs", "/sys", "sysfs", RDONLY | NOSUID | NODEV | NOEXEC)
            except OSError:
                pass
        if "uts" in iso:
            call(libc.sethostname(b"sandbox", 7))
        if switch:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            iso.append("uid")
        call(libc.prctl(1, signal.SIGKILL))  # PR_SET_PDEATHSIG, after the uid change (it clears it)
        os.chdir(work)
        os.closerange(4, 1 << 16)
        limits()
        os.write(3, ("iso:" + ",".join(iso) + "\n").encode())
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        argv = [cfg["python"], "-I", "-"]
        if "pid" not in iso:
            os.execve(argv[0], argv, env)
        child = os.fork()  # this process is the namespace's init; the program runs as its child
        if child == 0:
            os.execve(argv[0], argv, env)
        os.close(0)
        while True:
            pid, status = os.wait()
            if pid == child:
                os._exit(code_of(status))  # init exits: the kernel kills the rest of the namespace
    except BaseException as exc:
        os.write(2, f"sandbox setup failed: {exc!r}\n".encode())
        os._exit(125)
os.close(0)
os.close(3)
signal.signal(signal.SIGTERM, lambda *_: os.kill(init, signal.SIGKILL))  # the harness's timeout
_, status = os.waitpid(init, 0)
os._exit(code_of(status))
'''

_NO_SOCKET = """import socket as _s
def _no_net(*a, **k):
    raise OSError(101, 'network is disabled in the sandbox')
_s.socket = _s.create_connection = _s.socketpair = _no_net
del _s, _no_net
"""

_SIGNALS = {signal.SIGXCPU: "CPU time limit", signal.SIGXFSZ: "file size limit",
            signal.SIGKILL: "killed (SIGKILL)", signal.SIGSEGV: "segmentation fault",
            signal.SIGABRT: "aborted", signal.SIGTERM: "terminated (SIGTERM)"}


def _id_ranges(path: str) -> list[tuple[int, int]]:
    """[lo, hi) ranges of ids usable as sandbox ids (2e6..2.1e9) that this user namespace maps."""
    out = []
    try:
        with open(path) as fh:
            for line in fh:
                inside, _, count = map(int, line.split())
                lo, hi = max(inside, 2_000_000), min(inside + count, 2_100_000_000)
                if hi - lo >= 1000:
                    out.append((lo, hi))
    except (OSError, ValueError):
        return []
    return out


def _sandbox_uid() -> int | None:
    """A random unused-looking uid (also a mapped gid) for one run, or None where the harness is not
    root or its user namespace maps no such id (then the program keeps the harness's uid)."""
    if os.geteuid() != 0:
        return None
    gids = _id_ranges("/proc/self/gid_map")
    ranges = [(max(lo, glo), min(hi, ghi)) for lo, hi in _id_ranges("/proc/self/uid_map")
              for glo, ghi in gids if min(hi, ghi) - max(lo, glo) >= 1000]
    if not ranges:
        return None
    lo, hi = random.SystemRandom().choice(ranges)
    return random.SystemRandom().randrange(lo, hi)


def _tail(path: str) -> str:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - TAIL_BYTES))
        return fh.read().decode("utf-8", "replace")


def _read_pipe(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass  # a straggler still holds the write end; what arrived is what counts
    return b"".join(chunks)


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid` (used when no PID namespace holds them)."""
    kill = shutil.which("kill", path="/usr/bin:/bin")
    if kill:  # kill(-1) as the uid: every process it owns (never the caller itself)
        subprocess.run([kill, "-9", "-1"], user=uid, group=uid, extra_groups=[], env={},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=30)


def _last_error_line(stderr: str) -> str:
    for line in reversed(stderr.strip().splitlines()):
        line = line.strip()
        if line and not line.startswith(("File ", "^", "~")):
            return line[:300]
    return ""


def _classify(rc: int, nonce_seen: bool, timed_out: bool, timeout_s: float, stderr: str) -> tuple[str, str]:
    if timed_out:
        return "timeout", f"wall-clock limit of {timeout_s:g}s"
    if rc == 0 and nonce_seen:
        return "passed", ""
    sig = rc - 128 if rc > 128 else None
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and "CPU" in stderr):
        return "timeout", "CPU time limit"
    if rc == 125 and "sandbox setup failed" in stderr:
        return "error", _last_error_line(stderr)
    last = _last_error_line(stderr)
    if sig in _SIGNALS:
        return "failed", _SIGNALS[sig] + (f"; {last}" if last else "")
    if rc == 0:
        return "failed", "exited with code 0 before the end of the tests"
    return "failed", last or f"exit code {rc}"


def run_program(source: str, timeout_s: float = 10, memory_mb: int = 1024, max_procs: int = 64,
                max_file_mb: int = 64, cpu_s: float | None = None, namespaces: bool = True) -> ExecResult:
    """Run Python `source` in a sandboxed child; passed only if it ran to its end and exited 0.

    `timeout_s` is the wall-clock limit, `cpu_s` the CPU-time limit of each process (default
    `timeout_s`; CPU time does not grow with the machine's load, wall time does).
    `namespaces=False` skips the kernel namespaces (tests of the fallback only).
    """
    iso = isolation() if namespaces else set()
    nonce = secrets.token_hex(16)
    preamble = "" if "net" in iso else _NO_SOCKET
    program = f"{preamble}{source}\n\n__import__('os').write(3, b'{nonce}\\n')\n"
    private = tempfile.mkdtemp(prefix="phi2sbx-")  # root-only: program, outputs
    uid = _sandbox_uid()
    try:
        work = os.path.join(private, "work")  # used only without a mount namespace
        os.mkdir(work, 0o700)
        os.chmod(private, 0o711)
        paths = {name: os.path.join(private, name) for name in ("program.py", "stdout", "stderr")}
        with open(paths["program.py"], "w", encoding="utf-8") as fh:
            fh.write(program)
        cfg = {"uid": uid, "gid": uid, "namespaces": namespaces, "workdir": work, "python": sys.executable,
               "keep": sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}),
               "tmpfs_mb": max(max_file_mb * 2, 16),
               "limits": {"cpu_s": max(1, math.ceil(cpu_s or timeout_s)), "as_bytes": memory_mb << 20,
                          "nproc": max_procs, "fsize_bytes": max_file_mb << 20, "nofile": 256}}
        read_fd, write_fd = os.pipe()
        cfg["fd"] = write_fd  # the bootstrap moves it to fd 3
        start = time.monotonic()
        with open(paths["program.py"], "rb") as stdin, open(paths["stdout"], "wb") as out, \
                open(paths["stderr"], "wb") as err:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _BOOT, json.dumps(cfg)],
                    stdin=stdin, stdout=out, stderr=err, pass_fds=(write_fd,), cwd=private,
                    env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
            except OSError as exc:
                os.close(read_fd)
                os.close(write_fd)
                return ExecResult("error", f"cannot start sandbox: {exc}", None, "", "", 0.0)
            os.close(write_fd)
            timed_out = False
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.terminate()  # the bootstrap SIGKILLs the namespace's init and reaps it
                try:
                    rc = proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    _killpg(proc.pid)
                    rc = proc.wait()
            _killpg(proc.pid)  # stragglers in the group (none with a PID namespace)
            signal_out = _read_pipe(read_fd)
            os.close(read_fd)
            applied = signal_out.split(b"\n", 1)[0].decode("ascii", "replace").removeprefix("iso:").split(",")
            if "pid" not in applied and "uid" in applied and uid is not None:
                _kill_uid(uid)
        wall = time.monotonic() - start
        stdout, stderr = _tail(paths["stdout"]), _tail(paths["stderr"])
        started = signal_out.startswith(b"iso:")
        rc = 128 - rc if rc < 0 else rc
        if not started and not timed_out:
            return ExecResult("error", "sandbox did not start: " + (_last_error_line(stderr) or f"exit {rc}"),
                              rc, stdout, stderr, wall)
        status, reason = _classify(rc, f"\n{nonce}\n".encode() in b"\n" + signal_out, timed_out, timeout_s,
                                   stderr)
        return ExecResult(status, reason, rc, stdout, stderr, round(wall, 4))
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_many(programs: Iterable[str], workers: int | None = None, **limits) -> list[ExecResult]:
    """Run many programs in parallel (each its own sandboxed child); results in input order.

    The pool holds threads that only wait on their child processes; `workers` defaults to the CPU
    count. `limits` are passed to `run_program`.
    """
    programs = list(programs)
    workers = max(1, workers or os.cpu_count() or 1)
    if not programs:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda src: run_program(src, **limits), programs))


@lru_cache(maxsize=1)
def isolation() -> frozenset[str]:
    """The isolation layers this kernel grants, probed once: subset of mount, net, pid, ipc, uts,
    userns, uid (an empty set means rlimits, process groups and the socket preamble only)."""
    read_fd, write_fd = os.pipe()
    uid = _sandbox_uid()
    cfg = {"uid": uid, "gid": uid, "namespaces": True, "python": sys.executable, "tmpfs_mb": 16,
           "keep": sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}),
           "limits": {"cpu_s": 10, "as_bytes": 1 << 30, "nproc": 64, "fsize_bytes": 1 << 20, "nofile": 256}}
    cfg["fd"] = write_fd
    with tempfile.TemporaryDirectory(prefix="phi2sbx-probe-") as work:
        cfg["workdir"] = work
        proc = subprocess.run([sys.executable, "-I", "-S", "-c", _BOOT, json.dumps(cfg)], input=b"pass\n",
                              capture_output=True, pass_fds=(write_fd,), env={"PATH": "/usr/bin:/bin"},
                              start_new_session=True, timeout=60, check=False)
    os.close(write_fd)
    line = _read_pipe(read_fd).decode().splitlines()
    os.close(read_fd)
    if proc.returncode != 0 or not line or not line[0].startswith("iso:"):
        return frozenset()
    return frozenset(x for x in line[0][4:].split(",") if x)
