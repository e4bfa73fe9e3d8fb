"""The test tiers: whatever starts another process, Ray, a browser or a server is `integration`.

The fast tier (``pytest -n 2 -m "not integration and not reference"``) must stay in-process,
so this module reads every test module and follows each test through the module's own
helpers and fixtures (and the shared ones in conftest.py) to the calls that start something: a
subprocess (``subprocess``, ``sys.executable``), Ray (``ray.init``, a Ray cluster), a browser
(Playwright), spawned workers (``start_method="spawn"``, ``torch.multiprocessing``) or a
server (a stand-in hub, ``launch(...)``). A test that reaches one must carry the marker, on
itself, its class or its module (``pytestmark``). `conftest.py` backs this up at run time:
a test outside the tier that starts a process anyway fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support import with_tiers_off_by_default

TESTS = Path(__file__).resolve().parent

# Attribute calls and names that start something (module-qualified as written in the tests).
STARTERS_CALLS = {
    "subprocess.run",
    "subprocess.Popen",
    "subprocess.check_output",
    "subprocess.check_call",
    "subprocess.call",
    "ray.init",
    "sync_api.sync_playwright",
    "mp.spawn",
    "multiprocessing.Process",
    "Cluster",
    "StandInHub",
    "RayNodes",
}
STARTERS_ATTRS = {"sys.executable"}
STARTERS_KEYWORDS = {("start_method", "spawn")}


def dotted(node: ast.AST) -> str:
    """`a.b.c` for a Name/Attribute chain, "" for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def starts_directly(function: ast.AST) -> str | None:
    """The first starting call or name in `function`'s body, or None."""
    for node in ast.walk(function):
        if isinstance(node, ast.Call):
            name = dotted(node.func)
            if name in STARTERS_CALLS or name.split(".")[-1] in {"sync_playwright"}:
                return name
            for keyword in node.keywords:
                value = keyword.value
                if (keyword.arg, getattr(value, "value", None)) in STARTERS_KEYWORDS:
                    return f"{keyword.arg}={value.value!r}"
        elif isinstance(node, ast.Attribute) and dotted(node) in STARTERS_ATTRS:
            return dotted(node)
    return None


def called_names(function: ast.AST) -> set[str]:
    """Plain names `function` calls or refers to (helpers, classes, classmethods' owners)."""
    names = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            names.add(node.value.id)
    return names


def parameters(function: ast.FunctionDef) -> set[str]:
    """The fixture names a test or fixture takes."""
    args = function.args
    return {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}


def has_marker(decorators: list[ast.expr], marker: str) -> bool:
    """Whether one of `decorators` (or a `pytestmark` value) is ``pytest.mark.<marker>``."""
    for decorator in decorators:
        for node in ast.walk(decorator):
            if dotted(node) == f"pytest.mark.{marker}":
                return True
    return False


def definitions(tree: ast.Module) -> dict[str, ast.AST]:
    """Top-level functions and classes of a module by name."""
    return {
        node.name: node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }


def starting_names(defs: dict[str, ast.AST], known: dict[str, str]) -> dict[str, str]:
    """Names in `defs` that start something, directly or through one another (or `known`):
    name -> the reason (a chain ending in the starting call)."""
    found = dict(known)
    for name, node in defs.items():
        if reason := starts_directly(node):
            found[name] = reason
    changed = True
    while changed:
        changed = False
        for name, node in defs.items():
            if name in found:
                continue
            uses = called_names(node)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                uses |= parameters(node)
            for used in sorted(uses & found.keys()):
                found[name] = f"{used} -> {found[used]}"
                changed = True
                break
    return found


def conftest_starters() -> dict[str, str]:
    """Fixtures of conftest.py that start something."""
    tree = ast.parse((TESTS / "conftest.py").read_text())
    return starting_names(definitions(tree), {})


def module_marked(tree: ast.Module, marker: str) -> bool:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            if has_marker([node.value], marker):
                return True
    return False


def unmarked_starters(path: Path, shared: dict[str, str]) -> list[str]:
    """Tests in `path` that start something without the `integration` marker."""
    tree = ast.parse(path.read_text())
    if module_marked(tree, "integration"):
        return []
    defs = definitions(tree)
    found = starting_names(defs, shared)
    bad = []
    for node in tree.body:
        tests: list[tuple[ast.FunctionDef, list[ast.expr]]] = []
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            tests.append((node, node.decorator_list))
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name.startswith("test"):
                    tests.append((item, [*node.decorator_list, *item.decorator_list]))
        for test, decorators in tests:
            if has_marker(decorators, "integration"):
                continue
            if reason := starts_directly(test):
                bad.append(f"{path.name}::{test.name}: {reason}")
                continue
            uses = (called_names(test) | parameters(test)) & found.keys()
            if uses:
                used = sorted(uses)[0]
                bad.append(f"{path.name}::{test.name}: {used} -> {found[used]}")
    return bad


