"""Code scoring: pass@k on literal numbers, test programs, and real solutions through the sandbox."""

import math
import os
from pathlib import Path

import pytest

from evals.scoring import code

DATA_DIR = Path(os.environ.get("PHI2EVAL_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))


@pytest.mark.parametrize("n,c,k,expected", [
    (5, 0, 1, 0.0), (5, 5, 1, 1.0), (10, 3, 1, 0.3), (4, 1, 2, 0.5),
    (10, 3, 5, 1 - 21 / 252), (2, 1, 2, 1.0), (1, 1, 1, 1.0),
    (200, 13, 10, 1 - math.comb(187, 10) / math.comb(200, 10)),
])
def test_pass_at_k_literal_numbers(n, c, k, expected):
    assert code.pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        code.pass_at_k(3, 4, 1)


HE_DOC = {"task_id": "T/0", "prompt": "def inc(x):\n    \"\"\"x + 1\"\"\"\n", "entry_point": "inc",
          "test": "def check(candidate):\n    assert candidate(1) == 2\n", "canonical_solution": "    return x + 1\n"}
MBPP_DOC = {"task_id": 11, "text": "Add one.", "code": "def inc(x):\r\n  return x + 1", "test_setup_code": "",
            "test_list": ["assert inc(1) == 2", "assert inc(-1) == 0"], "challenge_test_list": []}


def test_humaneval_program_is_prompt_completion_test_check():
    program = code.humaneval_program(HE_DOC, "    return x + 1\n")
    assert program == ("def inc(x):\n    \"\"\"x + 1\"\"\"\n    return x + 1\n\n\n"
                       "def check(candidate):\n    assert candidate(1) == 2\n\n\ncheck(inc)\n")


def test_mbpp_program_puts_imports_first_and_setup_after_the_code():
    doc = {**MBPP_DOC, "test_imports": ["import math"], "test_setup_code": "y = 1"}
    assert code.mbpp_program(doc, "def inc(x): return x + y") == (
        "import math\ndef inc(x): return x + y\ny = 1\nassert inc(1) == 2\nassert inc(-1) == 0\n")
    assert code.mbpp_code("def f():\n  return 1\n[DONE]\nmore text") == "def f():\n  return 1"


def test_score_code_samples_marks_each_sample():
    samples = [{"doc_id": 0, "generation": "    return x + 1\n"},
               {"doc_id": 0, "generation": "    return x\n"},
               {"doc_id": 0, "generation": "    import os; os._exit(0)\n"},
               {"doc_id": 0, "generation": ["    return x + 1\n", "    while True: pass\n"]}]
    scored = code.score_code_samples("humaneval", samples, docs=[HE_DOC], timeout_s=1.5)
    assert [s["passed"] for s in scored[:3]] == [True, False, False]
    assert scored[1]["status"] == "failed" and "AssertionError" in scored[1]["reason"]
    assert scored[2]["reason"].startswith("exited with code 0")
    assert scored[3]["passed"] == [True, False] and scored[3]["status"] == ["passed", "timeout"]
    assert scored[3]["pass@1"] == 0.5
    assert "passed" not in samples[0]  # inputs are not modified


def test_mbpp_sample_with_doc_inline():
    scored = code.score_code_samples("mbpp", [{"doc": MBPP_DOC, "prediction": MBPP_DOC["code"] + "\n[DONE]"}])
    assert scored[0]["passed"] is True and scored[0]["correct"] == 1.0


def test_no_exec_switch_saves_without_running(monkeypatch):
    monkeypatch.setenv("PHI2EVAL_NO_EXEC", "1")
    scored = code.score_code_samples("humaneval", [{"doc": HE_DOC, "generation": "    return x + 1\n"}])
    assert scored[0]["status"] == "not_run" and scored[0]["passed"] is None
    assert math.isnan(code.process_results(HE_DOC, [[{"passed": None}]])["pass@1"])


def test_filter_and_process_results_as_lm_eval_calls_them():
    outcomes = code.humaneval_filter([["    return x + 1\n"], ["    return 0\n"]], [HE_DOC, HE_DOC])
    assert [[o["passed"] for o in doc] for doc in outcomes] == [[True], [False]]
    assert outcomes[0][0]["generation"] == "    return x + 1\n"
    assert code.process_results(HE_DOC, [outcomes[0]]) == {"pass@1": 1.0}
    assert code.process_results(HE_DOC, [outcomes[1]]) == {"pass@1": 0.0}


@pytest.fixture(scope="module")
def data_dir():
    if not (DATA_DIR / "humaneval" / "HumanEval.jsonl.gz").is_file():
        pytest.skip(f"no real data under {DATA_DIR} (set PHI2EVAL_DATA_DIR)")
    return DATA_DIR


@pytest.mark.integration
@pytest.mark.slow
def test_humaneval_canonical_solutions_all_pass(data_dir):
    from evals.loaders.code import humaneval

    docs = humaneval(data_dir)["test"]
    assert len(docs) == 164
    outcomes = code.execute("humaneval", [(d, d["canonical_solution"]) for d in docs])
    failed = [(d["task_id"], o["reason"]) for d, o in zip(docs, outcomes) if not o["passed"]]
    assert failed == []


@pytest.mark.integration
@pytest.mark.slow
def test_mbpp_reference_solutions_pass_all_500_test_problems(data_dir):
    from evals.loaders.code import mbpp

    docs = mbpp(data_dir)["test"]
    assert [d["task_id"] for d in docs] == list(range(11, 511))
    outcomes = code.execute("mbpp", [(d, d["code"]) for d in docs])
    failed = [(d["task_id"], o["reason"]) for d, o in zip(docs, outcomes) if not o["passed"]]
    assert failed == []


@pytest.mark.integration
def test_humaneval_wrong_completions_fail(data_dir):
    from evals.loaders.code import humaneval

    docs = humaneval(data_dir)["test"][:8]
    outcomes = code.execute("humaneval", [(d, "    return None\n") for d in docs])
    assert not any(o["passed"] for o in outcomes)


@pytest.mark.integration
@pytest.mark.slow
def test_lm_eval_tasks_score_an_oracle_model(data_dir, monkeypatch):
    """configs/tasks/{humaneval,mbpp}.yaml through lm-eval: right answers score 1, wrong ones 0."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from evals import paths
    from evals.loaders.code import humaneval, mbpp
    from tests.fakes import GenerateOnlyLM

    monkeypatch.setenv("PHI2EVAL_DATA_DIR", str(data_dir))
    he = {d["prompt"]: d["canonical_solution"] for d in humaneval(data_dir)["test"]}
    mb = mbpp(data_dir)["test"]

    def oracle(right: bool):
        def answer(ctx: str) -> str:
            if ctx in he:
                return he[ctx] if right else "    pass\n"
            assert ctx.count("[BEGIN]") == 4 and ctx.endswith("[BEGIN]\n")  # 3 exemplars + the task
            task = ctx.rsplit("You are an expert Python programmer", 1)[1]
            doc = next(d for d in mb if f"task: {d['text']} Your code" in task)
            return doc["code"] if right else "def nothing(): pass"
        return GenerateOnlyLM(answer)

    tm = TaskManager(include_path=str(paths.tasks_dir()), include_defaults=False)
    for right, expected in ((True, 1.0), (False, 0.0)):
        out = simple_evaluate(model=oracle(right), tasks=["humaneval", "mbpp"], task_manager=tm, limit=4,
                              log_samples=True, verbosity="ERROR")
        assert out["results"]["humaneval"]["pass@1,exec"] == expected
        assert out["results"]["mbpp"]["pass@1,exec"] == expected
    sample = out["samples"]["mbpp"][0]
    assert sample["filtered_resps"][0][0]["status"] == "failed"
