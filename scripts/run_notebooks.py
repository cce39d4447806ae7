"""Execute notebooks with papermill: `make figures` runs every one with its default parameters.

Executed copies go to build/notebooks/ (ignored); figures land in figures/ through
xai_utils.save_figure. Prints how long each notebook took and, from the previous run's
times, an estimate of what is left. A run with the default parameters also publishes what
it executed: notebooks/executed/<notebook>.ipynb (the outputs, figures inline as JPEG, no
run-time metadata), docs/results.md (every notebook's "What we saw" and notebook 08's
tables) and the README's notebook table (each notebook's headline).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import time
from pathlib import Path

import papermill as pm

from xai_utils.notebook import execute

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = ROOT / "notebooks" / "executed"
FIGURES = ROOT / "figures"
RESULTS = ROOT / "docs" / "results.md"
INLINE_WIDTH, JPEG_QUALITY = 1200, 80


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
    publish = not params  # only what the default parameters produce is published
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
            if publish:
                size = publish_notebook(out / path.name, EXECUTED / path.name)
                status += f"; published {size / 1e6:.2f} MB"
        except pm.PapermillExecutionError as err:
            status, _ = f"FAILED: {err.ename}: {err.evalue}", failed.append(path.name)
        times[path.name] = time.perf_counter() - start
        print(f"{path.name:<32} {times[path.name]:7.1f} s  {status}", flush=True)
    print(f"{'total':<32} {time.perf_counter() - total:7.1f} s")
    times_file.write_text(json.dumps({**previous, **times}, indent=1))
    if publish:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(results_page())
        print(f"{RESULTS.relative_to(ROOT)}: every summary and notebook 08's tables")
        if update_readme(notebook_table(), "notebooks"):
            print("README.md: notebook table updated from figures/*_headline.md")
    return 1 if failed else 0


def jpeg(png_base64: str) -> str:
    """A PNG output as a JPEG (white behind transparency, at most INLINE_WIDTH wide)."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(png_base64)))
    rgb = Image.new("RGB", image.size, "white")
    rgb.paste(image, mask=image.getchannel("A") if image.mode in ("RGBA", "LA") else None)
    if rgb.width > INLINE_WIDTH:
        rgb = rgb.resize((INLINE_WIDTH, round(rgb.height * INLINE_WIDTH / rgb.width)),
                         Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True)
    return base64.b64encode(buffer.getvalue()).decode()


def publish_notebook(executed: Path, dest: Path) -> int:
    """Copy an executed notebook for reading on a code host: figures as JPEG (the PNGs are
    in figures/), without papermill's timings so that a regeneration changes only what the
    run changed. Returns the size in bytes."""
    nb = json.loads(executed.read_text())
    params = nb["metadata"].get("papermill", {}).get("parameters", {})
    nb["metadata"].pop("widgets", None)
    nb["metadata"]["papermill"] = {"parameters": params}
    for cell in nb["cells"]:
        for key in ("papermill", "execution"):
            cell.get("metadata", {}).pop(key, None)
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            data.pop("application/vnd.jupyter.widget-view+json", None)
            if "image/png" in data:
                png = data.pop("image/png")
                data["image/jpeg"] = jpeg("".join(png) if isinstance(png, list) else png)
                meta = output.get("metadata", {})
                if "image/png" in meta:
                    meta["image/jpeg"] = meta.pop("image/png")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return dest.stat().st_size


def title(notebook: Path) -> str:
    """The notebook's first heading without its number: "Grad-CAM: which regions ..."."""
    first = "".join(json.loads(notebook.read_text())["cells"][0]["source"]).splitlines()[0]
    return first.lstrip("# ").split("·", 1)[-1].strip()


def notebook_table(notebooks: Path = ROOT / "notebooks", figures: Path = FIGURES) -> str:
    """The README's notebook table: each notebook, what it shows, its last run's headline."""
    rows = ["| notebook | what it shows | headline of the last `make figures` run |",
            "|---|---|---|"]
    for path in sorted(notebooks.glob("*.ipynb")):
        stem = path.stem
        headline = figures / f"{stem}_headline.md"
        text = headline.read_text().strip() if headline.exists() else "not run yet"
        rows.append(f"| [`{stem}`](notebooks/executed/{path.name}) | {title(path)} | "
                    f"{text.replace('|', '/')} |")
    return "\n".join(rows)


def results_page(figures: Path = FIGURES) -> str:
    """docs/results.md: every notebook's rendered "What we saw" and notebook 08's tables."""
    parts = ["# Results of the last `make figures` run",
             "Generated by `make figures` (`scripts/run_notebooks.py`) from what each notebook "
             "recorded in that run, with the default parameters on a CPU; optimisation methods "
             "are chaotic under float rounding, so their numbers move between machines. Each "
             "notebook's executed copy, figures inline, is in `notebooks/executed/`."]
    for path in sorted(figures.glob("*_summary.md")):
        stem = path.stem.removesuffix("_summary")
        lines = path.read_text().strip().splitlines()
        text = "\n".join(lines[1:] if lines and lines[0].startswith("## ") else lines).strip()
        parts.append(f"## {stem}\n\n[executed notebook](../notebooks/executed/{stem}.ipynb)"
                     f"\n\n{text}")
        if stem.startswith("08_") and (figures / "08_benchmark_tables.md").exists():
            parts.append("![Every method on the same images](../figures/08_benchmark_grid.png)")
            parts.append((figures / "08_benchmark_tables.md").read_text().strip())
    return "\n\n".join(parts) + "\n"


def update_readme(content: str, marker: str, readme: Path = ROOT / "README.md") -> bool:
    """Put `content` between the README's markers `<!-- {marker}:start -->` and
    `<!-- {marker}:end -->`."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = readme.read_text()
    if not content.strip() or start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    readme.write_text(f"{head}{start}\n{content.strip()}\n{end}{tail}")
    return True


if __name__ == "__main__":
    sys.exit(main())
