"""Widget latency in a real browser: p50 / p95 from input to redrawn output, per control.

Runs the browser tests (JupyterLab in headless Chromium; tests/browser/test_widgets.py),
which move every control of every notebook and record each move's latency, then prints the
table against the budgets: 0.5 s p95 for redraws from cached results, 2 s p95 for controls
that compute. `--no-run` prints the table of the last run (build/browser/latency.json).

    python benchmarks/widget_latency.py [-k 03_grad_cam] [--no-run]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LATENCY = ROOT / "build" / "browser" / "latency.json"
BUDGET = {"cached": 0.5, "compute": 2.0}


def table(latency: dict[str, list[float]]) -> str:
    """Markdown table: notebook · control, kind, moves, p50, p95, budget, within it."""
    rows = ["| notebook · control | kind | moves | p50 (s) | p95 (s) | budget p95 (s) | ok |",
            "|---|---|---|---|---|---|---|"]
    for key in sorted(latency, key=lambda k: k.split(" | ", 1)[1]):
        kind, name = key.split(" | ", 1)
        times = np.asarray(latency[key])
        p50, p95 = np.percentile(times, 50), np.percentile(times, 95)
        rows.append(f"| {name} | {kind} | {len(times)} | {p50:.2f} | {p95:.2f} | "
                    f"{BUDGET[kind]:.1f} | {'yes' if p95 <= BUDGET[kind] else 'NO'} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="pytest -k expression (default: every notebook)")
    parser.add_argument("--no-run", action="store_true", help="print the last run's table")
    args = parser.parse_args()
    if not args.no_run:
        LATENCY.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               str(ROOT / "tests" / "browser" / "test_widgets.py")]
        if args.k:
            cmd += ["-k", args.k]
        if subprocess.run(cmd, cwd=ROOT).returncode:
            print("browser tests failed; the table below holds what was measured")
    if not LATENCY.exists():
        print(f"no measurements in {LATENCY}")
        return 1
    print(table(json.loads(LATENCY.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
