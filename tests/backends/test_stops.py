"""stops.py: rows finish at the step where their text first holds a final stop sequence, whether
or not the text is looked at after every token."""

from __future__ import annotations

import pytest

from evals.backends import stops
from evals.backends.stops import StopCheck, stop_final, stop_free_ids

TEXTS = [
    "There are 15 trees. Then 21. So 21 - 15 = 6. The answer is 6.\n\nQ: If there are 3 cars, how many?\nA: 5.",
    "Let's think step by step.\nFirst: 3 + 4 = 7.\nSo the answer is (B).\n\nQ: next question",
    "    result = []\n    for x in xs:\n        result.append(x * 2)\n    return result\n\ndef other():\n    pass",
    "Caf\u00e9 \u2615 costs 3\u20ac; \u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3002 na\u00efve r\u00e9sum\u00e9: done.</s> trailing",
    "He said: \"yes\" -- isn't it? Answer: (A) <|im_end|> after",
    "1 plus 1 is 2 plus nothing. Q:Q: A:\n\n\n",
]
UNTIL = [
    ["\n\n", "Q:", "</s>", "<|im_end|>"],  # GSM8K / BBH
    ["\nclass", "\ndef", "\n#", "\nif", "\nprint"],  # HumanEval
    [".", " plus"],
    ["\u3002", "\u2615"],  # multi-byte characters
    ["Answer: "],  # ends in a space: no shortcut
]


def _finish_steps(tok, text: str, until: list[str], free: frozenset, tail: int | None = None) -> list:
    """Per row (the text's tokens, and the same from each of a few later starts), the step at which
    StopCheck says it is finished (None: never), with `free` as its stop-free tokens."""
    ids = tok(text)["input_ids"]
    starts = [0, 1, 3, 7]
    check = StopCheck(len(starts), lambda g: tok.decode(g, skip_special_tokens=True), until, eos=set(),
                      max_gen=10 ** 6, free=free)
    if tail is not None:
        check.tail_n = tail
    out = []
    for row, s in enumerate(starts):
        out.append(next((n for n, t in enumerate(ids[s:]) if check.add(row, t)), None))
    return out


@pytest.mark.parametrize("until", UNTIL, ids=lambda u: repr(u[0]))
def test_skipping_stop_free_tokens_finishes_at_the_same_step(smol, until):
    _, tok = smol
    free = stop_free_ids(tok, until)
    for text in TEXTS:
        whole = _finish_steps(tok, text, until, frozenset(), tail=10 ** 6)  # the whole text after every token
        assert _finish_steps(tok, text, until, free) == whole, text


def test_the_texts_do_stop_and_a_wrong_shortcut_would_miss_it(smol):
    """The cases above are not vacuous: rows do finish early, and treating every token as
    stop-free would miss the stops."""
    _, tok = smol
    until = UNTIL[0]
    everything = frozenset(range(len(tok)))
    stopped = [_finish_steps(tok, t, until, frozenset()) for t in TEXTS]
    assert sum(s is not None for row in stopped for s in row) >= 8
    assert any(_finish_steps(tok, t, until, everything) != s for t, s in zip(TEXTS, stopped))


def test_stop_free_tokens(smol):
    _, tok = smol
    free = stop_free_ids(tok, ["Q:", "\n\n"])
    texts = {i: tok.decode([i], skip_special_tokens=True) for i in range(len(tok))}
    assert free and all(":" not in texts[i] and "\n" not in texts[i] and "\ufffd" not in texts[i] and texts[i]
                        for i in free)
    assert tok("Q")["input_ids"][0] in free  # a stop's other characters are no reason to look
    assert all(i not in free for i, t in texts.items() if t.endswith(":"))
    assert stop_free_ids(tok, ["Answer: "]) == frozenset()  # decoding may drop a token's leading space
    assert stop_free_ids(tok, ["Q:", "\n\n"]) is free  # cached


def test_stop_final_waits_for_longer_stop():
    # "\n\n" is present but "a\n\nb" might still complete and cut earlier
    assert not stop_final("xa\n\n", ["a\n\nb", "\n\n"])
    assert stop_final("xa\n\nc", ["a\n\nb", "\n\n"])
    assert stop_final("hello\n\n", ["\n\n"])
    assert not stop_final("hello", ["\n\n"])


def test_texts_are_cut_and_limits_finish_rows():
    check = StopCheck(2, lambda g: "".join(chr(t) for t in g), ["X"], eos={0}, max_gen=4)
    assert [check.add(0, t) for t in map(ord, "abX")] == [False, False, True]
    assert [check.add(1, t) for t in (ord("a"), 0)] == [False, True]  # end of text
    assert check.texts() == ["ab", "a\x00"]
    assert StopCheck(1, str, [], set(), max_gen=2).add(0, 5) is False
    assert stops.STOP_TAIL_TOKENS > 0
