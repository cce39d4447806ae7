"""The package uses its dependencies' public APIs only: no private module or name of another
package is imported (`timm.layers._fx`, `zarr.core.sync`) and no private attribute of another
package's module or object is reached (`torch._C`, `array._async_array`). A dependency's
release may change its private parts silently; these tests name the line instead."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "xai_utils"
INTERNAL = {"zarr.core"}  # packages documented as internal though not underscored
PUBLIC = {"os._exit"}  # underscored, yet documented public API


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def violations(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every private use of another package in `tree`."""
    found, foreign = [], set()  # foreign: local names bound to other packages' modules
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "xai_utils":
                    foreign.add((alias.asname or alias.name).split(".")[0])
                    _check_module(alias.name, node.lineno, found)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "xai_utils":
                continue
            _check_module(node.module, node.lineno, found)
            for alias in node.names:
                if _private(alias.name):
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
                foreign.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if ast.unparse(node) in PUBLIC:
                continue
            if isinstance(root, ast.Name) and root.id in foreign:
                found.append((node.lineno, f"{ast.unparse(node)}"))
            elif not isinstance(root, ast.Name):  # obj[...]._x, call()._x: whose is it?
                found.append((node.lineno, f"{ast.unparse(node)}"))
    return found


def _check_module(module: str, line: int, found: list) -> None:
    parts = module.split(".")
    if any(_private(p) for p in parts) or any(module.startswith(m) for m in INTERNAL):
        found.append((line, f"import {module}"))


def test_the_checker_catches_what_the_runner_once_did():
    code = ("from zarr.core.sync import sync\nimport torch\nfrom timm.layers._fx import f\n"
            "x = torch._C\ny = arrays['maps']._async_array\nz = self._cache\n")
    assert [line for line, _ in violations(ast.parse(code))] == [1, 3, 4, 5]


def test_package_uses_public_apis_only():
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line}: {text}"
           for path in sorted(PACKAGE.rglob("*.py"))
           for line, text in violations(ast.parse(path.read_text()))]
    assert not bad, "private parts of other packages:\n" + "\n".join(bad)
