"""Generative loaders (BBH, GSM8K, SQuAD v2) on hand-written fixtures, the BBH CoT exemplar sources,
and the task YAMLs through lm-eval (render one prompt each; an oracle fake model scores 100%)."""

import json
import os
import re
from pathlib import Path

import pytest

from evals.loaders import generative as gen
from tests.fakes import GenerateOnlyLM

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "generative"
DATA = Path(os.environ.get("PHI2EVAL_DATA_DIR", REPO.parent / "shared" / "data"))
TASKS_DIR = REPO / "configs" / "tasks"
CUE = "\nA: Let's think step by step."

needs_data = pytest.mark.skipif(not (DATA / "bbh").is_dir() or not (DATA / "gsm8k").is_dir()
                                or not (DATA / "squad_v2").is_dir(), reason=f"no real data under {DATA}")


# ---- loaders on fixtures ----

def test_bbh_loader_fixture():
    rows = gen._bbh_loader("boolean_expressions")(FIXTURES)
    assert rows == {"test": [{"input": "True and not False is", "target": "True"},
                             {"input": "not ( True or False ) is", "target": "False"}]}


def test_gsm8k_loader_fixture():
    rows = gen.gsm8k(FIXTURES)["test"]
    assert [set(r) for r in rows] == [{"question", "answer"}] * 2
    assert rows[1]["answer"].endswith("#### 950")


def test_squad_loader_fixture_hub_schema():
    rows = gen.squad_v2(FIXTURES)["validation"]
    assert [r["id"] for r in rows] == ["q1", "q2", "q3"]
    assert rows[0] == {"id": "q1", "title": "Toyland", "context": rows[0]["context"], "question": "When was Toyland founded?",
                       "answers": {"text": ["1901", "in 1901"], "answer_start": [35, 32]}}
    assert rows[1]["answers"] == {"text": [], "answer_start": []}  # unanswerable: plausible answers dropped
    assert rows[2]["title"] == "Second"


def test_squad_loader_rejects_v1(tmp_path):
    (tmp_path / "squad_v2").mkdir()
    (tmp_path / "squad_v2" / "dev-v2.0.json").write_text(json.dumps({"version": "1.1", "data": []}))
    with pytest.raises(ValueError, match="expected v2.0"):
        gen.squad_v2(tmp_path)


def test_registered_with_their_files():
    from evals import loaders

    assert loaders.get("gsm8k").files == ("gsm8k/test.jsonl",)
    assert loaders.get("squad_v2").files == ("squad_v2/dev-v2.0.json",)
    assert len(gen.BBH_TASKS) == 27
    for task in gen.BBH_TASKS:
        assert loaders.get(f"bbh_{task}").files == (f"bbh/bbh/{task}.json", f"bbh/cot-prompts/{task}.txt")
        assert callable(getattr(gen, f"bbh_fewshot_{task}"))


# ---- BBH CoT exemplars ----

def test_parse_cot_prompt_fixture_round_trips():
    text = (FIXTURES / "bbh/cot-prompts/boolean_expressions.txt").read_text()
    shots = gen.parse_cot_prompt(text)
    assert [s["input"] for s in shots] == ["True is", "not True is", "True and True is"]
    assert shots[0]["prefix"] == "Decide whether a toy expression is true.\n\n"
    assert shots[1]["prefix"] == shots[2]["prefix"] == ""
    assert shots[1]["target"] == " not True = False. So the answer is False."  # " " separator kept
    rendered = "\n\n".join(s["prefix"] + "Q: " + s["input"] + CUE + s["target"] for s in shots)
    assert rendered == text.partition("-----\n")[2]


@pytest.mark.parametrize("text", ["no header\nQ: x\nA: Let's think step by step.\ny",
                                  "c\n-----\nInstruction only.",
                                  "c\n-----\nI.\n\nQ: x\nA: no cue here"])
def test_parse_cot_prompt_rejects_malformed(text):
    with pytest.raises(ValueError):
        gen.parse_cot_prompt(text)


