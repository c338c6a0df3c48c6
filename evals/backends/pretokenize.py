"""Tokenisation in batches, ahead of lm-eval's one-string calls.

TemplateLM.loglikelihood tokenises each request with two tokenizer calls (_encode_pair: the
whole string, then the context), one string at a time. That is host work that the forward
passes do not hide: MMLU's 5-shot requests, 2000 distinct strings of about 600 tokens per 400
documents, took 1.6 s in one-string calls on this project's 2-core CPU, against 1.0 s as one
batched call (the Rust tokenizer encodes a batch on every core). On the H200 on 2026-11-27 the
fast backend's whole call over those 400 documents took 11.8 s (Phi-2-shaped, bf16), so it is
a share worth saving there (docs/speed.md, "Host work").

Ahead knows the strings a loop will ask for, in order (keys: (string, add_special_tokens)), and
encodes them CHUNK distinct keys at a time with one batched call (`encode_many`); `get` answers
from the current chunk or the one before and, on a miss, encodes the next chunk. A batched
call gives each string's own encoding (tested on fixture requests and on real HellaSwag, MMLU,
BoolQ, PIQA and WinoGrande requests). A key found in neither chunk after that (asked out of
order) turns Ahead off: `get` says None from then on, and the caller encodes alone as before.
At most two chunks' encodings are held at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

Key = tuple  # (string, add_special_tokens: bool | None)

CHUNK = 2048  # distinct strings per batched call


class Ahead:
    """Encodings of the keys a loop will ask for, `chunk` distinct keys per `encode_many` call."""

    def __init__(self, keys: Iterable[Key], encode_many: Callable[[list[Key]], list[list[int]]],
                 chunk: int = CHUNK) -> None:
        """`keys` in the order they will be asked for (repeats allowed); `encode_many` encodes a
        list of keys in one call."""
        self._keys: Iterator[Key] = iter(keys)
        self._encode_many = encode_many
        self._chunk = chunk
        self._current: dict[Key, list[int]] = {}
        self._last: dict[Key, list[int]] = {}
        self._off = False
        self.batches = 0  # encode_many calls made

    def get(self, key: Key) -> list[int] | None:
        """The encoding of `key` if it is in the current chunk or the next one, else None. A key
        found in neither (asked out of order) turns Ahead off: every later get is None, so at
        most one chunk is encoded in vain."""
        if self._off:
            return None
        enc = self._current.get(key)
        if enc is None:
            enc = self._last.get(key)  # asked again just after the chunk moved on (a shared context)
        if enc is None:
            self._advance()
            enc = self._current.get(key)
            self._off = enc is None
        return enc

    def _advance(self) -> None:
        """Encode the next `chunk` distinct keys; the previous chunk is kept for one more."""
        batch: dict[Key, None] = {}
        for key in self._keys:
            if key not in self._current:
                batch[key] = None
            if len(batch) >= self._chunk:
                break
        self._last = self._current
        if not batch:
            self._current = {}
            return
        keys = list(batch)
        self._current = dict(zip(keys, self._encode_many(keys)))
        self.batches += 1


def pair_keys(requests: Iterable[tuple[str, str]]) -> Iterator[Key]:
    """The keys TemplateLM.loglikelihood asks tok_encode for, in order, for (context,
    continuation) pairs: an empty context's continuation without special tokens; otherwise, the
    context's trailing spaces moved to the continuation (_encode_pair), the whole string, then
    the context."""
    for context, continuation in requests:
        if context == "":
            yield (continuation, False)
            continue
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        yield (context + continuation, None)
        yield (context, None)
