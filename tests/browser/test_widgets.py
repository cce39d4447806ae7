"""Every notebook's widgets in JupyterLab in headless Chromium: run the notebook with small
parameters, move each control back and forth, and check that the picture is replaced and
that its caption (the figure's titles, `xai_utils.viz.live`) says what the new value means.

Each move's latency (input to redrawn output) is recorded in build/browser/latency.json;
`benchmarks/widget_latency.py` prints the table against the budgets (0.5 s p95 for redraws
from cached results, 2 s for controls that compute). Timings are not asserted here.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from smoke_checks import check_executed, smoke_spec

pytestmark = [pytest.mark.slow, pytest.mark.browser]
MOVES = 4  # moves per control: there and back twice
UPLOADS = ("00_quickstart", "03_grad_cam")  # notebooks with an upload button


@dataclass(frozen=True)
class Control:
    """A control, described as on the page, and what the caption must then contain:
    `want(state)` of its new read-out, or None where only the picture changes."""

    label: str
    want: Callable[[str], str] | None
    computes: bool = False  # runs tensor work per move (budget 2 s) rather than a redraw
    nth: int = 0  # which explorer holding such a control (01 has two with a `step`)


def _number(text: str) -> str:
    return f"{float(text):g}"


CHECKBOX_FEATURE = re.compile(r"feature (\d+)")

# notebook: (parameters on top of the smoke run's, the controls of each explorer)
NOTEBOOKS = {
    "00_quickstart": ({}, [Control("image", lambda r: f"{r} · ")]),
    "01_perturbation_cnn": ({"IMAGES": ["chelsea", "coffee"]}, [
        Control("image", lambda r: f"{r}: G(x) after", computes=True),
        Control("power", lambda r: f"|diff|^{_number(r)},", computes=True),
        Control("dilation", lambda r: f"dilation {r} ", computes=True),
        Control("step", lambda r: f"after {r} steps", computes=True),
        Control("λ1", lambda r: f"λ1 = {r}, step", computes=True),
        Control("step", lambda r: f", step {r} ", computes=True, nth=1)]),
    "02_meaningful_perturbation": ({}, [
        Control("λ1", lambda r: f"l1 {r},"), Control("λ2", lambda r: f"tv {r},"),
        Control("iteration", lambda r: f"step {r}")]),
    "03_grad_cam": ({}, [
        Control("image", lambda r: f"{r}: #1 "), Control("class", lambda r: f": {r} "),
        Control("layer", lambda r: f"@ {r}"), Control("opacity", None)]),
    "04_cam": ({}, [
        Control("image", lambda r: f"{r}: #1 "), Control("class", lambda r: f": {r} "),
        Control("opacity", None)]),
    "05_nbdt": ({"CAM_IMAGES": 2}, [
        Control("image", lambda r: f"{r}, decision"),
        Control("decision", lambda r: f"decision {r} of the last")]),
    "06_lrp_occlusion": ({"MAX_FEATURES": 4}, [
        Control("threshold", lambda r: f"threshold = {r},"),
        Control("distance", lambda r: f"distance = {r},"),
        Control("min_size", lambda r: f"min_size = {r}:"),
        # the occlusion tool: ticking a feature hides it (and runs one occlusion)
        Control("feature", lambda s: (f"occluded: [{CHECKBOX_FEATURE.search(s)[1]}]"
                                      if s.endswith(" on") else "occluded: none"),
                computes=True)]),
    "07_inversion": ({}, [
        Control("layer", lambda r: f"{r}, C"), Control("C", lambda r: f"({r}),"),
        Control("TV", lambda s: ", TV, iteration" if s.endswith(" on") else ", no TV, iteration"),
        Control("iteration", lambda r: f"iteration {r}")]),
    "08_benchmark": ({}, [
        Control("method", lambda r: f"{r}, shapes image"),
        Control("image", lambda r: f"shapes image {r}:")]),
    "09_at_scale": ({}, [Control("item", lambda r: f"item {r}:", computes=True)]),
}


def _parameters(stem: str) -> dict:
    extra, _ = NOTEBOOKS[stem]
    return {**smoke_spec(stem)["parameters"], **extra, "INTERACTIVE": True}


def checks_smoke(stem: str) -> bool:
    """Whether this run has the smoke run's parameters (but for INTERACTIVE), so that it
    checks the smoke promises and the papermill run can be skipped (tests/conftest.py)."""
    return not NOTEBOOKS[stem][0]


def work_controls(lab, stem: str) -> None:
    """Move every control of the notebook's explorers MOVES times and record latencies."""
    for spec in NOTEBOOKS[stem][1]:
        explorer = lab.explorer(spec.label, stem, spec.nth)
        control = explorer.control(spec.label)
        step = 1 if explorer.can_step(control, 1) else -1
        assert explorer.can_step(control, step), f"{stem}: {spec.label} cannot move"
        for _ in range(MOVES):
            seconds = explorer.move(control, step, spec.want)
            key = f"{stem} · {spec.label}" + (f" ({spec.nth + 1})" if spec.nth else "")
            lab.record(("compute" if spec.computes else "cached") + " | " + key, seconds)
            step = -step


