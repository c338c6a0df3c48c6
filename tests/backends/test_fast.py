"""FastLM gives HFLM's answers: log-likelihoods within 1e-4, identical greedy generations.

Uses the embedded SmolLM2-135M in float32 on CPU (session fixtures in conftest.py)."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance

from evals.backends.fast import FastLM

FEWSHOT = "The following are questions with answers.\n\n" + "".join(
    f"Q: What is {i} plus {i}?\nA: {2 * i}\n\n" for i in range(10)
)
CONTEXTS = [
    "The capital of France is",
    "A cat sat on the ",            # trailing space moves into the continuation
    "Question: Is the sky blue?\nAnswer:",
    FEWSHOT + "Q: What is 3 plus 1?\nA:",   # shared few-shot prefix (prefix KV reuse)
    FEWSHOT + "Q: What is 7 plus 2?\nA:",
    FEWSHOT + "Q: What is 12 plus 30?\nA:",
]
CONTINUATIONS = [" Paris", " London, a city of many bridges", "mat", " mat.", " yes", " no", " 4", "\n\nThe end."]
# WinoGrande-style: contexts differ after a shared start, the continuation is the same
WINO = [("The trophy would not fit in the brown suitcase because the " + w, " was too big.") for w in ("trophy", "suitcase")]


def _inst(kind, args, i=0):
    return Instance(request_type=kind, doc={}, arguments=args, idx=i, metadata=("t", i, 1))


def _ll_requests():
    reqs = [_inst("loglikelihood", (c, x)) for c in CONTEXTS for x in CONTINUATIONS]
    reqs.append(_inst("loglikelihood", ("", " An empty context scores after BOS.")))
    reqs.append(_inst("loglikelihood", ("The capital of France is", " Paris")))  # duplicate request
    reqs += [_inst("loglikelihood", pair) for pair in WINO]
    return reqs


@pytest.fixture(scope="module")
def fast(smol):
    model, tok = smol
    return FastLM(model, tok, max_length=2048, token_budget=2048)


@pytest.fixture(scope="module")
def hf_ll(hf_lm):
    return hf_lm.loglikelihood(_ll_requests(), disable_tqdm=True)


def _assert_same_ll(got, ref):
    assert len(got) == len(ref)
    for (lp, greedy), (rlp, rgreedy) in zip(got, ref):
        assert abs(lp - rlp) < 1e-4
        assert greedy == rgreedy


def test_loglikelihood_matches_hf(fast, hf_ll):
    _assert_same_ll(fast.loglikelihood(_ll_requests(), disable_tqdm=True), hf_ll)


def test_a_cluster_that_fits_one_row_joins_the_pool(smol, hf_ll):
    """The few-shot cluster (three contexts sharing FEWSHOT) fits one trie row: it runs in the
    common pool, its prefix once as that row's first nodes, without a prefix pass of its own;
    kept as a cluster (pool_clusters off) its prefix runs once as a KV cache. HF's answers
    either way, and the same tokens forwarded."""
    model, tok = smol
    runs = {}
    for pool in (True, False):
        lm = FastLM(model, tok, max_length=2048, token_budget=2048)
        lm.pool_clusters = pool
        _assert_same_ll(lm.loglikelihood(_ll_requests(), disable_tqdm=True), hf_ll)
        runs[pool] = dict(lm.stats)
    prefix = runs[False]["ll_shared_prefix_tokens"]
    assert runs[False]["ll_prefix_passes"] == 1 and prefix > 0
    assert runs[True].get("ll_prefix_passes", 0) == 0 and runs[True].get("ll_shared_prefix_tokens", 0) == 0
    assert runs[True]["ll_real_tokens"] == runs[False]["ll_real_tokens"] + prefix  # the prefix ran once


def test_loglikelihood_tokenisation_matches_hf(fast, hf_lm):
    for c in CONTEXTS[:3]:
        for x in CONTINUATIONS:
            assert fast._encode_pair(c, x) == hf_lm._encode_pair(c, x)
            assert fast.tok_encode(c + x) == hf_lm.tok_encode(c + x)
    # the reused context encoding must follow the context: interleaved, trailing spaces
    pairs = [(c, x) for x in CONTINUATIONS for c in CONTEXTS[:3]] + [("Answer: ", "yes"), ("Answer:", " yes")]
    for c, x in pairs:
        assert fast._encode_pair(c, x) == hf_lm._encode_pair(c, x)


def test_shared_tokens_run_once(smol, hf_lm):
    """Requests whose inputs share leading tokens (different contexts, as in WinoGrande, or
    one context's choices) compute each distinct prefix once, with HF's answers."""
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048)
    reqs = [_inst("loglikelihood", p) for p in WINO + [(CONTEXTS[2], " yes"), (CONTEXTS[2], " yes, it is")]]
    _assert_same_ll(lm.loglikelihood(reqs, disable_tqdm=True), hf_lm.loglikelihood(reqs, disable_tqdm=True))
    inputs = [tuple(c + x)[:-1] for c, x in (lm._encode_pair(*r.args) for r in reqs)]
    distinct = {s[:k] for s in inputs for k in range(1, len(s) + 1)}
    assert lm.stats["ll_real_tokens"] == len(distinct) < sum(map(len, set(inputs)))


def test_batch_size_one_scores_each_context_alone(smol):
    """At batch size 1 a request's numbers do not depend on the other requests of the run
    (what makes 1 and N processes agree bit for bit): no row mixes contexts."""
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048, batch_size=1)
    alone = lm.loglikelihood([_inst("loglikelihood", WINO[0])], disable_tqdm=True)
    mixed = lm.loglikelihood([_inst("loglikelihood", p) for p in WINO[::-1]], disable_tqdm=True)
    assert alone[0] == mixed[1]
    x0, x1 = (len(sum(lm._encode_pair(*p), [])) - 1 for p in WINO)
    assert lm.stats["ll_real_tokens"] == 2 * x0 + x1  # the shared start ran once per context


def test_tiny_budget_gives_same_answers(smol, hf_ll):
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048, token_budget=16)  # one row per batch
    _assert_same_ll(lm.loglikelihood(_ll_requests(), disable_tqdm=True), hf_ll)


def test_shared_prefix_runs_once_per_cluster(smol, hf_ll):
    """One row per batch: the few-shot prefix still runs once for its three contexts (its KV
    cache is kept between batches), and the answers stay HF's."""
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048, batch_size=1)
    _assert_same_ll(lm.loglikelihood(_ll_requests(), disable_tqdm=True), hf_ll)
    shared = lm.stats["ll_shared_prefix_tokens"]
    assert len(tok.encode(FEWSHOT)) - 2 <= shared <= len(tok.encode(FEWSHOT)) + 8
    assert lm._prefix is None  # released after the call


