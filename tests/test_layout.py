"""The code's layout, read with `ast` (nothing is imported): the project's modules import each
other without a cycle, only one way between the packages (LAYERS), at module top (no import
tucked into a function to dodge one), and none grows past MAX_LINES; the README's "Layout" block
names every module file and nothing else. Known exceptions are listed below, each with its
reason; the temporary ones go when their file is fixed, and an exception that is no longer
needed fails the test."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The packages from the bottom up: each imports only itself and those before it. The library
# knows nothing of training; neither knows the benchmark and GPU check (a tool beside them).
LAYERS = ("bert_jax", "train", "benchmarks")
PACKAGES = LAYERS
MAX_LINES = 400

LONG_MODULES: dict[str, str] = {}
FUNCTION_IMPORTS = {
    "bert_jax/__init__.py": "lazy attributes (PEP 562) keep `import bert_jax` light, see "
                            "tests/test_api.py::test_importing_bert_jax_stays_light",
    "benchmarks/cli.py": "torch and transformers are optional (the torch extra): "
                         "torch_reference is loaded only when PyTorch timings are asked for",
}


def module_files() -> dict[str, Path]:
    """Module name ("bert_jax.convert", "bert_jax" for its __init__) -> file."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = module_files()


def rel(module: str) -> str:
    return MODULES[module].relative_to(ROOT).as_posix()


