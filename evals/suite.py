"""phi2eval suite: every benchmark of a suite on one model load, then the tables."""

from pathlib import Path

import yaml

from evals import config, paths
from evals.run import RunOptions, run


def quick_limits(name: str = "quick") -> dict[str, int]:
    """Per-benchmark limits of a quick profile (configs/suites/<name>.yaml, key `limits`)."""
    path = paths.config_dir() / "suites" / f"{name}.yaml"
    with open(path) as fh:
        return {k: int(v) for k, v in (yaml.safe_load(fh) or {}).get("limits", {}).items()}


def run_suite(opts: RunOptions, suite: str = "phi2", log=print) -> list[Path]:
    """Run every benchmark of `suite` that has a config, write results, then regenerate the tables."""
    from evals import reference, tables

    wanted = reference.suite_benchmarks(reference.load_suite(suite))
    known = config.benchmarks()
    missing = [b for b in wanted if b not in known]
    if missing:
        log(f"phi2eval: suite {suite}: no config yet for {', '.join(missing)}; they show as missing in the tables")
    run([b for b in wanted if b in known], opts, log=log)
    written = tables.main(opts.output_dir, suite=suite)
    categories = Path(opts.output_dir) / "tables" / "categories.md"
    if categories.is_file():
        log("\n" + categories.read_text())
    return written
