"""The install steps pip's dependency list cannot express, run by `make setup` and, after
`conda env create -f environment.yml`, by the README's conda line:

- TorchRay, the reference for extremal perturbation and RISE: its attribution code needs only
  torch, and its declared dependencies (pymongo, ...) are not wanted, so it is installed
  without them (`pip install --no-deps`);
- WordNet 3.0 for NLTK (notebook 05 names the tree's nodes with it): `install_wordnet.py`.

    python scripts/post_install.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_DEPS = ["torchray==1.0.0.2"]


def main() -> int:
    subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                    "-q", "--no-deps", *NO_DEPS], check=True)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "install_wordnet.py")], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