def test_left_truncation_matches_hf(smol):
    from lm_eval.models.huggingface import HFLM

    model, tok = smol
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=24, device="cpu")
    lm = FastLM(model, tok, max_length=24)
    reqs = [_inst("loglikelihood", (FEWSHOT, x)) for x in CONTINUATIONS]
    _assert_same_ll(lm.loglikelihood(reqs, disable_tqdm=True), hf.loglikelihood(reqs, disable_tqdm=True))


def test_oom_backoff_gives_complete_identical_results(smol, hf_ll, monkeypatch):
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048, token_budget=4096)
    lm.loglikelihood(_ll_requests()[:1], disable_tqdm=True)  # the probe (_check_rows) runs before the first batch
    real = lm._score_rows
    calls = {"n": 0}

    def flaky(*a):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*a)

    monkeypatch.setattr(lm, "_score_rows", flaky)
    _assert_same_ll(lm.loglikelihood(_ll_requests(), disable_tqdm=True), hf_ll)
    assert lm.budget.halvings == 1 and lm.budget.tokens < 4096


def test_generation_oom_backoff(smol, monkeypatch):
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048, token_budget=4096)
    reqs = [_inst("generate_until", (c, {"until": ["\n"], "max_gen_toks": 8, "do_sample": False})) for c in CONTEXTS]
    ref = lm.generate_until(reqs)
    real = lm._greedy_batch
    calls = {"n": 0}

    def flaky(*a):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA error: out of memory")
        return real(*a)

    monkeypatch.setattr(lm, "_greedy_batch", flaky)
    assert lm.generate_until(reqs) == ref
    assert lm.gen_budget.halvings == 1 and lm.budget.halvings == 0  # generation has its own budget


GEN_PROMPTS = [
    "Q: What is the capital of France?\nA:",
    "def fibonacci(n):",
    "1, 2, 3, 4,",
    "Write a short poem about the sea.\n",
    FEWSHOT + "Q: What is 5 plus 5?\nA:",
    FEWSHOT + "Q: What is 11 plus 4?\nA:",
]


