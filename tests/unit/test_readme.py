"""The README is a front door: short, its architecture block names what the package holds,
and every link of it and of docs/ leads to a file of the repository."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_is_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= 250, f"README.md has {lines} lines; the long tables belong in docs/"


def test_architecture_block_names_every_part_of_the_package():
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- architecture:start -->", 1)[1].split("<!-- architecture:end -->")[0]
    named = {m.group(1).rstrip("/") for m in re.finditer(r"^  (\S+)", block, re.M)}
    package = ROOT / "xai_utils"
    parts = {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    parts |= {p.name for p in package.glob("*.py") if not p.name.startswith("__")}
    assert named == parts, (f"only in the README: {named - parts}; "
                            f"only in the package: {parts - named}")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_lead_to_files(page):
    links = re.findall(r"\]\(([^)#\s]+)\)", page.read_text())
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    missing = [link for link in local if not (page.parent / link).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"
