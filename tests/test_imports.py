"""Every module of `mdt` and `mdt_kernels` imports, and neither package has an import cycle.

The import graph is read from the source with ast: every `import` and `from ... import` statement, at the
top of a module or inside a function (a lazy import is still a dependency), resolved to the package's own
modules (`from . import x` means the module x when there is one). A cycle makes a module's meaning depend
on which of its partners is imported first; the layers of `mdt` are meant to point one way:
utils, models, diffusion, data -> checkpoint, train_step, sample -> the commands -> cli.
"""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("mdt", "mdt_kernels")


def package_modules(root: pathlib.Path, package: str) -> dict[str, pathlib.Path | None]:
    """Module name -> source file of every module of `package` under `root` (None: a compiled extension)."""
    modules = {}
    for path in sorted((root / package).rglob("*")):
        rel = path.relative_to(root)
        if path.suffix == ".py":
            parts = rel.with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
        elif path.suffix == ".so":  # e.g. mdt_kernels/_C.abi3.so -> mdt_kernels._C
            modules[".".join((*rel.parent.parts, path.name.split(".")[0]))] = None
    return modules


def _resolve(name: str, modules) -> str | None:
    """The longest prefix of the dotted `name` that is one of `modules`."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules:
            return ".".join(parts[:i])
    return None


def imports_of(module: str, path: pathlib.Path, modules) -> set[str]:
    """The modules of the same package that `module` (source `path`) imports, anywhere in its code."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(_resolve(a.name, modules) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per extra dot
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for a in node.names:  # `from pkg import sub` imports the module pkg.sub when there is one
                sub = f"{target}.{a.name}"
                found.add(sub if sub in modules else _resolve(target, modules))
    found.discard(None)
    found.discard(module)
    return found


def import_graph(root: pathlib.Path, package: str) -> dict[str, set[str]]:
    modules = package_modules(root, package)
    return {m: imports_of(m, p, modules) for m, p in modules.items() if p is not None}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle [a, b, ..., a] of the directed graph, or None."""
    state, stack = {}, []  # state: 1 = on the current path, 2 = done

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_imports(package):
    for module in package_modules(ROOT, package):
        importlib.import_module(module)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    cycle = find_cycle(import_graph(ROOT, package))
    assert cycle is None, f"import cycle in {package}: {' -> '.join(cycle)}"


def test_the_check_finds_a_cycle(tmp_path):
    """A two-module cycle through a lazy import, and a longer one through a package's __init__."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from . import b\n\ndef f():\n    return b\n")
    (pkg / "b.py").write_text("import os\n\ndef g():\n    from .sub import c\n    return c\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from ..a import f\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.sub.c"}, "pkg.sub": set(),
                     "pkg.sub.c": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    (pkg / "sub" / "c.py").write_text("from .. import f\n")  # a name of the package: its __init__ is imported
    assert find_cycle(import_graph(tmp_path, "pkg")) == ["pkg", "pkg.a", "pkg.b", "pkg.sub.c", "pkg"]
    (pkg / "sub" / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None
