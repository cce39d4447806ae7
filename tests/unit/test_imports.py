"""`import xai_utils` stays light: matplotlib, zarr and the whole-dataset runner load on first
use, and the names they provide are still reachable from the package."""

import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import json, sys
    import xai_utils as xu
    heavy = ("matplotlib", "zarr", "xai_utils.runner", "xai_utils.notebook")
    before = [m for m in heavy if m in sys.modules]
    from xai_utils import RunMismatchError
    reached = [xu.explain_dataset.__module__, xu.RunSummary.__module__,
               RunMismatchError.__module__, xu.runner.__name__, xu.notebook.__name__]
    in_dir = all(n in dir(xu) for n in ("explain_dataset", "RunSummary", "runner", "notebook"))
    after = [m for m in heavy if m in sys.modules]
    try:
        xu.no_such_name
        missing = "no error"
    except AttributeError as err:
        missing = str(err)
    print(json.dumps({"before": before, "reached": reached, "in_dir": in_dir, "after": after,
                      "missing": missing, "version": xu.__version__}))
""")


def test_import_is_light_and_lazy_names_still_resolve():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True, timeout=120)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["before"] == []
    assert got["reached"] == ["xai_utils.runner.run", "xai_utils.runner.run",
                              "xai_utils.runner.store", "xai_utils.runner", "xai_utils.notebook"]
    assert got["in_dir"]
    assert {"xai_utils.runner", "xai_utils.notebook"} <= set(got["after"])
    assert got["missing"] == "module 'xai_utils' has no attribute 'no_such_name'"
    assert got["version"] and got["version"][0].isdigit()
