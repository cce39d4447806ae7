"""A notebook's "What we saw" (and its headline) states a comparison only through a predicate
over its run's records: the fixed text of every summary template (what is printed whatever
the numbers) holds no comparative word outside the reviewed phrases below, which name conventions
("lower is better") or label lists filled by a predicate ("Above the centre map: {...}").

Wording chosen by a predicate (`compare(..., less=..., more=...)`, a conditional
expression, a dict of choices) is not fixed text and is not scanned: only the template
passed to `summary` and the strings put unconditionally into it (`lines = [...]`,
`lines.append("...")`, `lines += [...]`).
"""

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

COMPARATIVE = re.compile(
    r"\b(better|worse|best|worst|higher|highest|lower|lowest|beats?|outperforms?|falls?|rises?"
    r"|above|below|pass(?:es)?|fails?|more than|less than|fewer|greater|smaller|larger"
    r"|exceeds?|improves?|wins?|loses?|drops?|stronger|weaker|most|least|agrees?|disagrees?"
    r"|same as|differs?|close to|near|far from|reaches|matches)\b", re.I)

# reviewed fixed phrases: each is a convention, a definition, or the label of a list that a
# predicate fills; a comparison of this run's numbers never appears here
ALLOWED = [
    r"It is most sure on \u2026", r"least sure on \u2026",
    r"whose blurring drops the class to 1 %",
    r"The paper's order on GoogLeNet \(its mask's boxes smaller",
    r"at most \u2026 from the requested ones",
    r"above that floor: \u2026",
    r"At \u2026 most of the map for", r"and most of the map for",
    r"what a map this coarse\s+loses anyway: \u2026",
    r"pointing game separates methods only above (that level|it)",
    r"\(worst of \u2026 maps\)",
    r"differs from `jet` by at most",
    r'"above", "below", "better" and "worse" only',
    r"(Above|above|Below|below|Lower than|lower than|Higher|higher|Highest on the)"
    r"( the)?( centre| random)?( map)?( it)?( are)?:",
    r"lower than the random map are",
    r"lower (deletion|is better)( is better)?",
    r"signed correlation below\s+zero, absolute-value correlation at or above \u2026",
    r"forward\+backward passes", r"with many passes per image",
    r"at most \u2026 MB",
    r"above / below only where the paired",
    r'"above" or "below" only where the mean difference is more than 1.96 standard errors',
    r"It says where G\(x\) differs from x",
    r"Two things favour any map that peaks near the middle: the shapes are placed at least",
    r"\(lowest \u2026\)",
    r"differ from those of `nbdt`'s own decision rules on the same graph by at most \u2026",
    r"near the root the WordNet names are used up by the merges below",
    r"agrees with the network on \u2026", r"The marginal rule \(not NBDT\) agrees on \u2026",
    r"near 50 / 50 \(the two within \u2026",
    r"Highest on the \u2026 images every method explained, tied with each other:",
    r"the centre map reaches \u2026",
    r"lowest on the blurred copy, tied with each other:",
    r"Deleting to a blurred copy is close to the objective",
    r"is highest, tied with each other, for \u2026",
    r"pass \u2026; fail \u2026; unclear \u2026",
    r"the single-pass methods",
]


def _strings(node) -> list[str]:
    """The fixed text of a str constant or an f-string (its fields as '\u2026')."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return ["".join(v.value if isinstance(v, ast.Constant) else "\u2026" for v in node.values)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _strings(node.left) + _strings(node.right)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [s for e in node.elts for s in _strings(e)]
    return []


def fixed_texts(source: str) -> list[str]:
    """The unconditional text of every `summary(...)` template in a cell's source."""
    tree = ast.parse(source)
    texts = []
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "summary"
                and call.args):
            continue
        args = [call.args[0], *(k.value for k in call.keywords if k.arg == "headline")]
        names = {a.id for a in args if isinstance(a, ast.Name)}
        names |= {a.args[0].id for a in args  # "\n".join(lines)
                  if isinstance(a, ast.Call) and a.args and isinstance(a.args[0], ast.Name)}
        texts += [t for a in args for t in _strings(a)]
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id in names for t in targets):
                    texts += _strings(node.value)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and isinstance(node.func.value, ast.Name) and node.func.value.id in names
                  and node.func.attr in ("append", "extend") and node.args):
                texts += _strings(node.args[0])
    return [re.sub(r"\{[^{}]*\}", "\u2026", t) for t in texts]


def unreviewed(text: str) -> list[str]:
    flat = " ".join(text.split())
    for phrase in ALLOWED:
        flat = re.sub(phrase, " ", flat)
    return [f"...{flat[max(0, m.start() - 50):m.end() + 30]}..."
            for m in COMPARATIVE.finditer(flat)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_summary_states_no_comparison_as_fixed_text(path):
    cells = json.loads(path.read_text())["cells"]
    sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    texts = [t for s in sources if "summary(" in s for t in fixed_texts(s)]
    assert texts, f"{path.name}: no summary template found"
    found = [hit for t in texts for hit in unreviewed(t)]
    assert not found, (f"{path.name}: comparative wording in a summary's fixed text (render "
                       f"it from a predicate, e.g. xai_utils.notebook.compare): {found}")


def test_the_check_sees_a_fixed_comparison():
    """The scan finds a comparison written as fixed text in each template form it reads."""
    forms = ['summary("""Grad-CAM beats the centre map: {x:.2f}.""")',
             'template = f"CAM is better ({a})"\nsummary(template)',
             'lines = ["## What we saw"]\nlines.append("the error falls with depth")\n'
             'summary("\\n".join(lines))',
             'summary("ok {x}", headline="LRP is best")']
    for source in forms:
        assert unreviewed(" ".join(fixed_texts(source))), source
    chosen = 'lines = []\nlines.append("higher" if a > b else "lower")\nsummary("\\n".join(lines))'
    assert not unreviewed(" ".join(fixed_texts(chosen)))