@pytest.mark.parametrize("gen_kwargs", [
    {"until": ["\n\n", "Q:"], "max_gen_toks": 24, "do_sample": False},
    {"until": [","], "max_gen_toks": 12, "temperature": 0.0},
    {"until": "\n", "max_gen_toks": 5},
])
def test_greedy_generation_identical_to_hf(fast, hf_lm, gen_kwargs):
    reqs = [_inst("generate_until", (p, dict(gen_kwargs)), i) for i, p in enumerate(GEN_PROMPTS)]
    ref = hf_lm.generate_until(reqs, disable_tqdm=True)
    got = fast.generate_until(reqs, disable_tqdm=True)
    assert got == ref


@pytest.mark.parametrize("gen_kwargs", [
    {"until": ["\n\n", "Q:"], "max_gen_toks": 24, "do_sample": False},
    {"until": [","], "max_gen_toks": 12, "temperature": 0.0},
])
def test_static_cache_generation_identical_to_hf(smol, hf_lm, gen_kwargs):
    """--static-cache: transformers' generate with a static KV cache, bucketed shapes, same text."""
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048, static_cache=True)
    reqs = [_inst("generate_until", (p, dict(gen_kwargs)), i) for i, p in enumerate(GEN_PROMPTS)]
    assert lm.generate_until(reqs, disable_tqdm=True) == hf_lm.generate_until(reqs, disable_tqdm=True)


def test_static_cache_batches_have_bucketed_shapes(smol, monkeypatch):
    """Rows padded to a power of two, prompts to a multiple of STATIC_LEN_BUCKET; the padding
    rows' texts are dropped and a row's text ends at its first EOS."""
    from evals.backends.greedy import STATIC_LEN_BUCKET

    model, tok = smol
    lm = FastLM(model, tok, max_length=2048, static_cache=True)
    shapes, real = [], model.generate

    def spy(**kw):
        shapes.append((tuple(kw["input_ids"].shape), kw["cache_implementation"]))
        return real(**kw)

    monkeypatch.setattr(model, "generate", spy)
    reqs = [_inst("generate_until", (p, {"until": ["\n"], "max_gen_toks": 6}), i) for i, p in enumerate(GEN_PROMPTS[:3])]
    got = lm.generate_until(reqs, disable_tqdm=True)
    assert shapes == [((4, STATIC_LEN_BUCKET), "static")] and len(got) == 3
    prompts = [tok(p)["input_ids"] for p in GEN_PROMPTS[:3]]
    assert got == lm._greedy_batch(prompts, ["\n"], 6)
    lm.generate_until(reqs[:1], disable_tqdm=True)  # one row runs in the 4-row shape already compiled
    lm.generate_until(reqs, disable_tqdm=True)
    assert shapes[1:] == [((4, STATIC_LEN_BUCKET), "static")] * 2


def test_generation_tokens_identical_to_hf_generate(fast, smol):
    """Token for token: no stop sequence hit, full max_gen_toks, compared with HF generate."""
    model, tok = smol
    prompts = ["The history of Rome", "Once upon a time", "import numpy as np\n"]
    for p in prompts:
        ids = tok(p, return_tensors="pt")["input_ids"]
        ref = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
        got = fast._greedy_batch([ids[0].tolist()], ["@@never@@"], 16)
        assert got[0] == tok.decode(ref, skip_special_tokens=True)


FEWSHOT_PROMPTS = [FEWSHOT + f"Q: What is {a} plus {b}?\nA:" for a, b in ((5, 5), (11, 4), (2, 30), (8, 1))]


def test_shared_prefix_read_in_place_gives_the_expanded_texts(smol, hf_lm):
    """Prompts sharing a few-shot prefix: the rows' cache holds only their own tokens and
    attention reads the prefix's one copy (prefix_attention.py); same texts as the prefix
    expanded to every row, and as HFLM."""
    model, tok = smol
    reqs = [_inst("generate_until", (p, {"until": ["\n\n", "Q:"], "max_gen_toks": 12}), i)
            for i, p in enumerate(FEWSHOT_PROMPTS)]
    lm = FastLM(model, tok, max_length=2048)
    got = lm.generate_until(reqs, disable_tqdm=True)
    assert lm.stats["gen_prefix_in_place_batches"] == 1 and lm._shared_decode
    expanded = FastLM(model, tok, max_length=2048)
    expanded.shared_prefix_decode = expanded._shared_decode = False
    assert got == expanded.generate_until(reqs, disable_tqdm=True)
    assert expanded.stats["gen_prefix_in_place_batches"] == 0
    assert got == hf_lm.generate_until(reqs, disable_tqdm=True)


