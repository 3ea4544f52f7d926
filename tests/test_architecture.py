"""The layering the design guide promises, checked by parsing every module's imports (ast).

common <- sparsity, engine, data, models <- method pillars <- report <- cli. Pillars never
import ``report`` or ``cli``; the sparse core and the engine never import a method pillar (nor
models/data: the engine takes a model and a dataset); models do not import sparsity; common
imports nothing above it. No library module matches methods by name in string branches.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "sparseprior"
PILLARS = {"solvers", "tickets", "dst", "compress", "federated", "nlp"}
ALL = PILLARS | {"common", "sparsity", "engine", "data", "models", "report", "cli"}

#: package -> packages it must not import
FORBIDDEN = {
    "common": ALL - {"common"},
    "sparsity": PILLARS | {"report", "cli", "engine", "data", "models"},
    "engine": PILLARS | {"report", "cli", "data", "models"},
    "models": PILLARS | {"report", "cli", "sparsity", "engine", "data"},
    "data": PILLARS | {"report", "cli", "sparsity", "engine", "models"},
    **{p: {"report", "cli"} for p in PILLARS},
    "report": {"cli"},
}


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _package(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    return rel[0] if len(rel) > 1 else ""


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            base = path.relative_to(ROOT).parts[:-node.level]
            module = ".".join(["sparseprior", *base, *(node.module or "").split(".")])
            names.add(module.rstrip("."))
    return {n.split(".")[1] for n in names if n.startswith("sparseprior.") and n.count(".") >= 1}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_layering(path):
    package = _package(path)
    bad = _imported_packages(path) & FORBIDDEN.get(package, set())
    assert not bad, f"{path.relative_to(ROOT)} ({package}) imports {sorted(bad)}"


BRANCH = re.compile(
    r"""(\bmethod|\.kind|\bstrategy)\s*(==|!=)\s*["']|\bname\s*==\s*["']HyperLISTA""")


def test_no_string_branches_on_method_names():
    hits = []
    for path in _modules():
        if _package(path) == "cli":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if BRANCH.search(line.split("#")[0]):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "string branches on names (use a registry):\n" + "\n".join(hits)


def _command_functions(path: Path) -> list[ast.FunctionDef]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
                "command" in ast.unparse(d) for d in node.decorator_list):
            out.append(node)
    return out


#: Calls that mark a loop as work (training, evaluation, timing) rather than printing.
WORK = re.compile(r"fit|train|eval|step|forward|backward|perf_counter|time|bench|measure|run_")


def _work_loops(fn: ast.FunctionDef) -> list[str]:
    found = []
    for loop in ast.walk(fn):
        if isinstance(loop, (ast.For, ast.While)):
            for node in ast.walk(loop):
                if isinstance(node, ast.Call) and WORK.search(ast.unparse(node.func)):
                    found.append(ast.unparse(node.func))
    return found


def test_cli_commands_are_thin():
    fat, loops = [], []
    for path in sorted((ROOT / "cli").glob("*.py")):
        for fn in _command_functions(path):
            n = len(fn.args.args) + len(fn.args.kwonlyargs)
            if n > 8:
                fat.append(f"{path.name}:{fn.name} has {n} parameters")
            work = _work_loops(fn)
            if work:
                loops.append(f"{path.name}:{fn.name} loops over {sorted(set(work))}")
    assert not fat, "CLI commands with more than 8 parameters: " + ", ".join(fat)
    assert not loops, "loops in CLI commands (move them into the library): " + ", ".join(loops)