def test_bbh_fewshot_reads_data_dir(monkeypatch):
    monkeypatch.setenv("PHI2EVAL_DATA_DIR", str(FIXTURES))
    assert gen.bbh_fewshot_boolean_expressions()[0]["input"] == "True is"
    from evals.errors import DataError
    with pytest.raises(DataError, match="cot-prompts/snarks.txt"):
        gen.bbh_fewshot("snarks")


def test_bbh_fewshot_without_data_dir_uses_lm_eval(monkeypatch):
    monkeypatch.delenv("PHI2EVAL_DATA_DIR", raising=False)
    shots = gen.bbh_fewshot("boolean_expressions")
    assert len(shots) == 3 and shots[0]["prefix"].startswith("Evaluate the result of a random Boolean expression.")
    assert shots[0]["target"].startswith("\n") and shots[2]["target"].endswith("So the answer is True.")


@needs_data
@pytest.mark.integration
@pytest.mark.parametrize("task", gen.BBH_TASKS)
def test_bbh_official_file_equals_lm_eval_copy_and_round_trips(task, monkeypatch):
    monkeypatch.setenv("PHI2EVAL_DATA_DIR", str(DATA))
    from_file = gen.bbh_fewshot(task)
    assert from_file == gen._lm_eval_cot_samples(task)
    text = (DATA / "bbh" / "cot-prompts" / f"{task}.txt").read_text(encoding="utf-8")
    rendered = "\n\n".join(s["prefix"] + "Q: " + s["input"] + CUE + s["target"] for s in from_file)
    assert rendered == text.partition("-----\n")[2].rstrip("\n")
    assert all(s["target"].rstrip().endswith(".") and "So the answer is" in s["target"] for s in from_file)


# ---- the YAMLs through lm-eval ----

def _task_manager():
    from lm_eval.tasks import TaskManager
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@needs_data
@pytest.mark.integration
def test_yamls_load_and_render_one_prompt_each(monkeypatch):
    monkeypatch.setenv("PHI2EVAL_DATA_DIR", str(DATA))
    tasks = _task_manager().load(["gsm8k", "squad_v2", "bbh"])["tasks"]
    assert len(tasks) == 29
    for name, task in tasks.items():
        doc = next(iter(task.eval_docs))
        prompt = task.fewshot_context(doc, num_fewshot=task.config.num_fewshot)
        if name.startswith("bbh_"):
            sub = name[len("bbh_"):]
            official = (DATA / "bbh" / "cot-prompts" / f"{sub}.txt").read_text(encoding="utf-8")
            assert prompt == official.partition("-----\n")[2].rstrip("\n") + "\n\nQ: " + doc["input"] + CUE, name
        elif name == "gsm8k":
            assert prompt.count("\n\nQ: ") == 8 and prompt.endswith(f"Q: {doc['question']}\nA:")
        else:
            assert prompt.count("\n\nAnswer: ") == 2 and prompt.endswith(f"Question: {doc['question']}\n\nAnswer:")
            assert "Answer: France\n\n" in prompt and "Answer: unanswerable\n\n" in prompt
    assert len(tasks["gsm8k"].eval_docs) == 1319
    assert len(tasks["squad_v2"].eval_docs) == 11871
    assert sum(len(t.eval_docs) for n, t in tasks.items() if n.startswith("bbh_")) == 6511


def _yaml_metadata(rel: str) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml
    return load_yaml(TASKS_DIR / rel, resolve_func=False)["metadata"]["phi2"]


def test_phi2_metadata_blocks():
    assert _yaml_metadata("bbh/bbh.yaml")["primary_metric"] == "exact_match,get-answer"
    assert _yaml_metadata("gsm8k.yaml")["primary_metric"] == "exact_match,strict-match"
    assert _yaml_metadata("squad_v2.yaml")["primary_metric"] == "f1"  # lm-eval key "f1,none"
    for rel, category, shots in [("bbh/bbh.yaml", "bbh", 3), ("gsm8k.yaml", "math", 8), ("squad_v2.yaml", "language", 2)]:
        meta = _yaml_metadata(rel)
        assert (meta["category"], meta["shots"]) == (category, shots)
        assert meta["protocol"] and "published.md" in meta["source"] and meta["split"]


