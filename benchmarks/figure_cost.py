"""Wall time of rerunning each figure notebook with `devrl figure`, as quoted in book/reproduce.md.

Two settings per notebook: from the committed data (`recompute False`, repeated, median) and the
smoke scale from scratch (`-p scale smoke -p recompute True` into empty temporary data and run
folders: training, evaluation, export and drawing). Writes benchmarks/results/figure-cost.json.
Run on an idle machine: `.venv/bin/python benchmarks/figure_cost.py [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVRL = str(Path(sys.executable).with_name("devrl"))


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([DEVRL, "figure", *args], check=True, env=env, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from devrl.book.notebooks import notebook_names

    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        figures = {**os.environ, "DEVRL_FIGURES": str(Path(scratch) / "figures")}
        for name in notebook_names():
            from_data = [timed([name], figures) for _ in range(args.repeats)]
            smoke_env = {**figures, "DEVRL_DATA": str(Path(scratch) / name / "data"),
                         "DEVRL_RUNS": str(Path(scratch) / name / "runs")}
            smoke = timed([name, "-p", "scale", "smoke", "-p", "recompute", "True"], smoke_env)
            results[name] = {"from_data_seconds": from_data,
                             "from_data_median_seconds": statistics.median(from_data),
                             "smoke_recompute_seconds": smoke}
            print(name, json.dumps(results[name]))
    out = ROOT / "benchmarks" / "results" / "figure-cost.json"
    out.write_text(json.dumps({"cpu_count": os.cpu_count(), "results": results}, indent=1) + "\n")
    print(out)


if __name__ == "__main__":
    main()
