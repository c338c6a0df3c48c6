"""Local loaders of the generative benchmarks (BBH, GSM8K, SQuAD v2) and the BBH CoT exemplars.

Rows come back in the hub datasets' schemas: SaylorTwift/bbh (= lukaemon/bbh) {input, target};
openai/gsm8k (main) {question, answer}; rajpurkar/squad_v2 {id, title, context, question, answers{text, answer_start}}.
"""

import json
from pathlib import Path

from evals import paths
from evals.errors import DataError
from evals.loaders import register
from evals.loaders._io import read_jsonl

BBH_TASKS = (
    "boolean_expressions causal_judgement date_understanding disambiguation_qa dyck_languages "
    "formal_fallacies geometric_shapes hyperbaton logical_deduction_five_objects "
    "logical_deduction_seven_objects logical_deduction_three_objects movie_recommendation "
    "multistep_arithmetic_two navigate object_counting penguins_in_a_table "
    "reasoning_about_colored_objects ruin_names salient_translation_error_detection snarks "
    "sports_understanding temporal_sequences tracking_shuffled_objects_five_objects "
    "tracking_shuffled_objects_seven_objects tracking_shuffled_objects_three_objects web_of_lies "
    "word_sorting"
).split()

_COT_CUE = "\nA: Let's think step by step."
_COT_SEP_EXCEPTIONS = {"sports_understanding": " "}  # official separator after the cue, where not "\n"


# ---- BBH ----

