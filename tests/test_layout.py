"""The package's layering: which folder may import which, and no import circles.

Read statically (the ast of every module of refdiff/ and kernels/), so a violation is caught
whether or not a test happens to import the offending module. What it catches: a math module
that reaches into the networks or the training code (a reader of refdiff/gaussian must not need
the autograd to follow an equation), the reference importing numba or CuPy at module level
(`import refdiff` must need NumPy alone), and a circle of module-level imports (which works or
breaks depending on which module a user imports first).
"""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# folder (or top-level module) -> the refdiff parts it must not import, at any depth
FORBIDDEN = {
    "refdiff.gaussian": ("refdiff.nn", "refdiff.models", "refdiff.training", "refdiff.io", "refdiff.samplers",
                         "refdiff.diffusion", "refdiff.cli", "refdiff.kernels"),
    "refdiff.samplers": ("refdiff.nn", "refdiff.models", "refdiff.training", "refdiff.io", "refdiff.diffusion",
                         "refdiff.cli", "refdiff.kernels"),
    "refdiff.nn": ("refdiff.gaussian", "refdiff.samplers", "refdiff.models", "refdiff.training", "refdiff.io",
                   "refdiff.diffusion", "refdiff.cli", "refdiff.kernels"),
    "refdiff.checks": ("refdiff.gaussian", "refdiff.samplers", "refdiff.nn", "refdiff.models", "refdiff.training",
                       "refdiff.io", "refdiff.diffusion", "refdiff.cli", "refdiff.kernels"),
    "refdiff.models": ("refdiff.samplers", "refdiff.training", "refdiff.diffusion", "refdiff.cli"),
    "refdiff.io": ("refdiff.gaussian", "refdiff.samplers", "refdiff.nn", "refdiff.models", "refdiff.training",
                   "refdiff.diffusion", "refdiff.cli"),
}
DEVICE_LIBRARIES = ("numba", "cupy")


def _module_name(path):
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    if rel.startswith("kernels"):
        rel = "refdiff." + rel
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _modules():
    found = {}
    for top in ("refdiff", "kernels"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(folder, f)
                    found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(name, path):
    """[(imported module, at module level?)] of one file, relative imports resolved."""
    tree = ast.parse(open(path).read(), path)
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        level = id(node) in top_level
        if isinstance(node, ast.Import):
            found += [(alias.name, level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.append((target, level))
            # "from . import functional": the names may be modules themselves
            found += [(f"{target}.{alias.name}", level) for alias in node.names if f"{target}.{alias.name}" in MODULES]
    return found


def _inside(module, part):
    return module == part or module.startswith(part + ".")


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_a_folder_imports_nothing_from_the_layers_it_must_not_know(folder):
    bad = [(name, target) for name, path in MODULES.items() if _inside(name, folder)
           for target, _ in _imports(name, path) if any(_inside(target, f) for f in FORBIDDEN[folder])]
    assert not bad, f"{folder} must not import {FORBIDDEN[folder]}; found {bad}"


def test_the_reference_imports_numba_and_cupy_only_inside_functions():
    """`import refdiff` needs NumPy alone: only the backend's functions and kernels/ touch the device."""
    bad = [(name, target) for name, path in MODULES.items() if not _inside(name, "refdiff.kernels")
           for target, top_level in _imports(name, path) if top_level and target.split(".")[0] in DEVICE_LIBRARIES]
    assert not bad, bad


def test_module_level_imports_form_no_circle():
    graph = {name: {t for t, top_level in _imports(name, path) if top_level and t in MODULES and t != name}
             for name, path in MODULES.items()}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open" and not _inside(node, nxt):  # a submodule importing its own package is fine
                raise AssertionError(f"import circle: {' -> '.join(stack[stack.index(nxt):] + [nxt])}")
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("folder", ["gaussian", "samplers", "nn", "models", "training", "io"])
def test_every_folder_of_the_layout_lists_its_modules_in_its_docstring(folder):
    """A reader opening a folder's __init__.py finds the map of the folder: every module named."""
    path = os.path.join(ROOT, "refdiff", folder)
    doc = ast.get_docstring(ast.parse(open(os.path.join(path, "__init__.py")).read())) or ""
    missing = [f for f in sorted(os.listdir(path)) if f.endswith(".py") and f != "__init__.py" and f not in doc]
    assert not missing, f"refdiff/{folder}/__init__.py does not mention {missing}"


def test_the_readme_map_names_every_folder_and_top_level_module():
    """The README's "where each idea lives" table follows the folders: a new folder or top-level
    module that the map does not name fails here, and so does a map entry left behind by a move."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    table = readme[readme.index("Where each idea lives"):readme.index("Numerics follow diffusers'")]
    package = os.path.join(ROOT, "refdiff")
    folders = {f"refdiff/{f}/" for f in os.listdir(package) if os.path.isfile(os.path.join(package, f, "__init__.py"))}
    modules = {f for f in os.listdir(package) if f.endswith(".py") and f != "__init__.py"}
    assert not [f for f in folders if f"`{f}`" not in table], "README map misses a folder"
    assert not [m for m in modules if f"`{m}`" not in table and f"`refdiff/{m}`" not in table], "README map misses a module"
    named = set(re.findall(r"`refdiff/(\w+)/`", table))
    assert {f"refdiff/{n}/" for n in named} <= folders, "README map names a folder that does not exist"
