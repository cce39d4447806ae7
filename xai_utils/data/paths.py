"""Where the repository keeps its small committed data (sample list, shapes weights)."""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
