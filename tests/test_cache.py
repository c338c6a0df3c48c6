"""The request cache (evals/cache.py) on a fake LM: hits, misses, commits while running, corruption."""

import sqlite3

import pytest
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM

from evals import cache, cli


class FakeLM(LM):
    """Answers loglikelihood with -len(context + continuation); reports each answer through the hook.

    Tokens are characters, so `max_length` makes truncation easy to provoke.
    """

    max_length = 40
    max_gen_toks = 8

    def __init__(self, on_answer=None):
        super().__init__()
        self.seen: list = []
        self.on_answer = on_answer

    def tok_encode(self, text, add_special_tokens=None):
        return list(text)

    def _encode_pair(self, context, continuation):
        return list(context), list(continuation)

    def loglikelihood(self, requests, disable_tqdm=False):
        out = []
        for r in requests:
            self.seen.append(r.args)
            answer = (-float(len(r.args[0] + r.args[1])), False)
            self.cache_hook.add_partial("loglikelihood", r.args, answer)
            out.append(answer)
            if self.on_answer:
                self.on_answer(len(out))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        return [-1.0 for _ in requests]

    def generate_until(self, requests, disable_tqdm=False):
        self.seen += [r.args for r in requests]
        return [f"gen{len(self.seen)}" for _ in requests]


def ll(context: str, continuation: str) -> Instance:
    return Instance("loglikelihood", {}, (context, continuation), 0)


def open_cache(tmp_path, **kw) -> cache.RequestCache:
    return cache.RequestCache(tmp_path / "m.sqlite", {"fingerprint": "f"}, **kw)


def test_misses_are_computed_once_then_served_from_the_file(tmp_path):
    reqs = [ll("Q: a", " x"), ll("Q: b", " y"), ll("Q: a", " x")]  # a duplicate
    first = cache.CachedLM(FakeLM(), open_cache(tmp_path))
    out1 = first.loglikelihood(reqs)
    assert first.inner.seen == [("Q: a", " x"), ("Q: b", " y")]
    assert first.counts() == {"hits": 0, "misses": 2, "truncated": 0}
    first.cache.close()

    again = cache.CachedLM(FakeLM(), open_cache(tmp_path))
    out2 = again.loglikelihood(reqs + [ll("Q: c", " z")])
    assert again.inner.seen == [("Q: c", " z")]
    assert again.counts() == {"hits": 2, "misses": 1, "truncated": 0}
    assert out2[:3] == out1 and all(type(o) is tuple for o in out2)


def test_rows_are_committed_while_the_backend_runs(tmp_path):
    path = tmp_path / "m.sqlite"
    visible = []

    def peek(n_done):  # another connection, as a restarted process would see the file after kill -9
        with sqlite3.connect(path) as other:
            visible.append((n_done, other.execute("SELECT COUNT(*) FROM requests").fetchone()[0]))

    lm = cache.CachedLM(FakeLM(on_answer=peek), cache.RequestCache(path, commit_every=2))
    lm.loglikelihood([ll(f"Q{i}", " a") for i in range(5)])
    assert visible == [(1, 0), (2, 2), (3, 2), (4, 4), (5, 4)]
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 5


def test_a_crash_inside_the_backend_keeps_the_finished_rows(tmp_path):
    def boom(n_done):
        if n_done == 3:
            raise RuntimeError("backend died")

    lm = cache.CachedLM(FakeLM(on_answer=boom), open_cache(tmp_path, commit_every=100))
    with pytest.raises(RuntimeError):
        lm.loglikelihood([ll(f"Q{i}", " a") for i in range(5)])
    assert lm.cache.rows() == 3


def test_request_key_ignores_dict_order_and_separates_types():
    a = cache.request_key("generate_until", ("Q", {"until": ["\n"], "max_gen_toks": 5}))
    b = cache.request_key("generate_until", ("Q", {"max_gen_toks": 5, "until": ["\n"]}))
    assert a == b
    assert cache.request_key("loglikelihood", ("Q", " a")) != cache.request_key("loglikelihood_rolling", ("Q", " a"))