def test_every_test_that_starts_a_process_is_marked_integration():
    shared = conftest_starters()
    modules = [p for p in sorted(TESTS.glob("test_*.py")) if p.name != Path(__file__).name]
    bad = [line for path in modules for line in unmarked_starters(path, shared)]
    assert not bad, "mark these `integration` (or keep them in-process):\n" + "\n".join(bad)


SAMPLE = """
import subprocess, sys
import pytest

def helper():
    return subprocess.run([sys.executable, "-V"])

@pytest.fixture
def server():
    yield helper()

def test_direct():
    subprocess.run(["true"])

def test_through_a_helper():
    helper()

def test_through_a_fixture(server):
    pass

@pytest.mark.integration
def test_marked(server):
    pass

def test_plain():
    assert 1 + 1 == 2
"""


def test_the_check_finds_direct_helper_and_fixture_starts(tmp_path):
    path = tmp_path / "test_sample.py"
    path.write_text(SAMPLE)
    bad = unmarked_starters(path, {})
    assert [line.split(":")[2] for line in bad] == [
        "test_direct",
        "test_through_a_helper",
        "test_through_a_fixture",
    ]
    assert bad[2].endswith("server -> helper -> subprocess.run")
    path.write_text("import pytest\npytestmark = [pytest.mark.integration]\n" + SAMPLE)
    assert unmarked_starters(path, {}) == []


@pytest.mark.parametrize(
    "line",
    [
        "ray.init(num_cpus=2)",
        "torch.multiprocessing.start_processes(f, start_method='spawn')",
        "browser = sync_api.sync_playwright()",
        "hub = StandInHub({}).start()",
    ],
)
def test_each_kind_of_start_is_recognised(tmp_path, line):
    path = tmp_path / "test_kind.py"
    path.write_text(f"def test_it():\n    {line}\n")
    assert len(unmarked_starters(path, {})) == 1


# --------------------------------------------------------------------------- the run-time guard


def test_a_test_outside_the_tier_cannot_start_python_or_a_worker():
    """conftest.py guards this very test (it is not `integration`): the CLI, a worker process
    and the environment's programs are refused; a system tool is not. (This module is the one
    the static check leaves out: its starts are meant to be refused.)"""
    import multiprocessing
    import subprocess
    import sys

    from support import StartedOutsideIntegration

    with pytest.raises(StartedOutsideIntegration, match="test_tiers.py::.* started .*python"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    with pytest.raises(StartedOutsideIntegration, match="started .*pix2video"):
        subprocess.run([str(Path(sys.executable).parent / "pix2video"), "--help"], check=True)
    with pytest.raises(StartedOutsideIntegration, match="started a .*Process"):
        multiprocessing.get_context("spawn").Process(target=print).start()
    assert subprocess.run(["true"], check=True).returncode == 0


@pytest.mark.integration
def test_an_integration_test_may_start_python():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "42"


def test_the_guard_undoes_itself():
    import subprocess

    from support import in_process_only

    before = subprocess.Popen._execute_child
    with in_process_only("a block"):
        assert subprocess.Popen._execute_child is not before
    assert subprocess.Popen._execute_child is before


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("", "not slow"),
        ("not integration", "(not integration) and not slow"),
        ("bitwise or reference", "(bitwise or reference) and not slow"),
        ("slow", "slow"),
        ("bitwise and not slow", "bitwise and not slow"),
    ],
)
def test_slow_runs_only_when_a_marker_expression_names_it(given, used):
    assert with_tiers_off_by_default(given) == used


def test_the_tiers_the_readme_names_are_registered(pytestconfig):
    """The README's commands name markers pytest knows (an unknown one selects nothing)."""
    import re

    registered = {line.split(":")[0] for line in pytestconfig.getini("markers")}
    readme = (TESTS.parent / "README.md").read_text()
    named = set(re.findall(r'pytest[^\n]* -m "?([a-z ]+)"?', readme))
    words = {w for expr in named for w in expr.split()} - {"not", "and", "or"}
    assert words and words <= registered