def test_shared_prefix_falls_back_when_attention_cannot_read_it(smol, monkeypatch, caplog):
    """An attention layer that refuses the shared prefix (here: every one) sends the backend
    back to the expanded prefix cache, with a warning and the same texts."""
    from transformers import AttentionInterface

    from evals.backends import prefix_attention

    model, tok = smol
    reqs = [_inst("generate_until", (p, {"until": ["\n"], "max_gen_toks": 6}), i) for i, p in enumerate(FEWSHOT_PROMPTS)]
    ref = FastLM(model, tok, max_length=2048).generate_until(reqs, disable_tqdm=True)

    def refuse(*a, **k):
        raise NotImplementedError("not here")

    monkeypatch.setitem(AttentionInterface._global_mapping, prefix_attention.SHARED, refuse)
    lm = FastLM(model, tok, max_length=2048)
    with caplog.at_level("WARNING"):
        assert lm.generate_until(reqs, disable_tqdm=True) == ref
    assert not lm._shared_decode and "shared-prefix decoding unavailable (not here)" in caplog.text
    assert lm.stats["gen_prefix_in_place_batches"] == 0


# own parts of very different lengths after one few-shot prefix, and prompts sharing nothing
MIXED_PROMPTS = [FEWSHOT + "Q: What is 5 plus 5?\nA:",
                 FEWSHOT + "Q: A farmer has 12 cows, buys 30 more, sells half of them and then buys 7 more. "
                           "How many cows does the farmer have now?\nA:",
                 FEWSHOT + "Q: What is 11 plus 4, plus 3, plus 8?\nA:"]


@pytest.mark.parametrize("in_place", [True, False])
@pytest.mark.parametrize("prompts", [GEN_PROMPTS, MIXED_PROMPTS], ids=["unshared", "fewshot"])
def test_grouped_prefill_gives_the_whole_batch_texts(smol, prompts, in_place):
    """Rows of a generation batch are prefilled in groups of similar length and their caches
    copied into one left-padded cache (widen_cache): the same texts as one prefill of the
    whole batch, with the prefix read in place or copied to every row."""
    model, tok = smol
    enc = [tok(p)["input_ids"] for p in prompts]
    runs = []
    for widen in (True, False):
        lm = FastLM(model, tok, max_length=2048)
        lm._shared_decode = in_place
        lm._widen_prefill = widen
        with torch.inference_mode():  # as generate_until runs it
            runs.append((lm._greedy_batch(enc, ["\n\n"], 10), lm.stats["gen_prefill_passes"]))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1] > 1 and runs[1][1] == 1


def test_grouped_prefill_falls_back_when_the_cache_cannot_be_widened(smol, monkeypatch, caplog):
    from evals.backends import greedy

    model, tok = smol
    enc = [tok(p)["input_ids"] for p in GEN_PROMPTS]
    ref = FastLM(model, tok, max_length=2048)._greedy_batch(enc, ["\n\n"], 8)
    monkeypatch.setattr(greedy, "widen_cache", lambda *a: False)
    lm = FastLM(model, tok, max_length=2048)
    with caplog.at_level("WARNING"):
        assert lm._greedy_batch(enc, ["\n\n"], 8) == ref
    assert not lm._widen_prefill and "prefilling whole batches" in caplog.text
    assert lm.stats["gen_prefill_passes"] == 1


def test_generation_budget(smol, monkeypatch):
    """On the CPU a generation batch may fill a share of the available memory with KV cache
    (never less than the log-likelihood budget); an explicit budget holds for both."""
    from evals.backends import device

    model, tok = smol
    monkeypatch.setattr(device, "available_memory_bytes", lambda: 8 << 30)
    monkeypatch.delenv("PHI2EVAL_TOKEN_BUDGET", raising=False)
    kv = 2 * 30 * 3 * 64 * 4  # float32
    lm = FastLM(model, tok, max_length=2048)
    assert lm.gen_budget.tokens == int(device.CPU_GEN_MEMORY_SHARE * (8 << 30) / kv) > lm.budget.tokens
    assert FastLM(model, tok, max_length=2048, token_budget=3000).gen_budget.tokens == 3000
    monkeypatch.setattr(device, "available_memory_bytes", lambda: 1 << 20)
    assert FastLM(model, tok, max_length=2048).gen_budget.tokens == lm.budget.tokens


