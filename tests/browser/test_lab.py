"""JupyterLab in headless Chromium: run a notebook, move a slider, see the output change.

The server, browser and helpers live in conftest.py (the `lab` fixture).
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_run_all_then_move_slider(lab):
    from playwright.sync_api import expect

    page = lab.run_all("00_quickstart", {"IMAGES": ["chelsea", "coffee", "rocket"],
                                          "SHAPES_TEST": 100, "INTERACTIVE": True})
    handle = lab.slider()
    handle.wait_for(timeout=lab.timeout_ms)
    output = page.locator(".jp-OutputArea-output", has_text=" -> ").last
    expect(output).to_contain_text("chelsea -> ", timeout=30_000)
    before = output.inner_text()
    handle.scroll_into_view_if_needed()
    handle.click()
    page.keyboard.press("ArrowRight")
    expect(output).to_contain_text("coffee -> ", timeout=30_000)
    after = output.inner_text()
    assert before != after
    assert "chelsea" in before and "coffee" in after


def test_grad_cam_class_slider_redraws_the_map(lab):
    """03_grad_cam's explorer draws a matplotlib figure (an <img> in the widget's output);
    moving the CLASS slider must replace it with a different picture (another `src`)."""
    from playwright.sync_api import expect

    page = lab.run_all("03_grad_cam", {"IMAGES": ["chelsea", "coffee"], "TOPK": 3,
                                        "SHAPES_N": 20, "INTERACTIVE": True})
    handle = lab.slider("class")
    handle.wait_for(timeout=max(lab.timeout_ms, 300_000))
    image = page.locator(".widget-output img").last
    image.wait_for(timeout=60_000)
    before = image.get_attribute("src")
    assert before and before.startswith("data:image/png")
    handle.scroll_into_view_if_needed()
    handle.click()
    page.keyboard.press("ArrowRight")
    expect(image).not_to_have_attribute("src", before, timeout=60_000)
    after = image.get_attribute("src")
    assert after.startswith("data:image/png") and after != before


def test_occlusion_tool_checkbox_changes_the_prediction(lab):
    """06_lrp_occlusion's occlusion tool: ticking the most important feature's checkbox must
    redraw the occluded image and change the top-5 prediction read-out."""
    from playwright.sync_api import expect

    page = lab.run_all("06_lrp_occlusion", {"IMAGES": ["rocket"], "MAX_FEATURES": 4,
                                             "SHAPES_N": 20, "SHAPES_WINDOW": 28,
                                             "SHAPES_STRIDE": 28, "WINDOW": 112,
                                             "STRIDE": 56, "INTERACTIVE": True})
    box = page.locator(".widget-checkbox", has_text="feature").first
    box.wait_for(timeout=max(lab.timeout_ms, 300_000))
    readout = page.locator(".widget-html", has_text="top-5:").last
    image = page.locator(".widget-hbox", has=box).locator(".widget-output img").last
    image.wait_for(timeout=60_000)
    expect(readout).to_contain_text("%", timeout=60_000)
    before_text, before_src = readout.inner_text(), image.get_attribute("src")
    box.scroll_into_view_if_needed()
    box.locator("input").click()
    expect(readout).not_to_have_text(before_text, timeout=60_000)
    expect(image).not_to_have_attribute("src", before_src, timeout=60_000)
    assert readout.inner_text() != before_text
