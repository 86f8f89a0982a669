"""The framework examples run offline against the stand-in provider when no key is set."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("langchain_agent.py", "It is sunny in Paris."),
        ("langgraph_graph.py", "stopped (loop_detected)"),
        ("llamaindex_rag.py", "refused: daily budget exceeded"),
    ],
)
def test_example_runs_offline(script: str, expected: str) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL"}
    }
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def _dist_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_by(argument: str) -> set[str]:
    """The distributions one ``pip install`` argument brings: ``'agentkavach[a,b]'`` its
    extras' requirements, anything else itself."""
    from importlib.metadata import requires

    match = re.fullmatch(r"agentkavach\[([^\]]+)\]", argument)
    if match is None:
        return {_dist_name(argument)}
    extras = set(match.group(1).split(","))
    out = set()
    for requirement in requires("agentkavach") or []:
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", requirement)
        if extra is not None and extra.group(1) in extras:
            name = re.match(r"[A-Za-z0-9._-]+", requirement)
            assert name is not None
            out.add(_dist_name(name.group(0)))
    return out


def _with_dependencies(names: set[str]) -> set[str]:
    """``names`` and what they require, transitively (as installed here)."""
    from importlib.metadata import PackageNotFoundError, requires

    out: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        try:
            requirements = requires(name) or []
        except PackageNotFoundError:
            continue
        for requirement in requirements:
            if "extra" in requirement.partition(";")[2]:
                continue
            match = re.match(r"[A-Za-z0-9._-]+", requirement)
            if match is not None:
                todo.append(_dist_name(match.group(0)))
    return out


def _distribution_of(module: str) -> str | None:
    """The installed distribution that holds ``module`` (None: the standard library or ours)."""
    from importlib.metadata import distribution, packages_distributions

    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in ("kavach", "kavach_integrations"):
        return None
    candidates = packages_distributions().get(top, [])
    path = module.replace(".", "/")
    for name in candidates:
        files = distribution(name).files or []
        if any(str(f) in (f"{path}/__init__.py", f"{path}.py") for f in files):
            return _dist_name(name)
    assert candidates, f"{module} is not installed here"
    return _dist_name(candidates[0])


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_an_example_says_what_to_pip_install(script: str) -> None:
    # A user who runs an example without its packages gets a bare ModuleNotFoundError;
    # the docstring's ``pip install`` line must bring every package it imports.
    source = (ROOT / "examples" / script).read_text(encoding="utf-8")
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
    needed = {d for m in imported if (d := _distribution_of(m)) is not None}
    docstring = ast.get_docstring(tree) or ""
    line = next((ln for ln in docstring.splitlines() if "pip install" in ln), "")
    arguments = shlex.split(line.split("pip install", 1)[1]) if line else []
    installed = _with_dependencies(set().union(*(_installed_by(a) for a in arguments)))
    assert needed <= installed, f"{script}: `{line.strip()}` misses {needed - installed}"
