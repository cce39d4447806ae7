"""Widgets that redraw a matplotlib figure in place: the notebooks' explorers.

A `LivePicture` shows a figure as PNG bytes in an `ipywidgets.Image`, with a caption under it
that repeats the figure's titles as text. A redraw replaces the bytes and the caption; the
output area is never cleared and re-created, so the page does not jump and the picture
changes in one step. The caption gives the figure's words to readers of the page (and to
the browser tests, which check that a control's new value reaches the figure).
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Mapping


def titles(fig) -> str:
    """The figure's suptitle and every axes title, in drawing order, joined by " · "."""
    parts = [fig._suptitle.get_text()] if fig._suptitle is not None else []
    parts += [ax.get_title(loc) for ax in fig.axes for loc in ("left", "center", "right")]
    return " · ".join(" ".join(p.split()) for p in parts if p.strip())


def png(fig, dpi: float | None = None) -> bytes:
    """The figure as PNG bytes, cropped to its content as the inline backend does, with the
    fastest zlib level (a tenth larger, a third faster to write than the default: a redraw
    is sent once to the page, not stored)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", dpi=dpi,
                pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


class LivePicture:
    """A picture and its caption; `show(fig)` replaces both, `fail(message)` says what
    went wrong in the caption and blanks the picture."""

    def __init__(self, dpi: float | None = None) -> None:
        import ipywidgets as widgets

        self.dpi = dpi
        self.image = widgets.Image(format="png")
        self.caption = widgets.HTML()
        self.caption.add_class("xai-caption")
        self.box = widgets.VBox([self.image, self.caption])

    def show(self, fig, caption: str | None = None, close: bool = True) -> None:
        """Show `fig` (closed afterwards unless `close=False`: a figure redrawn in place)."""
        import matplotlib.pyplot as plt

        try:
            data, text = png(fig, self.dpi), titles(fig) if caption is None else caption
        finally:
            if close:
                plt.close(fig)
        self.image.value = data
        # at its own size (the widget would stretch it to the output's width, blurred)
        self.image.width = str(int.from_bytes(data[16:20], "big"))
        self.image.layout.display = None
        self.caption.value = html.escape(text)

    def fail(self, message: str) -> None:
        self.image.layout.display = "none"  # no broken-picture icon
        self.caption.value = f'<span style="color:#b00020">{html.escape(message)}</span>'


def explorer(draw: Callable, controls: Mapping, dpi: float | None = None):
    """Controls above a picture that `draw(**values)` redraws whenever one of them changes.

    `draw` takes the controls' values by name and returns a matplotlib figure. The first
    picture is drawn at once (an error there is raised, as in any cell); an error on a later
    change is shown in the caption, and the controls keep working, instead of vanishing into
    the browser's log, where ipywidgets puts exceptions raised in callbacks.
    """
    import ipywidgets as widgets

    picture = LivePicture(dpi)

    def redraw() -> None:
        picture.show(draw(**{name: c.value for name, c in controls.items()}))

    def update(_=None) -> None:
        try:
            redraw()
        except Exception as err:  # noqa: BLE001 - shown to the reader, not swallowed
            picture.fail(f"{type(err).__name__}: {err}")

    redraw()
    for control in controls.values():
        control.observe(update, names="value")
    return widgets.VBox([widgets.VBox(list(controls.values())), picture.box])
