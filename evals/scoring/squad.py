"""SQuAD v2.0 scoring, exactly as the official evaluation script (evaluate-v2.0.py), plus the
prompt-side rules of the 2-shot task (configs/tasks/squad_v2.yaml).

Official rules reproduced here: `normalize_answer` (lowercase, drop punctuation, drop the articles
a/an/the, collapse whitespace); gold answers are the non-empty (after normalisation) answer texts,
or [""] when there are none (unanswerable question); EM and F1 take the max over gold answers; F1 is
token overlap, and an empty gold or prediction scores 1 only if both are empty. Scores are fractions
(0..1), not the script's percentages.

Prompt rule: the model answers "unanswerable" when the passage does not contain the answer; a
prediction that normalises to "unanswerable" counts as the empty answer "".

Few-shot rule: the two exemplars are the first answerable and the first unanswerable question of
the dev set (validation split), both in the first paragraph of "Normans"; they are removed from the
scored set, so 11871 of the 11873 dev questions are scored (hub and local data alike).
"""

import collections
import re
import string

UNANSWERABLE = "unanswerable"
FEWSHOT_IDS = ("56ddde6b9a695914005b9628", "5ad39d53604f3c001a3fe8d1")  # answerable, unanswerable

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (official script)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def get_tokens(s: str) -> list[str]:
    """Tokens of the normalised answer; [] for an empty one."""
    return normalize_answer(s).split() if s else []


def compute_exact(a_gold: str, a_pred: str) -> int:
    """1 if the normalised strings are equal, else 0."""
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    """Token-overlap F1; if either side is empty, 1 when both are empty, else 0."""
    gold_toks, pred_toks = get_tokens(a_gold), get_tokens(a_pred)
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def gold_answers(answer_texts: list[str]) -> list[str]:
    """The official gold list: answers that are non-empty after normalisation, else [""]."""
    golds = [a for a in answer_texts if normalize_answer(a)]
    return golds or [""]


def prediction(generation: str) -> str:
    """The answer in a generation: its first line, stripped; "unanswerable" -> ""."""
    text = generation.strip().split("\n", 1)[0].strip()
    return "" if normalize_answer(text) == UNANSWERABLE else text


def score(answer_texts: list[str], pred: str) -> dict[str, float]:
    """{'exact_match', 'f1'} of one prediction against a question's answer texts (max over golds)."""
    golds = gold_answers(answer_texts)
    return {"exact_match": float(max(compute_exact(g, pred) for g in golds)),
            "f1": max(compute_f1(g, pred) for g in golds)}


# ---- lm-eval hooks (referenced from configs/tasks/squad_v2.yaml) ----

def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval `process_results`: score the (first) generation of a hub-schema SQuAD v2 row."""
    return score(list(doc["answers"]["text"]), prediction(results[0]))


def doc_to_target(doc: dict) -> str:
    """The answer shown in a few-shot exemplar: the first gold text, or "unanswerable"."""
    texts = [t for t in doc["answers"]["text"] if t]
    return texts[0] if texts else UNANSWERABLE


def fewshot_docs(dataset):
    """The two few-shot exemplars (FEWSHOT_IDS, in that order) from the validation split."""
    by_id = {row["id"]: row for row in dataset if row["id"] in FEWSHOT_IDS}
    missing = [i for i in FEWSHOT_IDS if i not in by_id]
    if missing:
        raise ValueError(f"squad_v2: few-shot exemplar ids {missing} are not in the validation split")
    return [by_id[i] for i in FEWSHOT_IDS]


def eval_docs(dataset):
    """The scored questions: the validation split without the two few-shot exemplars."""
    return dataset.filter(lambda row: row["id"] not in FEWSHOT_IDS)
