"""phi2eval score: recompute scores from saved samples, without the model (code execution for now)."""

import json
import statistics
from pathlib import Path

from evals import config, results
from evals.errors import Phi2EvalError


def rescore_file(result_file: Path) -> dict:
    """Execute the saved generations of a humaneval/mbpp result in the sandbox and update its score."""
    from evals.run import prepare, task_manager
    from evals.scoring.code import score_code_samples

    result_file = Path(result_file)
    if not result_file.is_file():
        raise Phi2EvalError(f"no result file {result_file}: pass results/<model>/<benchmark>.json")
    result = results.read_result(result_file)
    bench = config.select([result["benchmark"]])[0]
    if bench.category != "coding":
        raise Phi2EvalError(f"{bench.name} was scored during its run; `phi2eval score` re-executes code "
                            "benchmarks (humaneval, mbpp) saved with --no-exec")
    samples = results.read_samples(result_file)
    task = next(iter(prepare([bench], task_manager())[bench.name].values()))
    scored = score_code_samples(bench.name, samples, docs=list(task.eval_docs))
    values = [s["pass@1"] for s in scored]
    score = statistics.fmean(values) if values else None
    stderr = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else None
    result.update(score=score, stderr=stderr, scored=score is not None)
    result.setdefault("metrics", {})[result["metric"]] = {"value": score, "stderr": stderr}
    samples_file = result_file.with_name(result["samples_file"])
    results.atomic_write_text(samples_file, "".join(json.dumps(s, ensure_ascii=False, default=str) + "\n" for s in scored))
    results.atomic_write_text(result_file, json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    return result
