"""Requests and prompts shared by the backend tests: contexts with and without a few-shot
prefix, continuations of one and several tokens, WinoGrande-style pairs, generation prompts."""

from __future__ import annotations

from lm_eval.api.instance import Instance

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


def inst(kind, args, i=0):
    return Instance(request_type=kind, doc={}, arguments=args, idx=i, metadata=("t", i, 1))


def ll_requests():
    reqs = [inst("loglikelihood", (c, x)) for c in CONTEXTS for x in CONTINUATIONS]
    reqs.append(inst("loglikelihood", ("", " An empty context scores after BOS.")))
    reqs.append(inst("loglikelihood", ("The capital of France is", " Paris")))  # duplicate request
    reqs += [inst("loglikelihood", pair) for pair in WINO]
    return reqs


def assert_same_ll(got, ref):
    assert len(got) == len(ref)
    for (lp, greedy), (rlp, rgreedy) in zip(got, ref):
        assert abs(lp - rlp) < 1e-4
        assert greedy == rgreedy


GEN_PROMPTS = [
    "Q: What is the capital of France?\nA:",
    "def fibonacci(n):",
    "1, 2, 3, 4,",
    "Write a short poem about the sea.\n",
    FEWSHOT + "Q: What is 5 plus 5?\nA:",
    FEWSHOT + "Q: What is 11 plus 4?\nA:",
]


FEWSHOT_PROMPTS = [FEWSHOT + f"Q: What is {a} plus {b}?\nA:" for a, b in ((5, 5), (11, 4), (2, 30), (8, 1))]


# own parts of very different lengths after one few-shot prefix, and prompts sharing nothing
MIXED_PROMPTS = [FEWSHOT + "Q: What is 5 plus 5?\nA:",
                 FEWSHOT + "Q: A farmer has 12 cows, buys 30 more, sells half of them and then buys 7 more. "
                           "How many cows does the farmer have now?\nA:",
                 FEWSHOT + "Q: What is 11 plus 4, plus 3, plus 8?\nA:"]


FEWSHOT_B = "Answer each question with one word.\n\n" + "".join(
    f"Q: What colour is {x}?\nA: {c}\n\n" for x, c in (("grass", "green"), ("snow", "white"), ("the sky", "blue"),
                                                         ("coal", "black"), ("blood", "red"), ("a lemon", "yellow")))
MIXED_CLUSTERS = FEWSHOT_PROMPTS + [FEWSHOT_B + f"Q: What colour is {x}?\nA:" for x in ("milk", "an orange", "a frog")]
