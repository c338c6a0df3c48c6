"""Stop sequences of greedy generation, checked as each row's tokens arrive.

At every decoding step each live row gets one token, and the row is finished when its text
holds a stop sequence that no longer one could still cut earlier (stop_final). Decoding every
row's whole text at every step is slow (5 ms per step for 64 rows of 256 tokens), so StopCheck
looks only where a stop can have newly appeared:

- not at all after a token whose own text holds none of the stop sequences' last characters
  (stop_free_ids): a stop that newly appears ends in the text the new token adds;
- else in the text of the row's last few tokens (STOP_TAIL_TOKENS more than the longest stop),
  and the whole text only once a stop shows there. A stop missed in the tail would only stop
  the row later, with the same cut text.
"""

from __future__ import annotations

import weakref

from lm_eval.models.utils import postprocess_generated_text

# stops are looked for in the text of a row's last (longest stop + this many) tokens
STOP_TAIL_TOKENS = 8
_FREE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {until: stop_free_ids}


def stop_final(text: str, until: list[str]) -> bool:
    """True when `text` holds a stop sequence and no longer stop could still start before the cut."""
    cut = postprocess_generated_text(text, until, None)
    if len(cut) == len(text):
        return False
    for term in until:
        for s in range(max(0, len(text) - len(term) + 1), len(text)):
            if s < len(cut) and term.startswith(text[s:]):
                return False
    return True


def stop_free_ids(tokenizer, until: list[str]) -> frozenset:
    """Token ids after which no stop sequence of `until` can newly appear in a text: their own
    text is not empty and holds no stop sequence's last character and no replacement character
    (a piece of a multi-byte character). Decoding joins the tokens' texts, and its clean-up
    only drops a space before punctuation that the new token adds, so a stop that newly
    appears ends in the new token's text. Empty (no shortcut) when a stop sequence ends in a
    space or other whitespace but a line break, which decoding may drop from a token's own
    text (SentencePiece's leading space). Cached per tokenizer and `until` (decoding a 50k
    vocabulary takes about 0.4 s)."""
    cache = _FREE.setdefault(tokenizer, {})
    key = tuple(until)
    if key not in cache:
        last = {t[-1] for t in until if t}
        free: frozenset = frozenset()
        if last and not any(c.isspace() and c not in "\n\r" for c in last):
            texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=True)
            free = frozenset(i for i, t in enumerate(texts) if t and "\ufffd" not in t and not last.intersection(t))
        cache[key] = free
    return cache[key]


class StopCheck:
    """The generated tokens of a batch's rows and whether each row is finished: an end-of-text
    token (`eos`), `max_gen` tokens, or a final stop sequence of `until` in its text (`decode`:
    token ids -> text). `free`: stop_free_ids (frozenset() checks after every token)."""

    def __init__(self, rows: int, decode, until: list[str], eos: set[int], max_gen: int, free: frozenset = frozenset()):
        self.gen: list[list[int]] = [[] for _ in range(rows)]
        self.decode, self.until, self.eos, self.max_gen, self.free = decode, until, eos, max_gen, free
        self.tail_n = STOP_TAIL_TOKENS + max(map(len, until), default=0)
        self.seen = [False] * rows  # a stop is in the row's text (a longer one may still cut earlier)

    def add(self, row: int, tok: int) -> bool:
        """Append `tok` to `row`'s tokens; True when the row is finished."""
        g = self.gen[row]
        g.append(tok)
        if tok in self.eos or len(g) >= self.max_gen:
            return True
        if not self.seen[row] and tok in self.free:
            return False
        tail = None if self.seen[row] or len(g) <= self.tail_n else self.decode(g[-self.tail_n:])
        if tail is None or any(t in tail for t in self.until):
            text = self.decode(g)
            self.seen[row] = any(t in text for t in self.until)
            return stop_final(text, self.until)
        return False

    def texts(self) -> list[str]:
        """Each row's text, cut at its first stop sequence."""
        return [postprocess_generated_text(self.decode(g), self.until, None) for g in self.gen]
