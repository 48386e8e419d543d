"""The git layer: gitstore is the one module that talks to dulwich."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gitqueue"
GIT_LAYER = {"gitstore.py"}


def dulwich_imports(path: Path) -> list[int]:
    """Lines of `path` that import dulwich (at any depth: inside functions too)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(name == "dulwich" or name.startswith("dulwich.") for name in names):
            lines.append(node.lineno)
    return lines


def test_only_the_git_layer_imports_dulwich():
    found = {str(path.relative_to(PACKAGE)): dulwich_imports(path) for path in sorted(PACKAGE.rglob("*.py"))}
    assert found["gitstore.py"], "the checker finds gitstore's own imports"
    assert {name: lines for name, lines in found.items() if lines and name not in GIT_LAYER} == {}