def test_stop_check_on_the_tail_stops_at_the_same_step(smol, monkeypatch):
    """Stop sequences are looked for only after tokens that can end one, in the text of a row's
    last tokens: the rows stop at the same step as when the whole text is decoded after every
    token (a huge tail, no token skipped), with the same texts."""
    from evals.backends import greedy
    from evals.backends import stops

    model, tok = smol
    until = ["\n\n", "Q:", " plus", "."]
    prompts = [tok(p)["input_ids"] for p in GEN_PROMPTS]
    runs = []
    for tail, skip in ((stops.STOP_TAIL_TOKENS, True), (10 ** 6, False)):
        monkeypatch.setattr(stops, "STOP_TAIL_TOKENS", tail)
        monkeypatch.setattr(greedy, "stop_free_ids", stops.stop_free_ids if skip else lambda *a: frozenset())
        lm = FastLM(model, tok, max_length=2048)
        runs.append((lm._greedy_batch(prompts, until, 40), lm.stats["gen_tokens"]))
    assert runs[0] == runs[1]
    assert runs[0][1] < 40 * len(prompts)  # some rows stopped early


def test_registered_with_lm_eval():
    from lm_eval.api.registry import get_model

    assert get_model("phi2eval-fast") is FastLM


def test_peak_memory_recorded(fast):
    fast.loglikelihood([_inst("loglikelihood", ("Hello", " world"))], disable_tqdm=True)
    assert fast.peak_memory_bytes > 0


def test_random_tiny_phi_matches_hf():
    """Phi architecture (partial rotary) through the packed path: random tiny model."""
    from lm_eval.models.huggingface import HFLM

    from evals.random_model import build_random

    model, tok, info = build_random("tiny-phi", "float32", "cpu")
    assert info["random_weights"] is True and model.config.vocab_size >= len(tok)
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=info["max_length"], device="cpu")
    lm = FastLM(model, tok, max_length=info["max_length"])
    reqs = [_inst("loglikelihood", (c, x)) for c in CONTEXTS[2:5] for x in CONTINUATIONS[:4]]
    _assert_same_ll(lm.loglikelihood(reqs, disable_tqdm=True), hf.loglikelihood(reqs, disable_tqdm=True))
    g = [_inst("generate_until", (p, {"until": ["\n"], "max_gen_toks": 6})) for p in GEN_PROMPTS[:3] + FEWSHOT_PROMPTS]
    assert lm.generate_until(g) == hf.generate_until(g)
    # a cluster of 4 prompts decodes in the pool (GEN_CLUSTER_MIN_ROWS); alone, it is one batch
    assert lm.generate_until(g[3:]) == hf.generate_until(g[3:])
    assert lm.stats["gen_prefix_in_place_batches"] >= 1  # Phi's attention read the shared prefix in place


def test_rows_leaving_a_batch_keep_their_texts(smol, monkeypatch):
    """Rows finishing at different steps leave the batch and later rows move into their place
    (compact_cache); every row's text is the one it gets decoded alone."""
    from evals.backends import greedy

    model, tok = smol
    orders, real = [], greedy.compact_cache

    def spy(cache, order, device):
        orders.append(list(order))
        return real(cache, order, device)

    monkeypatch.setattr(greedy, "compact_cache", spy)
    enc = [tok(p)["input_ids"] for p in GEN_PROMPTS]
    lm = FastLM(model, tok, max_length=2048)
    with torch.inference_mode():
        got = lm._greedy_batch(enc, ["\n", "."], 16)
        alone = [lm._greedy_batch([e], ["\n", "."], 16)[0] for e in enc]
    assert got == alone
    assert any(o != sorted(o) for o in orders)  # a row moved into a hole


FEWSHOT_B = "Answer each question with one word.\n\n" + "".join(
    f"Q: What colour is {x}?\nA: {c}\n\n" for x, c in (("grass", "green"), ("snow", "white"), ("the sky", "blue"),
                                                         ("coal", "black"), ("blood", "red"), ("a lemon", "yellow")))
MIXED_CLUSTERS = FEWSHOT_PROMPTS + [FEWSHOT_B + f"Q: What colour is {x}?\nA:" for x in ("milk", "an orange", "a frog")]


