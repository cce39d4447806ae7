import datetime
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


def test_live_picture_caption_is_the_figures_titles():
    import matplotlib.pyplot as plt

    from xai_utils.viz.live import LivePicture, titles

    fig, axes = plt.subplots(1, 2)
    fig.suptitle("chelsea")
    axes[0].set_title("tabby\n38 %")
    axes[1].set_title("left", loc="left")
    assert titles(fig) == "chelsea · tabby 38 % · left"
    picture = LivePicture()
    picture.show(fig)
    assert bytes(picture.image.value[:4]) == b"\x89PNG"
    import io

    from PIL import Image

    shown = Image.open(io.BytesIO(bytes(picture.image.value)))
    assert picture.image.width == str(shown.width)  # drawn at its own size, not stretched
    assert picture.caption.value == "chelsea · tabby 38 % · left"
    assert not plt.fignum_exists(fig.number)  # closed after drawing: no figure leaks
    picture.fail("<bad> file")
    assert "&lt;bad&gt; file" in picture.caption.value and picture.image.layout.display == "none"


def test_explorer_redraws_on_change_and_reports_errors():
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    calls = []

    def draw(name, k):
        calls.append((name, k))
        if k == 2:
            raise ValueError("no third class")
        fig, ax = plt.subplots()
        ax.set_title(f"{name} #{k + 1}")
        return fig

    image = widgets.SelectionSlider(options=["chelsea", "coffee"], description="image")
    k = widgets.IntSlider(0, 0, 2)
    box = notebook.explorer(draw, {"name": image, "k": k})
    caption = box.children[1].children[1]
    assert caption.value == "chelsea #1" and calls == [("chelsea", 0)]
    image.value = "coffee"
    assert caption.value == "coffee #1"
    k.value = 2  # an error on a change goes to the caption; the controls keep working
    assert caption.value.endswith("ValueError: no third class</span>")
    k.value = 1
    assert caption.value == "coffee #2"
    with pytest.raises(ValueError, match="no third class"):  # at creation: raised as in a cell
        notebook.explorer(draw, {"name": image, "k": widgets.IntSlider(2, 0, 2)})


def test_upload_explains_good_files_and_reports_bad_ones(tmp_path):
    import matplotlib.pyplot as plt
    from PIL import Image

    def draw(rgb, name):
        fig, ax = plt.subplots()
        ax.set_title(f"{name}: {rgb.shape[1]} x {rgb.shape[0]}")
        return fig

    box = notebook.upload(draw)
    button, caption = box.children[0], box.children[1].children[1]
    buffer = tmp_path / "cat.png"
    Image.new("RGB", (40, 30), "orange").save(buffer)

    def send(name, content):
        button.value = ({"name": name, "type": "", "size": len(content),
                         "content": memoryview(content),
                         "last_modified": datetime.datetime.now(datetime.timezone.utc)},)

    send("cat.png", buffer.read_bytes())
    assert caption.value == "cat: 40 x 30"
    send("notes.jpg", b"not an image")
    assert "ImageLoadError: notes.jpg: not an image file PIL can read" in caption.value
    send("tiny.png", buffer.read_bytes())
    assert caption.value == "tiny: 40 x 30"


def test_summary_and_headline_are_rendered_from_the_records(tmp_path, monkeypatch):
    """The summary and its headline are filled from the same records and written beside the
    figures; a field nothing recorded names what was recorded."""
    monkeypatch.setenv("XAI_FIGURES_DIR", str(tmp_path))
    monkeypatch.setattr(notebook, "RECORDS", {"score": 0.25})
    text = notebook.summary("## What we saw\n\n- score {score:.2f} ({word})", name="99_x_summary",
                            headline="The score is {score:.0%}, {word}.", word="tied")
    assert text == "## What we saw\n\n- score 0.25 (tied)"
    assert (tmp_path / "99_x_summary.md").read_text() == text + "\n"
    assert (tmp_path / "99_x_headline.md").read_text() == "The score is 25%, tied.\n"
    with pytest.raises(KeyError, match="nothing was recorded under it; recorded: \\['score'\\]"):
        notebook.summary("{missing}", headline="{score}")


def test_trend_names_runs_and_ties():
    tie = lambda u, v: abs(u - v) <= 0.01  # noqa: E731
    assert notebook.trend([3, 2, 2.005, 2.0, 5], list("abcde"), tie) == (
        "falls from a to b, then stays about the same at each step from b to d, then rises from "
        "d to e")
    assert notebook.trend([1, 2, 3], list("xyz"), tie) == "rises at each step from x to z"


def test_large_figures_are_stored_with_a_palette(tmp_path, monkeypatch):
    """A figure whose PNG passes LARGE_PNG is re-encoded with 256 colours and shrinks."""
    import matplotlib.pyplot as plt
    from PIL import Image

    monkeypatch.setenv("XAI_FIGURES_DIR", str(tmp_path))
    monkeypatch.setattr(xu.viz, "LARGE_PNG", 10_000)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(np.random.default_rng(0).random((200, 200, 3)))
    direct = tmp_path / "direct.png"
    fig.savefig(direct, dpi=110, bbox_inches="tight", facecolor="white")
    path = xu.save_figure(fig, "noisy")
    plt.close(fig)
    with Image.open(path) as image:
        assert image.mode == "P"
    assert path.stat().st_size < direct.stat().st_size
