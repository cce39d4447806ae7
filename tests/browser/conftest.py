"""Shared JupyterLab-in-Chromium harness for the browser tests.

One JupyterLab server (private config, temporary root) and one headless Chromium (Debian's
/usr/bin/chromium driven by Playwright) serve the whole session; each test gets a fresh page.
`lab.run_all(stem, parameters)` writes a papermill-parameterised copy of
notebooks/<stem>.ipynb, opens it, runs every cell and waits until all have run (failing on
any error output). `lab.explorer(label)` finds the explorer (`xai_utils.viz.live`) that holds
a control, and `Explorer.move` changes the control, waits for the new picture and caption,
and returns the time from the input to the redrawn output. Screenshots of every state and
the latencies go to build/browser/ (ignored; `XAI_BROWSER_OUT` moves it). Skips with a clear
message where Chromium or Playwright is absent (`.ci/run` installs Chromium).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("XAI_BROWSER_OUT", ROOT / "build" / "browser"))
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
ALL_CELLS_RUN = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = panel && panel.sessionContext && panel.sessionContext.session
    && panel.sessionContext.session.kernel;
  if (!kernel || kernel.status !== "idle") return false;
  return panel.content.widgets.every(
    c => c.model.type !== "code" || c.model.executionCount !== null);
}"""
KERNEL_IDLE = """(path) => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = panel && panel.context && panel.context.path === path && panel.sessionContext
    && panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!kernel && kernel.status === "idle";
}"""
# the picture has been replaced (its blob URL changed) and the caption says what it must
REDRAWN = """([img, caption, before, want, same]) => {
  if (img.getAttribute("src") === before) return false;
  const text = caption.innerText;
  return same === null ? text.includes(want) : text === same;
}"""
RUN_TIMEOUT_MS = int(os.environ.get("XAI_BROWSER_TIMEOUT", 1_200_000))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def _controls(scope, label: str):
    """The sliders, checkboxes and drop-downs in `scope` whose description starts with
    `label`."""
    pattern = re.compile(rf"^\s*{re.escape(label)}")
    page = getattr(scope, "page", scope)
    return scope.locator(".widget-slider, .widget-checkbox, .widget-dropdown").filter(
        has=page.locator(".widget-label, label", has_text=pattern))


class Explorer:
    """An explorer on the page: its controls, its picture and its caption."""

    def __init__(self, lab: Lab, box, stem: str) -> None:
        self.lab, self.box, self.stem = lab, box, stem
        self.image = box.locator(".widget-image").last
        self.caption = box.locator(".xai-caption").last

    def control(self, label: str):
        """The control (slider, checkbox or dropdown) whose description starts with `label`."""
        return _controls(self.box, label).first

    def state(self, control) -> str:
        """What the control shows: a slider's read-out, a dropdown's choice, a checkbox's
        description and "on" / "off"."""
        kind = control.get_attribute("class")
        if "widget-checkbox" in kind:
            on = control.locator("input").is_checked()
            return control.inner_text().strip() + (" on" if on else " off")
        if "widget-dropdown" in kind:
            return control.locator("select").evaluate("s => s.options[s.selectedIndex].text")
        return control.locator(".widget-readout").inner_text().strip()

    def move(self, control, step: int, want, timeout_ms: int = 60_000) -> float:
        """Move `control` one step (+1 / -1; a checkbox toggles), wait until the picture is
        replaced and the caption holds `want(state)` (the unchanged caption if `want` is
        None), take a screenshot and return the seconds from the input to that moment."""
        page = self.box.page
        kind = control.get_attribute("class")
        before, caption = self.image.get_attribute("src"), self.caption.inner_text()
        control.scroll_into_view_if_needed()
        if "widget-slider" in kind:
            control.locator(".noUi-handle").first.focus()
            start = time.perf_counter()
            page.keyboard.press("ArrowRight" if step > 0 else "ArrowLeft")
        elif "widget-checkbox" in kind:
            start = time.perf_counter()
            control.locator("input").click()
        else:
            select = control.locator("select")
            index = select.evaluate("s => s.selectedIndex") + step
            start = time.perf_counter()
            select.select_option(index=index)
        state = self.state(control)
        text = None if want is None else want(state)
        page.wait_for_function(REDRAWN, arg=[self.image.element_handle(),
                                             self.caption.element_handle(), before,
                                             text, caption if text is None else None],
                               polling="raf", timeout=timeout_ms)
        seconds = time.perf_counter() - start
        if (self.stem, state) not in self.lab.shots:  # one screenshot of each state
            self.lab.shots[self.stem, state] = n = len(self.lab.shots) + 1
            self.box.screenshot(path=str(self.lab.out_dir(self.stem) /
                                         f"{n:03d}_{_slug(state)}.png"))
        return seconds

    def can_step(self, control, step: int) -> bool:
        """Whether `control` can move by `step` (a slider at its end cannot)."""
        kind = control.get_attribute("class")
        if "widget-checkbox" in kind:
            return True
        if "widget-dropdown" in kind:
            i, n = control.locator("select").evaluate("s => [s.selectedIndex, s.options.length]")
            return 0 <= i + step < n
        handle = control.locator(".noUi-handle").first
        now, low, high = (float(handle.get_attribute(a)) for a in
                          ("aria-valuenow", "aria-valuemin", "aria-valuemax"))
        return now < high if step > 0 else now > low