def _bbh_rows(path: Path) -> list[dict]:
    """bbh/<task>.json ({"examples": [{input, target}]}) -> SaylorTwift/bbh rows."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    return [{"input": ex["input"], "target": ex["target"]} for ex in data["examples"]]


def _bbh_loader(task: str):
    """The loader of one BBH sub-task: its test split (the CoT prompt file is read by `bbh_fewshot`)."""

    def load(data_dir: Path) -> dict:
        return {"test": _bbh_rows(data_dir / "bbh" / "bbh" / f"{task}.json")}

    load.__name__ = f"bbh_{task}"
    load.__doc__ = f"BBH {task}: test split from bbh/bbh/{task}.json."
    return load


for _task in BBH_TASKS:
    register(f"bbh_{_task}", files=[f"bbh/bbh/{_task}.json", f"bbh/cot-prompts/{_task}.txt"])(_bbh_loader(_task))


def parse_cot_prompt(text: str) -> list[dict]:
    """An official BBH cot-prompts/<task>.txt -> its exemplars as few-shot docs.

    The file is: a canary line, a "-----" line, the task instruction, then "\\n\\nQ: <input>\\nA: Let's
    think step by step.<sep><reasoning ending in 'So the answer is X.'>" three times, where <sep> is
    "\\n" (" " in sports_understanding). Each exemplar becomes {"prefix", "input", "target"}: target is
    <sep> + the reasoning; prefix is the instruction + "\\n\\n" on the first exemplar and "" on the
    others, so that the few-shot context reproduces the file verbatim.
    """
    head, sep, body = text.partition("-----\n")
    if not sep:
        raise ValueError("no '-----' header line")
    instruction, sep, rest = body.partition("\n\nQ: ")
    if not sep:
        raise ValueError("no 'Q: ' exemplar after the instruction")
    shots = []
    for block in rest.rstrip("\n").split("\n\nQ: "):
        question, sep, reasoning = block.partition(_COT_CUE)
        if not sep:
            raise ValueError(f"exemplar without {_COT_CUE!r}")
        shots.append({"prefix": "", "input": question, "target": reasoning})
    shots[0]["prefix"] = instruction + "\n\n"
    return shots


def _lm_eval_cot_samples(task: str) -> list[dict]:
    """The same exemplars from lm-eval's bundled bbh/cot_fewshot/<task>.yaml (hub runs, no data dir)."""
    import yaml
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / "bbh" / "cot_fewshot" / f"{task}.yaml"
    with open(path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    # lm-eval puts "\n" between the cue and the reasoning everywhere; the official files do too,
    # except sports_understanding (" "). With that separator restored the text is identical (tested).
    sep = _COT_SEP_EXCEPTIONS.get(task, "\n")
    shots = [{"prefix": "", "input": s["input"], "target": sep + s["target"]} for s in cfg["fewshot_config"]["samples"]]
    shots[0]["prefix"] = cfg["description"]
    return shots


def bbh_fewshot(task: str) -> list[dict]:
    """The 3 CoT exemplars of a BBH task: from <data dir>/bbh/cot-prompts/<task>.txt when a data dir
    is set (PHI2EVAL_DATA_DIR), else from lm-eval's cot_fewshot YAML (the same text; a test checks)."""
    data_dir = paths.data_dir()
    if data_dir is None:
        return _lm_eval_cot_samples(task)
    path = data_dir / "bbh" / "cot-prompts" / f"{task}.txt"
    if not path.is_file():
        raise DataError(f"missing data file {path} for bbh_{task}: put the official BBH cot-prompts file there "
                        "or unset --data-dir/PHI2EVAL_DATA_DIR to use lm-eval's copy")
    try:
        return parse_cot_prompt(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{path}: not an official BBH CoT prompt file ({exc})") from exc


# One zero-argument function per task, because lm-eval calls `fewshot_config.samples` with no
# arguments; configs/tasks/bbh/bbh_<task>.yaml points at `bbh_fewshot_<task>`.
def bbh_fewshot_boolean_expressions(): return bbh_fewshot("boolean_expressions")  # noqa: E704
def bbh_fewshot_causal_judgement(): return bbh_fewshot("causal_judgement")  # noqa: E704
def bbh_fewshot_date_understanding(): return bbh_fewshot("date_understanding")  # noqa: E704
def bbh_fewshot_disambiguation_qa(): return bbh_fewshot("disambiguation_qa")  # noqa: E704
def bbh_fewshot_dyck_languages(): return bbh_fewshot("dyck_languages")  # noqa: E704
def bbh_fewshot_formal_fallacies(): return bbh_fewshot("formal_fallacies")  # noqa: E704
def bbh_fewshot_geometric_shapes(): return bbh_fewshot("geometric_shapes")  # noqa: E704
def bbh_fewshot_hyperbaton(): return bbh_fewshot("hyperbaton")  # noqa: E704
def bbh_fewshot_logical_deduction_five_objects(): return bbh_fewshot("logical_deduction_five_objects")  # noqa: E704
def bbh_fewshot_logical_deduction_seven_objects(): return bbh_fewshot("logical_deduction_seven_objects")  # noqa: E704
def bbh_fewshot_logical_deduction_three_objects(): return bbh_fewshot("logical_deduction_three_objects")  # noqa: E704
def bbh_fewshot_movie_recommendation(): return bbh_fewshot("movie_recommendation")  # noqa: E704
def bbh_fewshot_multistep_arithmetic_two(): return bbh_fewshot("multistep_arithmetic_two")  # noqa: E704
def bbh_fewshot_navigate(): return bbh_fewshot("navigate")  # noqa: E704
def bbh_fewshot_object_counting(): return bbh_fewshot("object_counting")  # noqa: E704
def bbh_fewshot_penguins_in_a_table(): return bbh_fewshot("penguins_in_a_table")  # noqa: E704
def bbh_fewshot_reasoning_about_colored_objects(): return bbh_fewshot("reasoning_about_colored_objects")  # noqa: E704
def bbh_fewshot_ruin_names(): return bbh_fewshot("ruin_names")  # noqa: E704
def bbh_fewshot_salient_translation_error_detection(): return bbh_fewshot("salient_translation_error_detection")  # noqa: E704
def bbh_fewshot_snarks(): return bbh_fewshot("snarks")  # noqa: E704
def bbh_fewshot_sports_understanding(): return bbh_fewshot("sports_understanding")  # noqa: E704
def bbh_fewshot_temporal_sequences(): return bbh_fewshot("temporal_sequences")  # noqa: E704
def bbh_fewshot_tracking_shuffled_objects_five_objects(): return bbh_fewshot("tracking_shuffled_objects_five_objects")  # noqa: E704
def bbh_fewshot_tracking_shuffled_objects_seven_objects(): return bbh_fewshot("tracking_shuffled_objects_seven_objects")  # noqa: E704
def bbh_fewshot_tracking_shuffled_objects_three_objects(): return bbh_fewshot("tracking_shuffled_objects_three_objects")  # noqa: E704
def bbh_fewshot_web_of_lies(): return bbh_fewshot("web_of_lies")  # noqa: E704
def bbh_fewshot_word_sorting(): return bbh_fewshot("word_sorting")  # noqa: E704


# ---- GSM8K ----

@register("gsm8k", files=["gsm8k/test.jsonl"])
def gsm8k(data_dir: Path) -> dict:
    """GSM8K test (1319): question, answer (solution ending in '#### N'), as openai/gsm8k main."""
    return {"test": [{"question": r["question"], "answer": r["answer"]} for r in read_jsonl(data_dir / "gsm8k/test.jsonl")]}


# ---- SQuAD v2 ----

def squad_rows(data: dict) -> list[dict]:
    """Canonical SQuAD JSON (version, data[title, paragraphs[context, qas]]) -> rajpurkar/squad_v2 rows.

    Unanswerable questions (is_impossible, empty `answers`) get answers {text: [], answer_start: []};
    `plausible_answers` are dropped, as on the hub.
    """
    rows = []
    for article in data["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                answers = [] if qa.get("is_impossible") else qa["answers"]
                rows.append({
                    "id": qa["id"], "title": article["title"], "context": para["context"], "question": qa["question"],
                    "answers": {"text": [a["text"] for a in answers], "answer_start": [int(a["answer_start"]) for a in answers]},
                })
    return rows


@register("squad_v2", files=["squad_v2/dev-v2.0.json"])
def squad_v2(data_dir: Path) -> dict:
    """SQuAD v2.0 dev (11873 questions) as the hub's validation split."""
    with open(data_dir / "squad_v2/dev-v2.0.json", encoding="utf-8") as fh:
        data = json.load(fh)
    if not str(data.get("version", "")).startswith("v2"):
        raise ValueError(f"squad_v2/dev-v2.0.json has version {data.get('version')!r}, expected v2.0")
    return {"validation": squad_rows(data)}
