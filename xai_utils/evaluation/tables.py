"""Results tables as GitHub markdown, written beside the figures."""

from __future__ import annotations

from pathlib import Path

from xai_utils.viz import figures_dir


def markdown_table(rows: list[dict], columns: list[str], formats: dict | None = None) -> str:
    """A GitHub markdown table of `rows` (dicts) in the order of `columns`. A number whose
    row also holds `<column>_ci` ([low, high], e.g. from `harness.summarise`) is written
    with its interval: `0.412 [0.404, 0.420]` (`[n/a]` where it has none)."""
    formats = formats or {}

    def cell(row, col):
        value = row.get(col, "")
        if value is None or value == "":
            return "–"
        fmt = formats.get(col)
        if not (fmt and isinstance(value, (int, float))):
            return str(value)
        text = format(value, fmt)
        ci = row.get(f"{col}_ci")
        if ci is not None:
            known = all(isinstance(v, (int, float)) and v == v for v in ci)
            text += (f" [{format(ci[0], fmt.lstrip('+'))}, {format(ci[1], fmt.lstrip('+'))}]"
                     if known else " [n/a]")
        return text

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def save_tables(markdown: str, name: str) -> Path:
    """Write the results tables as figures/<name>.md (beside the figures; `make figures`
    copies it into the README)."""
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"table name must be a plain file name, got {name!r}")
    out = figures_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.md"
    path.write_text(markdown.rstrip() + "\n")
    return path