class Lab:
    """A running JupyterLab and Chromium; `page` is this test's tab."""

    def __init__(self, root: Path, url: str, token: str, browser) -> None:
        self.root, self.url, self.token, self.browser = root, url, token, browser
        self.page = None
        self.latency: dict[str, list[float]] = {}
        self.shots: dict[tuple[str, str], int] = {}

    def out_dir(self, stem: str) -> Path:
        path = OUT / stem
        path.mkdir(parents=True, exist_ok=True)
        return path

    def run_all(self, stem: str, parameters: dict, timeout_ms: int = RUN_TIMEOUT_MS):
        """Open a parameterised copy of notebooks/<stem>.ipynb, run all its cells, wait for
        the last one and fail on any error output."""
        import nbformat
        from papermill.iorw import load_notebook_node
        from papermill.parameterize import parameterize_notebook

        nb = load_notebook_node(str(ROOT / "notebooks" / f"{stem}.ipynb"))
        nbformat.write(parameterize_notebook(nb, parameters), self.root / f"{stem}.ipynb")
        page = self.page
        # a workspace of its own, reset: only this notebook open, its panel the current one
        page.goto(f"{self.url}/lab/workspaces/{_slug(stem)}/tree/{stem}.ipynb"
                  f"?reset&token={self.token}")
        page.wait_for_selector(".jp-NotebookPanel", timeout=60_000)
        page.wait_for_function(KERNEL_IDLE, arg=f"{stem}.ipynb", timeout=60_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_timeout(500)
        page.wait_for_function(ALL_CELLS_RUN, timeout=timeout_ms, polling=500)
        errors = page.locator('[data-mime-type="application/vnd.jupyter.error"]')
        assert errors.count() == 0, errors.first.inner_text()[-3000:]
        return page

    def save(self, stem: str) -> Path:
        """Save the open notebook with its outputs; returns its file."""
        self.page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
        self.page.wait_for_function(
            "() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000)
        return self.root / f"{stem}.ipynb"

    def explorer(self, label: str, stem: str, nth: int = 0) -> Explorer:
        """The explorer whose controls include one described `label` (the `nth` such)."""
        page = self.page
        box = page.locator(".widget-vbox, .widget-hbox").filter(
            has=page.locator(".xai-caption")).filter(has=_controls(page, label)).nth(nth)
        box.wait_for(timeout=30_000)
        return Explorer(self, box, stem)

    def record(self, key: str, seconds: float) -> None:
        self.latency.setdefault(key, []).append(seconds)


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("lab")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "XAI_FIGURES_DIR": str(root / "figures"), "XAI_DEVICE": "cpu",
           "JUPYTER_CONFIG_DIR": str(root / "config"), "JUPYTER_RUNTIME_DIR": str(root / "rt")}
    # no "news" pop-up and no update check greeting every session
    settings = root / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
         f"--port={port}", f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.expose_app_in_browser=True"],
        env=env, stdout=subprocess.DEVNULL, stderr=(root / "lab.log").open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start:\n" + (root / "lab.log").read_text()[-2000:])
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            lab = Lab(root, url, token, browser)
            try:
                yield lab
            finally:
                browser.close()
                if lab.latency:
                    OUT.mkdir(parents=True, exist_ok=True)
                    path = OUT / "latency.json"
                    old = json.loads(path.read_text()) if path.exists() else {}
                    path.write_text(json.dumps({**old, **lab.latency}, indent=1))
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def _shutdown_kernels(lab: Lab) -> None:
    """Stop every kernel the test started, so the next notebook has the CPU to itself."""
    api = f"{lab.url}/api/kernels?token={lab.token}"
    try:
        kernels = json.loads(urllib.request.urlopen(api, timeout=10).read())
        for k in kernels:
            urllib.request.urlopen(urllib.request.Request(
                f"{lab.url}/api/kernels/{k['id']}?token={lab.token}", method="DELETE"), timeout=30)
    except OSError:
        pass


@pytest.fixture
def lab(lab_server, request):
    page = lab_server.browser.new_page(viewport={"width": 1400, "height": 1400})
    lab_server.page = page
    try:
        yield lab_server
    finally:
        page.screenshot(path=str(lab_server.out_dir("pages") / f"{request.node.name}.png"))
        page.close()
        _shutdown_kernels(lab_server)