def test_cache_file_depends_on_fingerprint_dtype_and_backend(tmp_path):
    base = cache.model_identity({"fingerprint": "sha256:1", "dtype": "float32"}, "hf", 2048, 256)
    names = {cache.cache_file(tmp_path, base).name}
    for change in ({"fingerprint": "sha256:2", "dtype": "float32"}, {"fingerprint": "sha256:1", "dtype": "bfloat16"}):
        names.add(cache.cache_file(tmp_path, cache.model_identity(change, "hf", 2048, 256)).name)
    names.add(cache.cache_file(tmp_path, cache.model_identity({"fingerprint": "sha256:1", "dtype": "float32"},
                                                              "fast", 2048, 256)).name)
    assert len(names) == 4


def test_truncated_requests_are_counted_and_remembered(tmp_path):
    long_ctx = "x" * 60  # 60 + 2 characters > max_length + 1
    reqs = [ll(long_ctx, " a"), ll("short", " a")]
    gen = [Instance("generate_until", {}, ("y" * 35, {"until": ["\n"]}), 0)]  # 35 > 40 - 8
    lm = cache.CachedLM(FakeLM(), open_cache(tmp_path))
    lm.loglikelihood(reqs)
    lm.generate_until(gen)
    assert lm.counts()["truncated"] == 2
    lm.cache.close()
    again = cache.CachedLM(FakeLM(), open_cache(tmp_path))
    again.loglikelihood(reqs)
    assert again.counts() == {"hits": 2, "misses": 0, "truncated": 1}


def test_sampled_generations_are_never_cached(tmp_path):
    sampled = Instance("generate_until", {}, ("Q", {"do_sample": True, "until": ["\n"]}), 0)
    lm = cache.CachedLM(FakeLM(), open_cache(tmp_path))
    lm.generate_until([sampled, sampled])
    lm.generate_until([sampled])
    assert len(lm.inner.seen) == 3 and lm.cache.rows() == 0


def test_no_cache_still_counts(tmp_path):
    lm = cache.CachedLM(FakeLM(), None)
    lm.loglikelihood([ll("Q", " a"), ll("Q", " a")])
    lm.loglikelihood([ll("Q", " a")])
    assert lm.counts() == {"hits": 0, "misses": 2, "truncated": 0}


def test_corrupt_file_is_reported_moved_aside_and_rebuilt(tmp_path):
    path = tmp_path / "m.sqlite"
    path.write_bytes(b"this is not a database\x00\xff" * 100)
    said = []
    store = cache.RequestCache(path, {"fingerprint": "f"}, warn=said.append)
    assert len(said) == 1 and "is corrupt" in said[0] and "moved aside" in said[0] and "\n" not in said[0]
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    store.put("k", "loglikelihood", (-1.0, True), False)
    store.commit()
    assert store.get_many(["k"]) == {"k": ((-1.0, True), False)}


def test_cache_info_and_clear(tmp_path, capsys):
    identity = cache.model_identity({"fingerprint": "sha256:9", "dtype": "float32"}, "hf", 2048, 256)
    store = cache.RequestCache(tmp_path / "abc.sqlite", identity)
    for i in range(3):
        store.put(f"k{i}", "loglikelihood", (-1.0, False), False)
    store.close()
    assert cli.main(["cache", "info", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 requests; sha256:9 float32 backend hf" in out and "1 request cache file(s)" in out
    assert cli.main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert "removed 1 request cache file(s)" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.sqlite*"))


def test_run_flags_reach_the_options():
    args = cli.build_parser().parse_args(["run", "arc_easy", "--no-cache", "--cache-dir", "/x"])
    opts = cli._run_options(args, None)
    assert opts.cache is False and str(opts.cache_dir) == "/x"


def test_garbage_inside_a_real_cache_is_detected(tmp_path):
    path = tmp_path / "m.sqlite"
    store = open_cache(tmp_path, commit_every=1000)
    for i in range(3000):
        store.put(f"k{i}", "loglikelihood", (-1.5, False), False)
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size // 2)
        fh.write(b"\xde\xad\xbe\xef" * 2048)
    said = []
    store = cache.RequestCache(path, warn=said.append)
    assert len(said) == 1 and "is corrupt" in said[0] and store.rows() == 0


def test_two_checkpoint_folders_with_the_same_config_get_different_caches(tmp_path):
    infos = []
    for name, weights in (("a", b"1" * 10), ("b", b"2" * 11)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(weights)
        infos.append({"source": "folder", "path": str(folder), "id": "same", "fingerprint": "config-sha256:x",
                      "dtype": "float32"})
    a, b = (cache.cache_file(tmp_path, cache.model_identity(i, "hf", 2048, 256)) for i in infos)
    assert a != b
