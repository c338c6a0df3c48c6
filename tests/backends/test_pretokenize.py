"""evals/backends/pretokenize.py: strings encoded ahead in batches give the tokens one-string
calls give, in the order lm-eval's TemplateLM asks for them."""

from __future__ import annotations

import pytest
from lm_eval.api.model import TemplateLM

from evals.backends.pretokenize import Ahead, pair_keys
from tests.backends.prompts import inst, ll_requests


def _fake_encode(calls):
    def encode_many(keys):
        calls.append(list(keys))
        return [[len(s), int(bool(a))] for s, a in keys]
    return encode_many


def test_ahead_answers_each_key_from_batches_of_distinct_keys():
    keys = [("a", None), ("bb", None), ("a", None), ("ccc", False), ("dddd", None), ("bb", None), ("e", None)]
    calls: list = []
    ahead = Ahead(iter(keys), _fake_encode(calls), chunk=2)
    assert [ahead.get(k) for k in keys] == [[len(s), int(bool(a))] for s, a in keys]
    # distinct keys two at a time, read ahead of the gets: "a" again is in the chunk being read,
    # so not encoded twice; "bb" again is answered from the previous chunk, but the read ahead
    # had not passed it, so the third chunk holds it again (a repeat further than a chunk away)
    assert calls == [[("a", None), ("bb", None)], [("ccc", False), ("dddd", None)], [("bb", None), ("e", None)]]
    assert ahead.batches == 3


def test_a_key_asked_out_of_order_turns_ahead_off():
    calls: list = []
    ahead = Ahead(iter([("a", None), ("b", None), ("c", None)]), _fake_encode(calls), chunk=2)
    assert ahead.get(("a", None)) == [1, 0]
    assert ahead.get(("zzz", None)) is None  # not coming: one more chunk encoded, then off
    assert ahead.get(("c", None)) is None and len(calls) == 2


class _Recorder(TemplateLM):
    """lm-eval's TemplateLM whose tok_encode records what it is asked for."""

    backend = "causal"

    def __init__(self):
        super().__init__()
        self.asked = []

    @property
    def eot_token_id(self):
        return 0

    def tok_encode(self, string, add_special_tokens=None, **kw):
        self.asked.append((string, add_special_tokens))
        return [1] * len(string)

    def _loglikelihood_tokens(self, requests, **kw):
        return [(0.0, True)] * len(requests)

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm=False):
        raise NotImplementedError


def test_pair_keys_are_what_templatelm_asks_for_in_order():
    """The order Ahead relies on, checked against lm-eval's own TemplateLM.loglikelihood: trailing
    spaces moved to the continuation, an empty context's continuation without special tokens."""
    reqs = ll_requests()
    rec = _Recorder()
    rec.loglikelihood(reqs, disable_tqdm=True)
    assert list(pair_keys(r.args for r in reqs)) == rec.asked
    assert ("", " An empty context scores after BOS.") in [r.args for r in reqs]


def test_fast_encodes_ahead_the_tokens_one_string_calls_give(fast, monkeypatch):
    """The batched calls' tokens equal tok_encode's one-string ones (with a string that starts
    with BOS, which takes no special tokens), and loglikelihood hands lm-eval's per-request
    tokenisation the same pairs with and without encoding ahead, in one batched call."""
    bos = fast.tokenizer.decode(fast.prefix_token_id)
    reqs = ll_requests() + [inst("loglikelihood", (bos + "Starts with BOS:", " yes"))]
    keys = list(dict.fromkeys(pair_keys(r.args for r in reqs)))
    one_by_one = [fast.tokenizer.encode(s, **fast._special_kwargs(s, a)) for s, a in keys]
    assert fast._encode_many(keys) == one_by_one
    assert any(fast._special_kwargs(s, a) for s, a in keys)  # several tokenizer argument sets

    seen = []
    monkeypatch.setattr(fast, "_loglikelihood_tokens", lambda r, disable_tqdm=False, **kw: seen.append(r) or [(0.0, True)] * len(r))
    before = fast.stats.get("ll_tokenizer_batches", 0)
    fast.loglikelihood(reqs, disable_tqdm=True)
    assert fast.stats["ll_tokenizer_batches"] == before + 1
    TemplateLM.loglikelihood(fast, reqs, disable_tqdm=True)  # one string at a time
    assert seen[0] == seen[1]
    assert fast._ahead is None


@pytest.mark.integration
@pytest.mark.parametrize("task", ["hellaswag", "mmlu_high_school_us_history", "boolq", "piqa", "winogrande"])
def test_real_requests_encode_ahead_as_one_by_one(task, shared_data, fast):
    """Real requests (long 5-shot MMLU prompts, passages, blanks): the same tokens batched."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "scripts"))
    import bench_runner
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(root / "configs" / "tasks"), include_defaults=False)
    _, insts = bench_runner.build_requests(task, 40, tm, None)
    keys = list(dict.fromkeys(pair_keys(i.args for i in insts)))
    assert fast._encode_many(keys) == [fast.tokenizer.encode(s, **fast._special_kwargs(s, a)) for s, a in keys]
