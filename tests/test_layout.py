"""The package's layout: no import circles, and each layer imports only the layers below it.

Every `import` counts, the lazy ones inside functions too (they are still dependencies).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pix2video"

LAYERS = {  # bottom to top; the package root is layer 0 and shared by all
    "": 0,
    "media": 1,
    "core": 2,
    "pipelines": 3,
    "evaluation": 4,
    "job": 4,
    "batch": 5,
    "ui": 5,
    "cli": 6,  # the command line starts the web page and the batch runner
}
ALLOWED_UPWARD = {
    # the settings validate positions, sizes and the method's options with the code that
    # defines them (modules that import nothing above the root and core, and not torch)
    ("settings", "media"),
    ("settings", "core.guidance"),
    ("settings", "core.options"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports() -> dict[str, set[str]]:
    """Module -> the pix2video modules it imports (names relative to the package)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        package = [p for p in package if p]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:  # `from . import media`: a module
                    sub = f"{target}.{alias.name}".strip(".")
                    targets.add(sub if sub in modules else target)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pix2video"):
                targets.add(node.module.removeprefix("pix2video").strip("."))
        graph[name] = {t for t in targets if t != name}
    return graph


def layer(module: str) -> int:
    top = module.split(".")[0] if "." in module or module in LAYERS else ""
    return LAYERS[top]


def test_no_import_circles():
    # a package's `__init__` re-exporting its own modules is no circle of the layout
    graph = {
        module: {t for t in targets if not (t.startswith(module + ".") or module == "")}
        for module, targets in imports().items()
    }
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(module: str, path: list[str]) -> None:
        seen[module] = 1
        for target in sorted(graph.get(module, ())):
            if seen.get(target) == 1:
                circles.append(path[path.index(target) :] + [target])
            elif target not in seen:
                visit(target, [*path, target])
        seen[module] = 2

    for module in sorted(graph):
        if module not in seen:
            visit(module, [module])
    assert circles == []


def test_each_layer_imports_only_the_layers_below():
    wrong = []
    for module, targets in imports().items():
        if module in ("", "__main__"):
            continue  # the public API and `python -m pix2video`: above everything they name
        for target in targets:
            top = module.split(".")[0]
            if layer(module) > 0 and target.split(".")[0] == top:
                continue  # within one package
            if (module, target) in ALLOWED_UPWARD:
                continue
            if layer(target) > layer(module) or (
                layer(target) == layer(module) and layer(module) > 0
            ):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


# ---------------------------------------------------------------------------- sizes
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
LONG_FUNCTIONS = {
    # diffusers-style: every argument of the method in one numbered, documented signature
    "pipelines/backbone.py::__call__",
    # a Gradio layout reads top to bottom as the page does
    "ui/layout.py::build_page",
}


def test_modules_hold_one_concern_each():
    """A module over 500 lines holds several concerns: split it by what each part holds."""
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_functions_fit_on_a_screen():
    """Functions (with their docstrings) stay under 60 lines, but for the allowed ones."""
    long = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{path.relative_to(PACKAGE)}::{node.name}"
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS:
                    long[name] = lines
    assert long == {}
    for name in LONG_FUNCTIONS:  # the allow-list names functions that exist
        module, function = name.split("::")
        tree = ast.parse((PACKAGE / module).read_text())
        assert any(getattr(node, "name", None) == function for node in ast.walk(tree)), name


def test_control_kinds_are_named_once():
    """Every --control name the settings list has its class, and every class its name."""
    from pix2video.errors import InputError
    from pix2video.job.conditioning import CONTROL_KIND_CLASSES
    from pix2video.settings import CONTROL_KINDS, EditSettings

    assert tuple(CONTROL_KIND_CLASSES) == CONTROL_KINDS
    bad = EditSettings("in.mp4", "p", "out.mp4", controlnet=("c",), control=("",))
    with pytest.raises(InputError) as error:
        bad.validate()
    assert all(kind in str(error.value) for kind in CONTROL_KINDS)  # listed from the registry
