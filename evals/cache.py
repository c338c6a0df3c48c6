"""Persistent request cache: every finished lm-eval request in SQLite, so an interrupted run resumes.

One file per model under the cache dir (`.cache/phi2eval/` in the repository, or $PHI2EVAL_CACHE_DIR),
named by a hash of what decides a model's answers: its fingerprint, dtype, backend, context length and
default generation length. A row is keyed by a hash of the request (type + arguments), so the cache
does not depend on the number of processes or on batching. Rows are committed every
`COMMIT_EVERY` finished requests while a run goes on (the backends report each answer through
lm-eval's cache hook), so even `kill -9` loses at most one small chunk.

A file that is not a readable SQLite cache is reported in one line, moved aside
(`<name>.corrupt-<time>`) and rebuilt.

Truncation rule (lm-eval's HFLM, which the `fast` backend copies): a log-likelihood request whose
context + continuation is longer than max_length + 1 tokens loses tokens from the left of the
context; a generation request whose prompt is longer than max_length - max_gen_toks is cut from the
left. `CachedLM` counts such requests (stored with each row, so resumed runs count them too).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

from lm_eval.api.model import LM

from evals import paths
from evals.errors import CacheError

CACHE_DIR_ENV = "PHI2EVAL_CACHE_DIR"
COMMIT_ENV = "PHI2EVAL_CACHE_COMMIT"
COMMIT_EVERY = 16
FORMAT = "phi2eval.cache/1"
REQUEST_TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until")


def cache_dir(override: Path | None = None) -> Path:
    """The cache folder: `override`, else $PHI2EVAL_CACHE_DIR, else .cache/phi2eval in the repository."""
    if override is not None:
        return Path(override).expanduser()
    value = os.environ.get(CACHE_DIR_ENV)
    return Path(value).expanduser() if value else paths.REPO_ROOT / ".cache" / "phi2eval"


def model_identity(info: dict, backend: str, max_length: int | None, max_gen_toks: int | None) -> dict:
    """What decides a model's answers to a request (the cache file is chosen by its hash).

    The fingerprint of a hub model without a known commit, or of a local folder, is a hash of its
    config only, so the id is added, and for a folder the names, sizes and mtimes of its weight files.
    """
    identity = {"fingerprint": info.get("fingerprint"), "id": info.get("id") or info.get("name"),
                "dtype": info.get("dtype"), "backend": backend, "max_length": max_length, "max_gen_toks": max_gen_toks}
    if info.get("source") == "folder" and info.get("path"):
        identity["weights"] = weights_stamp(Path(info["path"]))
    return identity


def weights_stamp(folder: Path) -> str:
    """sha256 over (name, size, mtime) of the weight files in a model folder (cheap; no file is read)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*")):
        if path.suffix in (".safetensors", ".bin", ".pt", ".gguf") and path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def cache_file(directory: Path, identity: dict) -> Path:
    """The cache file of one model identity."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    return Path(directory) / f"{digest}.sqlite"


def request_key(request_type: str, args) -> str:
    """sha256 of the request type and its arguments (dict keys sorted, tuples as lists)."""
    text = json.dumps([request_type, *args], sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RequestCache:
    """An SQLite table {request key: answer (JSON), truncated flag}, written in small transactions.

    Rows wait in memory until `commit_every` of them are ready (or `commit()`), so a killed run loses
    at most that many; several processes may share the file (WAL mode, writers wait for each other).
    """

    def __init__(self, path: Path, identity: dict | None = None, warn=print, commit_every: int | None = None):
        """Open (or create) the cache at `path`; a corrupt file is reported with `warn`, moved aside, rebuilt."""
        self.path = Path(path)
        self.commit_every = commit_every or int(os.environ.get(COMMIT_ENV, COMMIT_EVERY))
        self.pending: list[tuple] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = self._open(identity)
        except sqlite3.OperationalError as exc:  # locked, unwritable, ...: the file itself may be fine
            raise CacheError(f"request cache {self.path}: {exc}; pass --cache-dir on a writable local disk "
                             "or --no-cache") from exc
        except sqlite3.DatabaseError as exc:  # not a database, malformed pages, unknown format
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                try:
                    os.replace(src, f"{aside}{suffix}")
                except FileNotFoundError:  # another process moved it first
                    pass
            warn(f"phi2eval: request cache {self.path} is corrupt ({exc}); moved aside to {aside.name}, rebuilding it")
            self.db = self._open(identity)

    def _open(self, identity: dict | None) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=120, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {check}")
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, type TEXT NOT NULL, "
                       "value TEXT NOT NULL, truncated INTEGER NOT NULL DEFAULT 0)")
            fmt = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            if fmt is not None and fmt[0] != FORMAT:
                raise sqlite3.DatabaseError(f"unknown format {fmt[0]!r}")
            if fmt is None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (FORMAT,))
            if identity is not None:
                db.execute("INSERT OR IGNORE INTO meta VALUES ('identity', ?)", (json.dumps(identity, sort_keys=True),))
        except BaseException:
            db.close()
            raise
        return db

    def get_many(self, keys: list[str]) -> dict[str, tuple]:
        """{key: (answer, truncated)} for the keys present."""
        found = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, typ, value, truncated in self.db.execute(
                    f"SELECT key, type, value, truncated FROM requests WHERE key IN ({marks})", chunk):
                found[key] = (decode(typ, value), bool(truncated))
        return found

    def put(self, key: str, request_type: str, answer, truncated: bool) -> None:
        """Store one answer; commits every `commit_every` rows."""
        self.pending.append((key, request_type, json.dumps(answer), int(truncated)))
        if len(self.pending) >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        """Write the buffered rows in one short transaction (other processes wait for it, not fail)."""
        if not self.pending:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?)", self.pending)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        self.pending = []

    def rows(self) -> int:
        """Number of cached requests."""
        return self.db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]

    def close(self) -> None:
        """Commit and close."""
        if self.db is not None:
            self.commit()
            self.db.close()
            self.db = None


def decode(request_type: str, value: str):
    """A stored answer back in the type the backend returned (loglikelihood: (float, bool))."""
    answer = json.loads(value)
    if request_type == "loglikelihood":
        return float(answer[0]), bool(answer[1])
    return answer


def is_truncated(lm, request_type: str, args) -> bool:
    """Whether the HFLM rule cuts this request from the left (see the module docstring)."""
    max_length = getattr(lm, "max_length", None)
    if not isinstance(max_length, int) or not hasattr(lm, "tok_encode"):
        return False
    if request_type == "loglikelihood":
        context, continuation = args[0], args[1]
        if _bytes(context + continuation) + 2 <= max_length + 1:  # a token covers >= 1 byte: fits for sure
            return False
        if context == "":
            return 1 + len(lm.tok_encode(continuation, add_special_tokens=False)) > max_length + 1
        if not hasattr(lm, "_encode_pair"):
            return False
        ctx, cont = lm._encode_pair(context, continuation)
        return len(ctx) + len(cont) > max_length + 1
    if request_type == "generate_until":
        context, kwargs = args[0], (args[1] if len(args) > 1 and isinstance(args[1], dict) else {})
        max_gen = kwargs.get("max_gen_toks") or getattr(lm, "max_gen_toks", 256)
        if _bytes(context) + 2 <= max_length - int(max_gen):
            return False
        return len(lm.tok_encode(context)) > max_length - int(max_gen)
    return False  # rolling log-likelihood uses windows, nothing is cut


def _bytes(text: str) -> int:
    return len(text.encode("utf-8"))


class CachedLM(LM):
    """An lm-eval LM that answers from a `RequestCache` and sends only the misses to `inner`.

    Counts `hits`, `misses` (unique requests per call) and `truncated`. With `cache=None` it only
    counts (for `--no-cache`).
    """

    def __init__(self, inner: LM, cache: RequestCache | None):
        super().__init__()
        self.inner, self.cache = inner, cache
        self.hits = self.misses = self.truncated = 0
        self._pending: dict[str, tuple[str, bool]] = {}
        if cache is not None:
            inner.set_cache_hook(self)  # the backends call add_partial() as each request finishes

    def counts(self) -> dict:
        """{'hits', 'misses', 'truncated'} so far."""
        return {"hits": self.hits, "misses": self.misses, "truncated": self.truncated}

    def add_partial(self, request_type: str, args, answer) -> None:
        """lm-eval's cache hook: store an answer as soon as the backend has it."""
        key = request_key(request_type, args)
        entry = self._pending.pop(key, None)
        if entry is not None and self.cache is not None:
            self.cache.put(key, request_type, answer, entry[1])

    def _run(self, request_type: str, requests: list) -> list:
        keys = [request_key(request_type, r.args) for r in requests]
        # sampled generations differ on purpose between calls: never cached, never deduplicated
        sampled = {i for i, r in enumerate(requests)
                   if request_type == "generate_until" and len(r.args) > 1 and r.args[1].get("do_sample")}
        found = self.cache.get_many(sorted(set(keys))) if self.cache is not None else {}
        todo: dict[str, int] = {}  # key (or index of a sampled request) -> index of the request to compute
        for i, key in enumerate(keys):
            if i in sampled:
                todo[f"sampled:{i}"] = i
            elif key not in found and key not in todo:
                todo[key] = i
        hit_keys = {k for k in keys if k in found}
        flags = {k: is_truncated(self.inner, request_type, requests[i].args) for k, i in todo.items()}
        self.hits += len(hit_keys)
        self.misses += len(todo)
        self.truncated += sum(flags.values()) + sum(found[k][1] for k in hit_keys)
        self._pending = {k: (request_type, flags[k]) for k in todo if not k.startswith("sampled:")}
        try:
            answers = getattr(self.inner, request_type)([requests[i] for i in todo.values()]) if todo else []
            computed = dict(zip(todo, answers, strict=True))
            if self.cache is not None:
                for key in list(self._pending):  # backends that do not report through the hook
                    self.add_partial(request_type, requests[todo[key]].args, computed[key])
        finally:
            self._pending = {}
            if self.cache is not None:
                self.cache.commit()
        return [computed[f"sampled:{i}"] if i in sampled else found[k][0] if k in found else computed[k]
                for i, k in enumerate(keys)]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        """Cached lm-eval loglikelihood."""
        return self._run("loglikelihood", requests)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        """Cached lm-eval loglikelihood_rolling."""
        return self._run("loglikelihood_rolling", requests)

    def generate_until(self, requests, disable_tqdm: bool = False):
        """Cached lm-eval generate_until (sampled generations are never cached)."""
        return self._run("generate_until", requests)

    @property
    def device(self):
        """The inner LM's device."""
        return getattr(self.inner, "device", "cpu")

    def __getattr__(self, name):
        if name in ("inner", "cache") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def describe(directory: Path) -> list[dict]:
    """One entry per cache file in `directory`: path, identity, rows, bytes (or the error)."""
    out = []
    for path in sorted(Path(directory).glob("*.sqlite")):
        entry = {"path": path, "bytes": sum(p.stat().st_size for p in path.parent.glob(path.name + "*")
                                            if ".corrupt-" not in p.name)}
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            try:
                row = db.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
                entry["identity"] = json.loads(row[0]) if row else {}
                entry["rows"] = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
            finally:
                db.close()
        except sqlite3.DatabaseError as exc:
            entry["error"] = str(exc)
        out.append(entry)
    return out


def clear(directory: Path) -> int:
    """Delete every cache file (and moved-aside corrupt copies) in `directory`; return how many."""
    n = 0
    for path in Path(directory).glob("*.sqlite*"):
        if path.is_file():
            path.unlink()
            n += path.name.endswith(".sqlite")
    return n
