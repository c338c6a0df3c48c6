"""Time the sandbox on the HumanEval canonical solutions and the MBPP reference solutions.

    python scripts/bench_sandbox.py [--data-dir ../shared/data] [--workers N] [--only humaneval|mbpp]

Prints, per benchmark: programs run, passes, workers, wall time and programs per second.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals import sandbox  # noqa: E402
from evals.loaders import code as loaders  # noqa: E402
from evals.scoring import code  # noqa: E402


def main() -> int:
    default_dir = os.environ.get("PHI2EVAL_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(default_dir))
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--only", choices=["humaneval", "mbpp"])
    args = parser.parse_args()
    jobs = {"humaneval": lambda: [(d, d["canonical_solution"]) for d in loaders.humaneval(args.data_dir)["test"]],
            "mbpp": lambda: [(d, d["code"]) for d in loaders.mbpp(args.data_dir)["test"]]}
    print(f"isolation: {','.join(sorted(sandbox.isolation())) or 'rlimits only'}; "
          f"cpus: {os.cpu_count()}; workers: {args.workers}; load average: {os.getloadavg()[0]:.2f}")
    ok = True
    for name, make in jobs.items():
        if args.only and name != args.only:
            continue
        pairs = make()
        start = time.monotonic()
        outcomes = code.execute(name, pairs, workers=args.workers)
        wall = time.monotonic() - start
        passed = sum(bool(o["passed"]) for o in outcomes)
        ok &= passed == len(pairs)
        print(f"{name}: {passed}/{len(pairs)} passed, workers {args.workers}, wall {wall:.1f} s, "
              f"{len(pairs) / wall:.1f} programs/s")
        for (doc, _), o in zip(pairs, outcomes):
            if not o["passed"]:
                print(f"  {doc['task_id']}: {o['status']} {o['reason']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
