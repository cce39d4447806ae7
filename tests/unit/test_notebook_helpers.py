import json

import matplotlib
import numpy as np
import pytest
import torch

import xai_utils as xu
from xai_utils import notebook

matplotlib.use("Agg")


def test_record_and_read_back(tmp_path, capsys):
    notebook.record("acc", torch.tensor(0.5))
    notebook.record("top", {"a": np.float32(0.25), "b": [1, 2]})
    assert notebook.RECORDS["acc"] == 0.5
    fake = {"cells": [{"outputs": [{"output_type": "display_data",
                                    "data": {notebook.MIME: {"acc": 0.5}}}]},
                      {"outputs": [{"output_type": "display_data",
                                    "data": {notebook.MIME: json.dumps({"acc": 0.75})}}]}]}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(fake))
    assert notebook.read_records(path) == {"acc": 0.75}
    with pytest.raises(TypeError, match="cannot record"):
        notebook.record("bad", object())


def test_check_params():
    values = {"STEPS": 3, "LR": 1, "NAME": "x", "FLAG": True}
    notebook.check_params(values, STEPS=int, LR=float, NAME=str, FLAG=bool)
    with pytest.raises(TypeError, match="STEPS must be int, got str '3'"):
        notebook.check_params({"STEPS": "3"}, STEPS=int)
    with pytest.raises(TypeError, match="must be int, got bool"):
        notebook.check_params({"STEPS": True}, STEPS=int)
    with pytest.raises(NameError):
        notebook.check_params({}, STEPS=int)


def test_save_figure_and_overlay(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setenv("XAI_FIGURES_DIR", str(tmp_path))
    img = np.zeros((10, 20, 3), np.uint8)
    sal = torch.zeros(5, 10)
    sal[2, 3] = 1
    over = xu.overlay(img, sal, alpha=1.0)
    assert over.shape == (10, 20, 3) and 0 <= over.min() and over.max() <= 1
    assert xu.overlay(img, torch.zeros(10, 20), alpha=0.0).max() == 0
    fig = plt.figure()
    path = xu.save_figure(fig, "demo")
    plt.close(fig)
    assert path == tmp_path / "demo.png" and path.stat().st_size > 0
    with pytest.raises(ValueError):
        xu.save_figure(fig, "../escape")