def test_a_batch_mixing_clusters_gives_each_clusters_texts(smol, hf_lm, monkeypatch):
    """Rows of two few-shot clusters in one decoding loop, each reading its own prefix in place
    (MultiPrefix): the texts of each cluster decoded alone, and HFLM's."""
    from evals.backends import planning
    from evals.backends.planning import share_clusters

    model, tok = smol
    enc = [tok(p)["input_ids"] for p in MIXED_CLUSTERS]
    _, shared = share_clusters(enc)
    assert len({tuple(e[:n]) for e, n in zip(enc, shared)}) == 2 and min(shared) >= planning.SHARE_MIN
    lm = FastLM(model, tok, max_length=2048)
    with torch.inference_mode():
        mixed = lm._greedy_batch(enc, ["\n\n", "Q:"], 12, list(shared))
        alone = lm._greedy_batch(enc[:4], ["\n\n", "Q:"], 12, shared[0]) + \
            lm._greedy_batch(enc[4:], ["\n\n", "Q:"], 12, shared[4])
    assert mixed == alone and lm.stats["gen_mixed_batches"] == 1
    # through generate_until: the planner mixes the two clusters (kept out of the pool here)
    monkeypatch.setattr(planning, "GEN_CLUSTER_MIN_ROWS", 2)
    reqs = [_inst("generate_until", (p, {"until": ["\n\n", "Q:"], "max_gen_toks": 12}), i)
            for i, p in enumerate(MIXED_CLUSTERS)]
    lm = FastLM(model, tok, max_length=2048)
    assert lm.generate_until(reqs, disable_tqdm=True) == hf_lm.generate_until(reqs, disable_tqdm=True)
    assert lm.stats["gen_mixed_batches"] == 1


def test_a_mixed_batch_falls_back_to_one_batch_per_cluster(smol, monkeypatch, caplog):
    """Where caches cannot be assembled from groups, each cluster decodes on its own."""
    from evals.backends import greedy
    from evals.backends.planning import share_clusters

    model, tok = smol
    enc = [tok(p)["input_ids"] for p in MIXED_CLUSTERS]
    _, shared = share_clusters(enc)
    ref = FastLM(model, tok, max_length=2048)._greedy_batch(enc, ["\n"], 8, list(shared))
    monkeypatch.setattr(greedy, "widen_cache", lambda *a: False)
    lm = FastLM(model, tok, max_length=2048)
    with caplog.at_level("WARNING"):
        assert lm._greedy_batch(enc, ["\n"], 8, list(shared)) == ref
    assert not lm._widen_prefill and lm.stats["gen_mixed_batches"] == 0


def test_loglikelihood_rolling_matches_hf(smol):
    """Rolling windows (perplexity tasks) over trie rows give HFLM's totals."""
    from lm_eval.models.huggingface import HFLM

    model, tok = smol
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=32, device="cpu")
    lm = FastLM(model, tok, max_length=32)
    reqs = [_inst("loglikelihood_rolling", (text,), i) for i, text in enumerate([FEWSHOT, CONTEXTS[2], FEWSHOT[:90]])]
    got, ref = lm.loglikelihood_rolling(reqs), hf.loglikelihood_rolling(reqs, disable_tqdm=True)
    assert len(got) == 3 and all(abs(a - b) < 1e-4 for a, b in zip(got, ref))


def test_only_greedy_decoding_gets_the_generation_budget(smol, monkeypatch):
    """transformers' generate (sampling, --static-cache) prefills whole batches and grows its
    cache by concatenation, so it keeps the log-likelihood budget and padding rules."""
    from evals.backends import greedy

    model, tok = smol
    seen = []
    monkeypatch.setattr(greedy, "run_batched",
                        lambda lengths, fn, budget, *a, **k: seen.append((budget, k.get("pad_waste"))) or [""] * len(lengths))
    reqs = [_inst("generate_until", (p, {"until": ["\n"], "max_gen_toks": 4})) for p in GEN_PROMPTS[:2]]
    sampled = [_inst("generate_until", (p, {"until": ["\n"], "max_gen_toks": 4, "do_sample": True})) for p in GEN_PROMPTS[:2]]
    lm = FastLM(model, tok, max_length=2048)
    lm.generate_until(reqs, disable_tqdm=True)
    lm.generate_until(sampled, disable_tqdm=True)
    static = FastLM(model, tok, max_length=2048, static_cache=True)
    static.generate_until(reqs, disable_tqdm=True)
    assert seen[0][0] is lm.gen_budget and seen[0][1] > 0
    assert seen[1] == (lm.budget, None) and seen[2] == (static.budget, None)