def imported_modules(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """The project modules an import statement of `module` loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the package of `module`
            package = module.split(".")
            if MODULES[module].name != "__init__.py":
                package = package[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        # `from bert_jax import convert` loads the submodule, `from bert_jax import X` the package
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                 for alias in node.names]
    found = []
    for name in names:
        while name and name not in MODULES:  # `import bert_jax.data.x` -> the longest module
            name = name.rpartition(".")[0]
        if name and name != module and name not in found:
            found.append(name)
    return found


def imports(module: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(project modules imported at module level, [(line, module)] imported inside functions)."""
    top, inner = set(), []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for name in imported_modules(child, module):
                    if in_function:
                        inner.append((child.lineno, name))
                    else:
                        top.add(name)
            visit(child, in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(MODULES[module].read_text(), str(MODULES[module])), False)
    return top, inner


IMPORTS = {module: imports(module) for module in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the current path, then "done"
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def layer(module: str) -> int:
    """The module's place in LAYERS (its top-level package)."""
    return LAYERS.index(module.split(".")[0])


def wrong_way(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a package imports one above it in LAYERS."""
    return sorted((module, name) for module, names in graph.items() for name in names
                  if layer(name) > layer(module))


def readme_layout(text: str) -> dict[str, set[str]]:
    """The "## Layout" section's code block: folder ("bert_jax", "benchmarks", "bert_jax/sub")
    -> the `.py` files named under it. A line whose first word ends in "/" opens that folder: at
    column 0 a top-level one, indented a subfolder of the one above, holding the lines indented
    deeper than it; a file written as a path ("train/step.py") is taken as that path. Every
    `x.py` on a line counts (a line may name several: "analyze.py, compare.py")."""
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```[^\n]*\n(.*?)^```", section, re.S | re.M)
    assert block, 'README.md: no code block in the "## Layout" section'
    named: dict[str, set[str]] = {}
    open_folders: list[tuple[int, str]] = []  # (indent, folder) of the headings above
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        while open_folders and open_folders[-1][0] >= indent:
            open_folders.pop()
        first = line.split()[0]
        if first.endswith("/") and re.fullmatch(r"[\w.]+/", first):
            parent = open_folders[-1][1] + "/" if open_folders else ""
            open_folders.append((indent, parent + first.rstrip("/")))
        folder = open_folders[-1][1] if open_folders else ""
        for name in re.findall(r"(?<![\w/.<>-])([\w/]*\w\.py)\b", line):
            path = name if "/" in name else f"{folder}/{name}".lstrip("/")
            where, _, file = path.rpartition("/")
            named.setdefault(where, set()).add(file)
    return named


README = (ROOT / "README.md").read_text()


def test_the_scan_sees_the_project():
    assert {"bert_jax", "bert_jax.convert", "bert_jax.converted", "train.multitask",
            "benchmarks", "benchmarks.cli", "benchmarks.device_check"} <= set(MODULES)
    top, _ = IMPORTS["bert_jax.pretrained"]
    assert {"bert_jax.converted", "bert_jax.embedded"} <= top
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = {"bert_jax.x": {"train.y", "bert_jax"}, "train.y": {"bert_jax.x", "benchmarks.z"},
             "benchmarks.z": {"train.y", "bert_jax.x"}}
    assert wrong_way(graph) == [("bert_jax.x", "train.y"), ("train.y", "benchmarks.z")]
    block = ("\n## Layout\n\n```\npkg/    the package\n  a.py    one; b.py, c.py: others\n"
             "          more of a.py's text (d.py); not tests/e.py\n  sub/    a subpackage\n"
             "          f.py, g.py\n  h.py    back in pkg\nother/  x.py\n```\n## Next\n")
    assert readme_layout(block) == {"pkg": {"a.py", "b.py", "c.py", "d.py", "h.py"},
                                    "pkg/sub": {"f.py", "g.py"}, "other": {"x.py"},
                                    "tests": {"e.py"}}


def test_imports_point_one_way():
    """bert_jax <- train <- benchmarks: the library imports neither of the others, training
    does not import the benchmark (at module top or inside a function)."""
    graph = {module: top | {name for _, name in inner} for module, (top, inner) in IMPORTS.items()}
    found = [f"{rel(module)}: imports {name} ({LAYERS[layer(module)]} is below "
             f"{LAYERS[layer(name)]} in {' <- '.join(LAYERS)})"
             for module, name in wrong_way(graph)]
    assert not found, "\n".join(found)


def test_readme_layout_names_every_module_and_no_other():
    named = readme_layout(README)
    files = {path.relative_to(ROOT).as_posix() for path in MODULES.values()}
    # The package heading stands for its __init__.py, `python -m PACKAGE` for its __main__.py.
    files = {f for f in files if Path(f).name not in ("__init__.py", "__main__.py")}
    listed = {f"{folder}/{name}" for folder, names in named.items() for name in names}
    unlisted = sorted(files - listed)
    assert not unlisted, ('README.md "## Layout" does not name: ' + ", ".join(unlisted)
                          + " (add each under its package's heading)")
    missing = sorted(f for f in listed if not (ROOT / f).is_file())
    assert not missing, 'README.md "## Layout" names files that do not exist: ' + ", ".join(missing)


def test_readme_states_the_limits_checked_here():
    said = re.search(r"no module over\s+about\s+(\d+)\s+lines", README)
    assert said and int(said.group(1)) == MAX_LINES, (said and said.group(0), MAX_LINES)


def test_no_import_cycle():
    cycle = find_cycle({module: top for module, (top, _) in IMPORTS.items()})
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_project_imports_are_at_module_top():
    found = [f"{rel(module)}:{line}: imports {name} inside a function"
             for module, (_, inner) in IMPORTS.items() if rel(module) not in FUNCTION_IMPORTS
             for line, name in inner]
    assert not found, "\n".join(found)


def test_modules_are_short():
    long = [f"{rel(module)}: {n} lines (at most {MAX_LINES})" for module in MODULES
            if (n := len(MODULES[module].read_text().splitlines())) > MAX_LINES
            and rel(module) not in LONG_MODULES]
    assert not long, "\n".join(long)


def test_every_exception_is_still_needed():
    files = {rel(module): module for module in MODULES}
    stale = [f"{path}: no longer imports inside a function; remove it from FUNCTION_IMPORTS"
             for path in FUNCTION_IMPORTS if path in files and not IMPORTS[files[path]][1]]
    stale += [f"{path}: now {MAX_LINES} lines or fewer; remove it from LONG_MODULES"
              for path in LONG_MODULES if path in files
              and len((ROOT / path).read_text().splitlines()) <= MAX_LINES]
    assert not stale, "\n".join(stale)
