"""Shared JupyterLab-in-Chromium harness for the browser tests.

The `lab` fixture starts one JupyterLab server on a free port with a private config and a
temporary root, and one headless Chromium (Debian's /usr/bin/chromium driven by Playwright);
`lab.run_all(stem, parameters)` writes a papermill-parameterised copy of
notebooks/<stem>.ipynb, opens it, waits for the kernel and runs every cell. Everything is
shut down (and a screenshot kept) at teardown. Skips with a clear message where Chromium or
Playwright is absent (`.ci/run` installs Chromium).
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
TIMEOUT_MS = int(os.environ.get("XAI_BROWSER_TIMEOUT", 120_000))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A running JupyterLab and a Chromium page pointed at it."""

    timeout_ms = TIMEOUT_MS  # how long to wait for a notebook's widgets after run-all

    def __init__(self, tmp_path: Path, url: str, token: str, page) -> None:
        self.tmp_path, self.url, self.token, self.page = tmp_path, url, token, page

    def run_all(self, stem: str, parameters: dict):
        """Open a parameterised copy of notebooks/<stem>.ipynb and run all its cells."""
        import nbformat
        from papermill.iorw import load_notebook_node
        from papermill.parameterize import parameterize_notebook

        nb = load_notebook_node(str(ROOT / "notebooks" / f"{stem}.ipynb"))
        nbformat.write(parameterize_notebook(nb, parameters), self.tmp_path / f"{stem}.ipynb")
        page = self.page
        page.goto(f"{self.url}/lab/tree/{stem}.ipynb?token={self.token}")
        page.wait_for_selector(".jp-NotebookPanel", timeout=60_000)
        page.wait_for_function(KERNEL_IDLE, timeout=60_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        return page

    def slider(self, description: str | None = None):
        """The handle of the first slider (or of the one labelled `description`)."""
        sliders = self.page.locator(".widget-slider")
        if description is not None:
            label = self.page.locator(".widget-label", has_text=description)
            sliders = sliders.filter(has=label)
        return sliders.locator(".noUi-handle").first


@pytest.fixture
def lab(tmp_path, request):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

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
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                yield Lab(tmp_path, url, token, page)
            finally:
                page.screenshot(path=str(tmp_path / "lab.png"))
                shots = os.environ.get("XAI_SCREENSHOT_DIR")
                if shots:
                    Path(shots).mkdir(parents=True, exist_ok=True)
                    shutil.copy(tmp_path / "lab.png",
                                Path(shots) / f"browser_{request.node.name}.png")
                browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
