"""The package's shape: every file compiles, and no two modules of glm4voice_api import each other (even indirectly).

Imports under ``if TYPE_CHECKING:`` count: a cycle hidden from the interpreter is still two modules that cannot be
understood (or moved) one without the other.
"""

from __future__ import annotations

import ast
import compileall
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "glm4voice_api"


def _modules() -> dict[str, Path]:
    out = {}
    for path in (REPO / PACKAGE).rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its file (function bodies and TYPE_CHECKING too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    # A module and its own packages are not a cycle: importing a submodule always runs its packages' __init__.
    return {
        t
        for t in targets
        if t in modules and t != name and not name.startswith(t + ".") and not t.startswith(name + ".")
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    assert _cycles(graph) == []


def test_cycle_finder_sees_indirect_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


# The serving layer's features: each is built with its own collaborators (serving.services) and imports none of the
# others; what they share lives in the shared modules (replies, deadlines, voices, errors, metrics, admission).
SERVING_FEATURES = {
    "chat": {"chat", "chat_output"},
    "speech": {"speech"},
    "transcription": {"transcription"},
    "voices": {"voices_api"},
    "models": {"models"},
}


def test_serving_features_do_not_import_each_other() -> None:
    modules = _modules()
    prefix = f"{PACKAGE}.serving."
    owner = {f"{prefix}{m}": feature for feature, members in SERVING_FEATURES.items() for m in members}
    crossing = [
        (name, target)
        for name, feature in owner.items()
        for target in _imported(name, modules[name], modules)
        if owner.get(target, feature) != feature
    ]
    assert crossing == []


def test_everything_compiles() -> None:
    for folder in (PACKAGE, "plugins", "bench", "tests"):
        assert compileall.compile_dir(REPO / folder, quiet=1, force=True, legacy=False, workers=1), folder
