"""Answer extraction for the chain-of-thought benchmarks (BBH).

GSM8K needs no Python here: its YAML declares lm-eval's own `strict-match` ("The answer is N") and
`flexible-extract` (last number) regex filters, copied from lm-eval's gsm8k-cot task.
"""

import re

BBH_INVALID = "[invalid]"  # what a generation without "So the answer is" extracts to; never a target

_ANSWER_CUE = re.compile(r"so the answer is\s*:?\s*", re.IGNORECASE)
_OPTION = re.compile(r"^\(([A-Z])\)")
_BARE_LETTER = re.compile(r"^([A-Z])$")


def bbh_answer(generation: str) -> str:
    """The answer a BBH chain of thought commits to, in the form of BBH targets.

    Rules, in order: take the text after the first "So the answer is" (case-insensitive, an optional
    ':' skipped) up to the end of its line; cut at the first ". " (a sentence that follows the answer);
    strip whitespace and trailing '.'; an option "(X) ..." becomes "(X)", a bare capital letter "X"
    becomes "(X)". No cue -> BBH_INVALID.
    """
    match = _ANSWER_CUE.search(generation)
    if match is None:
        return BBH_INVALID
    answer = generation[match.end():].split("\n", 1)[0]
    answer = answer.split(". ", 1)[0].strip().rstrip(".").strip()
    option = _OPTION.match(answer)
    if option:
        return f"({option.group(1)})"
    bare = _BARE_LETTER.match(answer)
    if bare:
        return f"({bare.group(1)})"
    return answer


def bbh_filter(resps, docs):
    """lm-eval `custom` filter: apply `bbh_answer` to every response of every document."""
    return [[bbh_answer(r) if isinstance(r, str) else BBH_INVALID for r in inst] for inst in resps]
