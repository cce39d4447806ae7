"""JupyterLab in headless Chromium: run the quickstart, move its slider, see the output change.

Skips with a clear message where /usr/bin/chromium is absent (`.ci/run` installs it).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
KERNEL_IDLE = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = panel && panel.sessionContext && panel.sessionContext.session
    && panel.sessionContext.session.kernel;
  return !!kernel && kernel.status === "idle";
}"""
pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    pytest.importorskip("playwright")
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(ROOT / "notebooks" / "00_quickstart.ipynb"))
    nb = parameterize_notebook(nb, {"IMAGES": ["chelsea", "coffee", "rocket"], "SHAPES_TEST": 100,
                                    "INTERACTIVE": True})
    nbformat.write(nb, tmp_path / "quickstart.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "XAI_FIGURES_DIR": str(tmp_path / "figures"), "XAI_DEVICE": "cpu",
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
         f"--port={port}", f"--ServerApp.token={token}", f"--ServerApp.root_dir={tmp_path}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.expose_app_in_browser=True"],
        env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "lab.log").open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()[-2000:])
        yield f"{url}/lab/tree/quickstart.ipynb?token={token}", tmp_path
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def test_run_all_then_move_slider(lab):
    from playwright.sync_api import expect, sync_playwright

    url, tmp_path = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector(".jp-NotebookPanel", timeout=60_000)
            page.wait_for_function(KERNEL_IDLE, timeout=60_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            handle = page.locator(".widget-slider .noUi-handle").first
            handle.wait_for(timeout=int(os.environ.get('XAI_BROWSER_TIMEOUT', 120_000)))
            output = page.locator(".jp-OutputArea-output", has_text=" -> ").last
            expect(output).to_contain_text("chelsea -> ", timeout=30_000)
            before = output.inner_text()
            handle.scroll_into_view_if_needed()
            handle.click()
            page.keyboard.press("ArrowRight")
            expect(output).to_contain_text("coffee -> ", timeout=30_000)
            after = output.inner_text()
        finally:
            page.screenshot(path=str(tmp_path / "lab.png"))
            shots = os.environ.get("XAI_SCREENSHOT_DIR")
            if shots:
                Path(shots).mkdir(parents=True, exist_ok=True)
                shutil.copy(tmp_path / "lab.png", Path(shots) / "browser_quickstart.png")
            browser.close()
    assert before != after
    assert "chelsea" in before and "coffee" in after
