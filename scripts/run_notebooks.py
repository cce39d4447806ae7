"""Execute notebooks with papermill: `make figures` runs every one with its default parameters.

Executed copies go to build/notebooks/ (ignored); figures land in figures/ through
xai_utils.save_figure. Prints how long each notebook took and, from the previous run's
times, an estimate of what is left. Afterwards the README's results tables (notebook 08)
and its highlights (each notebook's rendered "What we saw", figures/<notebook>_summary.md)
are refreshed from this run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import papermill as pm

from xai_utils.notebook import execute

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
    times_file = out / "times.json"
    previous = json.loads(times_file.read_text()) if times_file.exists() else {}
    total, failed, times = time.perf_counter(), [], {}
    for i, path in enumerate(paths):
        left = sum(previous.get(p.name, 0.0) for p in paths[i:])
        if left:
            print(f"{path.name:<32} starting; about {left / 60:.0f} min left (last run's times)",
                  flush=True)
        start = time.perf_counter()
        try:
            execute(path, out / path.name, params)
            status = "ok"
        except pm.PapermillExecutionError as err:
            status, _ = f"FAILED: {err.ename}: {err.evalue}", failed.append(path.name)
        times[path.name] = time.perf_counter() - start
        print(f"{path.name:<32} {times[path.name]:7.1f} s  {status}", flush=True)
    print(f"{'total':<32} {time.perf_counter() - total:7.1f} s")
    times_file.write_text(json.dumps({**previous, **times}, indent=1))
    if update_readme():
        print("README.md: results tables updated from figures/08_benchmark_tables.md")
    if update_readme(highlights(), "highlights"):
        print("README.md: highlights updated from figures/*_summary.md")
    return 1 if failed else 0


def highlights(figures: Path = ROOT / "figures") -> str:
    """Each notebook's rendered "What we saw", under the notebook's name."""
    parts = []
    for path in sorted(figures.glob("*_summary.md")):
        lines = path.read_text().strip().splitlines()
        text = "\n".join(lines[1:] if lines and lines[0].startswith("## ") else lines).strip()
        parts.append(f"**{path.stem.removesuffix('_summary')}**\n\n{text}")
    return "\n\n".join(parts)


def update_readme(content: Path | str = ROOT / "figures" / "08_benchmark_tables.md",
                  marker: str = "results", readme: Path = ROOT / "README.md") -> bool:
    """Put `content` (a file's text, or a string) between the README's markers
    `<!-- {marker}:start -->` and `<!-- {marker}:end -->`."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = readme.read_text()
    if isinstance(content, Path):
        if not content.exists():
            return False
        content = content.read_text()
    if not content.strip() or start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    readme.write_text(f"{head}{start}\n{content.strip()}\n{end}{tail}")
    return True


if __name__ == "__main__":
    sys.exit(main())
