"""Execute notebooks with papermill: `make figures` runs every one with its default parameters.

Executed copies go to build/notebooks/ (ignored); figures land in figures/ through
xai_utils.save_figure. Prints how long each notebook took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import papermill as pm

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="default: notebooks/*.ipynb")
    parser.add_argument("--out", default=str(ROOT / "build" / "notebooks"))
    parser.add_argument("-p", "--parameters", default="{}", help="JSON dict of parameters")
    args = parser.parse_args()
    paths = [Path(p) for p in args.notebooks] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = json.loads(args.parameters)
    params.setdefault("INTERACTIVE", False)
    total, failed = time.perf_counter(), []
    for path in paths:
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(path), str(out / path.name), parameters=params,
                                kernel_name="python3", cwd=str(path.parent), progress_bar=False)
            status = "ok"
        except pm.PapermillExecutionError as err:
            status, _ = f"FAILED: {err.ename}: {err.evalue}", failed.append(path.name)
        print(f"{path.name:<32} {time.perf_counter() - start:7.1f} s  {status}", flush=True)
    print(f"{'total':<32} {time.perf_counter() - total:7.1f} s")
    if update_readme():
        print("README.md: results tables updated from figures/08_benchmark_tables.md")
    return 1 if failed else 0


def update_readme(tables: Path = ROOT / "figures" / "08_benchmark_tables.md",
                  readme: Path = ROOT / "README.md") -> bool:
    """Put the benchmark notebook's tables between the README's results markers."""
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    text = readme.read_text()
    if not tables.exists() or start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    readme.write_text(f"{head}{start}\n{tables.read_text().strip()}\n{end}{tail}")
    return True


if __name__ == "__main__":
    sys.exit(main())
