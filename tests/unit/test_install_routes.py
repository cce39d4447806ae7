"""The two install routes install the same things: `make setup` (pip into .venv) and the
README's conda line (environment.yml, then the same post-install script)."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def make_setup_lines() -> list[str]:
    """The recipe of the Makefile's install stamp, one command per line."""
    recipe = ROOT.joinpath("Makefile").read_text().split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in recipe.splitlines()[1:]
            if line.strip() and not line.strip().startswith("#")]


def test_conda_installs_what_make_setup_installs():
    pip_line = next(line for line in make_setup_lines() if "pip install" in line)
    make_args = pip_line.split("pip install", 1)[1].replace('"', "").split()
    make_args = [a for a in make_args if not a.startswith(("-q", "--disable"))]
    env = yaml.safe_load(ROOT.joinpath("environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_args = " ".join(pip_section).split()
    assert conda_args == make_args, (conda_args, make_args)
    py = re.search(r"python=(\d+\.\d+)", " ".join(map(str, env["dependencies"]))).group(1)
    assert py in ROOT.joinpath("Makefile").read_text(), "the two routes name other Pythons"


def test_both_routes_run_the_post_install_script():
    assert any(line.endswith("scripts/post_install.py") for line in make_setup_lines())
    for name in ("README.md", "environment.yml"):
        text = " ".join(ROOT.joinpath(name).read_text().split())
        assert re.search(r"conda env create -f environment\.yml && conda activate \S+ && "
                         r"python scripts/post_install\.py", text), name
