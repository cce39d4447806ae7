import os

import pytest
import torch

os.environ.setdefault("XAI_DEVICE", "cpu")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def effnet():
    import xai_utils as xu

    return xu.load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def shapes_model():
    import xai_utils as xu

    return xu.load_model("shapes_vgg")


def pytest_collection_modifyitems(config, items):
    """Run a notebook once where both the papermill smoke run and the browser run would
    execute it with the same parameters: the browser run then checks the smoke promises too
    (tests/browser/test_widgets.py), and the papermill run is skipped."""
    from smoke_checks import browser_available

    in_browser = {item.callspec.params["stem"] for item in items
                  if item.originalname == "test_every_control_redraws_what_it_says"
                  and item.module.checks_smoke(item.callspec.params["stem"])}
    if not in_browser or not browser_available():
        return
    for item in items:
        if item.originalname == "test_notebook_runs_and_records":
            stem = item.callspec.params["path"].stem
            if stem in in_browser:
                item.add_marker(pytest.mark.skip(
                    reason=f"executed and checked in JupyterLab (test_widgets.py[{stem}])"))