@pytest.mark.timeout(1500)  # 08 runs all 16 methods before its explorer appears
@pytest.mark.parametrize("stem", sorted(NOTEBOOKS))
def test_every_control_redraws_what_it_says(lab, stem, tmp_path):
    lab.run_all(stem, _parameters(stem))
    if checks_smoke(stem):  # what the papermill smoke run would check, on this run
        check_executed(lab.save(stem), lab.root / "figures", smoke_spec(stem))
    if stem in UPLOADS:  # first, while the explorer still shows the first photo
        check_upload(lab, stem, tmp_path)
    work_controls(lab, stem)


def _upload(lab, stem: str, path, want: str | None, error: str | None = None) -> float:
    """Upload `path` through the notebook's upload button; wait for its caption."""
    import time

    page = lab.page
    box = page.locator(".widget-vbox").filter(has=page.locator(".widget-upload")).last
    caption = box.locator(".xai-caption")
    before = caption.inner_text()
    with page.expect_file_chooser() as chooser:
        box.locator(".widget-upload").click()
    start = time.perf_counter()
    chooser.value.set_files(str(path))
    page.wait_for_function("([el, before, want]) => el.innerText !== before && "
                           "el.innerText.includes(want)",
                           arg=[caption.element_handle(), before, want or error],
                           polling="raf", timeout=60_000)
    seconds = time.perf_counter() - start
    box.screenshot(path=str(lab.out_dir(stem) / f"upload_{path.stem}.png"))
    return seconds


def check_upload(lab, stem: str, tmp_path) -> None:
    """A copy of a sample photo uploaded under another name gets the same top class and
    probability as the sample in the explorer; a text file gets the loader's error; the
    next good file is explained again."""
    import xai_utils as xu

    page = lab.page
    shown = lab.explorer("image", stem).caption.inner_text()  # the first photo: chelsea
    first = _parameters(stem)["IMAGES"][0]
    assert shown.startswith(first)
    mine = tmp_path / "my_photo.png"
    shutil.copy(xu.sample_images()[first], mine)
    seconds = _upload(lab, stem, mine, "my_photo")
    caption = page.locator(".widget-vbox").filter(
        has=page.locator(".widget-upload")).last.locator(".xai-caption").inner_text()
    # the same class and probability as the sample (00: "name · class p";
    # 03: "name: #1 class p @ layer")
    assert caption.removeprefix("my_photo") == shown.removeprefix(first), (caption, shown)
    lab.record(f"compute | {stem} · upload", seconds)
    bad = tmp_path / "notes.jpg"
    bad.write_text(json.dumps({"not": "an image"}))
    _upload(lab, stem, bad, None, error="notes.jpg: not an image file PIL can read")
    again = tmp_path / "second.png"
    shutil.copy(xu.sample_images()[first], again)
    lab.record(f"compute | {stem} · upload", _upload(lab, stem, again, "second"))