def test_generated_bbh_configs_are_current(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_bbh_configs", REPO / "scripts" / "gen_bbh_configs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "OUT", tmp_path)
    mod.main()
    for path in tmp_path.iterdir():
        assert path.read_text() == (TASKS_DIR / "bbh" / path.name).read_text(), path.name


class _OracleLM:
    """A fake model that answers every generative prompt correctly, in each benchmark's format."""

    def __init__(self):
        self.answers = {}
        for path in (DATA / "bbh" / "bbh").glob("*.json"):
            for ex in json.loads(path.read_text(encoding="utf-8"))["examples"]:
                self.answers[ex["input"]] = f"\nLet me work it out. So the answer is {ex['target']}."
        for line in (DATA / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            self.answers[row["question"]] = f" Some steps. The answer is {row['answer'].split('####')[-1].strip()}.\n\n"
        for row in gen.squad_v2(DATA)["validation"]:
            gold = row["answers"]["text"][0] if row["answers"]["text"] else "unanswerable"
            self.answers[(row["context"], row["question"])] = f" {gold}"

    def answer(self, prompt: str) -> str:
        last = prompt.rpartition("\n\nQ: ")[2]
        if last.endswith(CUE):
            return self.answers[last[: -len(CUE)]]
        if last.endswith("\nA:"):
            return self.answers[last[: -len("\nA:")]]
        m = re.search(r"Background: (.*)\n\nQuestion: (.*)\n\nAnswer:$", prompt.rpartition("Title: ")[2], re.S)
        return self.answers[(m.group(1), m.group(2))]


@needs_data
@pytest.mark.integration
def test_oracle_model_scores_100_under_the_primary_metric_keys(monkeypatch):
    import lm_eval

    monkeypatch.setenv("PHI2EVAL_DATA_DIR", str(DATA))
    oracle = _OracleLM()

    out = lm_eval.simple_evaluate(model=GenerateOnlyLM(oracle.answer), tasks=["bbh", "gsm8k", "squad_v2"],
                                  task_manager=_task_manager(),
                                  limit=4, log_samples=False)
    res = out["results"]
    assert res["bbh"]["exact_match,get-answer"] == 1.0
    assert res["gsm8k"]["exact_match,strict-match"] == 1.0
    assert res["gsm8k"]["exact_match,flexible-extract"] == 1.0
    assert res["squad_v2"]["f1,none"] == 1.0 and res["squad_v2"]["exact_match,none"] == 1.0
    assert res["bbh_snarks"]["exact_match,get-answer"] == 1.0
    # the runner finds each primary metric in lm-eval's results the way evals.run does
    from evals import config, run
    for bench in config.select(["bbh", "gsm8k", "squad_v2"]):
        table = run.metric_table(res[bench.name])
        assert table[bench.primary_metric]["value"] == 1.0, bench.name
        assert table[bench.primary_metric]["stderr"] is not None, bench.name


@needs_data
@pytest.mark.integration
def test_bbh_group_is_the_unweighted_mean_of_tasks(monkeypatch):
    """Right only on penguins_in_a_table: the BBH score must be 1/27 whatever the task sizes."""
    import lm_eval

    monkeypatch.setenv("PHI2EVAL_DATA_DIR", str(DATA))
    oracle = _OracleLM()
    penguins = {ex["input"] for ex in json.loads((DATA / "bbh/bbh/penguins_in_a_table.json").read_text())["examples"]}

    def answer(ctx: str) -> str:
        question = ctx.rpartition("\n\nQ: ")[2][: -len(CUE)]
        return oracle.answer(ctx) if question in penguins else "So the answer is (Z)."

    res = lm_eval.simple_evaluate(model=GenerateOnlyLM(answer), tasks=["bbh"], task_manager=_task_manager(),
                                  limit=0.02, log_samples=False)["results"]  # 5 docs per task, 2 of penguins
    assert res["bbh_penguins_in_a_table"]["exact_match,get-answer"] == 1.0
    assert res["bbh"]["exact_match,get-answer"] == pytest.approx(1 / 27)
