"""HeadScorer: the output layer at scored positions gives log-softmax's own numbers."""

from types import SimpleNamespace

import pytest
import torch

from evals.backends import lm_head
from evals.backends.lm_head import HeadScorer, greedy_hits


class _Model:
    def __init__(self, head, softcap=None):
        self.head = head
        self.config = SimpleNamespace(final_logit_softcapping=softcap)

    def get_output_embeddings(self):
        return self.head


def _reference(head, h, slots, targets, softcap=None):
    logits = head(h)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp[slots, targets], logp.argmax(-1)[slots] == targets


@pytest.mark.parametrize("bias,softcap", [(False, None), (True, None), (False, 30.0)])
@pytest.mark.parametrize("chunk,rows", [(1024, 16), (8, 4), (6, 3), (5, 3), (4, 7)])
@pytest.mark.parametrize("host", [False, True])
def test_score_equals_log_softmax(monkeypatch, bias, softcap, chunk, rows, host):
    """Pairs in any order, several per position, chunks and slices with ragged ends: the same
    float32 numbers and greedy flags as one log-softmax and argmax over all logits. (The same to
    the last bits where the output layer's product over a chunk's rows gives the bits of the
    product over all rows; on an AMD EPYC it does not, 1e-6 apart, so the numbers are compared
    to 1e-5.) With `host_slots` the slices' pairs are counted on the host: nothing read back
    from the device for them."""
    monkeypatch.setattr(lm_head, "LOGIT_CHUNK", chunk)
    monkeypatch.setattr(lm_head, "LSE_ROWS", rows)
    if host:
        monkeypatch.setattr(torch, "searchsorted", None)  # the device path would call it
    torch.manual_seed(0)
    head = torch.nn.Linear(24, 97, bias=bias)
    h = torch.randn(23, 24) * 3
    slots = torch.tensor([22, 0, 5, 5, 5, 11, 0, 17, 12, 22, 3, 9, 9])
    targets = torch.randint(0, 97, (len(slots),))
    with torch.no_grad():  # some targets are the greedy token, one of them twice
        logp = torch.log_softmax(head(h).float(), dim=-1)
        targets[[1, 7, 11, 12]] = logp.argmax(-1)[[0, 17, 9, 9]]
    scorer = HeadScorer(_Model(head, softcap))
    assert scorer._plain
    with torch.inference_mode():
        got, greedy = scorer.score(h, slots, targets, host_slots=slots.tolist() if host else None)
        ref, ref_greedy = _reference(head, h, slots, targets, softcap)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    assert torch.equal(greedy, ref_greedy)


def test_buffer_reused_and_grown():
    """The logits buffer is kept between calls and grows for a longer chunk; results of an
    earlier call do not depend on it."""
    torch.manual_seed(1)
    head = torch.nn.Linear(8, 50, bias=False)
    scorer = HeadScorer(_Model(head))
    with torch.inference_mode():
        a, _ = scorer.score(torch.randn(4, 8), torch.tensor([0, 3]), torch.tensor([1, 2]))
        buf = scorer._buf
        a_copy = a.clone()
        scorer.score(torch.randn(3, 8), torch.tensor([1]), torch.tensor([4]))
        assert scorer._buf is buf  # smaller call: same buffer
        scorer.score(torch.randn(9, 8), torch.tensor([8]), torch.tensor([4]))
        assert scorer._buf.shape[0] == 9
    assert torch.equal(a, a_copy)
    scorer.release()
    assert scorer._buf is None


def test_other_heads_called_directly():
    """A head that is not a float32 nn.Linear (here bfloat16) is called as a module."""
    torch.manual_seed(2)
    head = torch.nn.Linear(8, 40).to(torch.bfloat16)
    scorer = HeadScorer(_Model(head))
    assert not scorer._plain
    h = torch.randn(5, 8, dtype=torch.bfloat16)
    slots, targets = torch.tensor([4, 1]), torch.tensor([7, 39])
    with torch.inference_mode():
        got, greedy = scorer.score(h, slots, targets)
        ref, ref_greedy = _reference(head, h, slots, targets)
    assert scorer._buf is None
    assert torch.equal(got, ref) and torch.equal(greedy, ref_greedy)


def _argmax_hits(logp, rows, tgt):
    return logp.argmax(-1)[rows] == tgt


def test_greedy_hits_ties_nan_and_duplicates():
    """Row maxima decide greedy flags exactly as argmax does: ties (the first index wins), two
    candidate targets sharing a maximum, the same pair twice, -0.0 against 0.0, NaN rows."""
    logp = torch.tensor([
        [-3.0, -1.0, -2.0, -1.0],  # tie between 1 and 3: argmax 1
        [-3.0, -1.0, -2.0, -5.0],  # unique maximum at 1
        [-0.0, 0.0, -2.0, -5.0],  # -0.0 == 0.0: argmax 0
        [-1.0, float("nan"), -2.0, float("nan")],  # argmax: the first NaN (1)
        [-4.0, -4.0, -4.0, -4.0],  # all tied: argmax 0
    ])
    rows = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4])
    tgt = torch.tensor([1, 3, 2, 1, 1, 0, 3, 0, 1, 1, 3, 0, 0, 3, 0])
    want = _argmax_hits(logp, rows, tgt)
    before = logp.clone()
    got = greedy_hits(logp, rows, tgt, logp[rows, tgt])
    assert torch.equal(got, want)
    assert want.tolist() == [True, False, False, True, True, False, False, True, False,
                             True, False, False, True, False, True]
    assert torch.equal(torch.isnan(logp), torch.isnan(before))
    assert torch.equal(logp.nan_to_num(), before.nan_to_num())  # restored in place


@pytest.mark.parametrize("seed", range(5))
def test_greedy_hits_random_with_rounded_ties(seed):
    """Random log-probs rounded to few values (many ties) and random pairs: same flags as argmax."""
    g = torch.Generator().manual_seed(seed)
    logp = torch.randint(-6, 0, (16, 40), generator=g).float()
    rows = torch.randint(0, 16, (60,), generator=g)
    tgt = torch.randint(0, 40, (60,), generator=g)
    tgt[:16] = logp.argmax(-1)[rows[:16]]  # plenty of true hits
    assert torch.equal(greedy_hits(logp, rows, tgt, logp[rows, tgt]), _argmax_hits(logp, rows, tgt))
