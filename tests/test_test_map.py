"""tests/README.md says which tests cover which module: every module file of bert_jax/, train/
and benchmarks/ is listed once, with test files that exist and import or name it (or name the
module it is tested through, which imports or runs it); a module's own test_<module>.py that
names it is among them."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
PACKAGES = ("bert_jax", "train", "benchmarks")
ROW = re.compile(r"^\| `([\w/]+\.py)` \| (.*?) \|(.*)\|$", re.M)


def module_files() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for package in PACKAGES
                  for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def test_map() -> dict[str, tuple[list[str], list[str]]]:
    """{module file: (its test files, the modules it is tested through)} from the README's
    tables: `| \\`pkg/module.py\\` | \\`test_x.py\\`, ... | how (\\`pkg/other.py\\` ...) |`."""
    rows = {}
    for module, tests, how in ROW.findall((TESTS / "README.md").read_text()):
        assert module not in rows, f"tests/README.md lists {module} twice"
        rows[module] = (re.findall(r"`(test_\w+\.py)`", tests),
                        re.findall(rf"`((?:{'|'.join(PACKAGES)})/\w+\.py)`", how))
    return rows


test_map.__test__ = False  # a helper, not a test


def imported_names(text: str, source: str) -> set[str]:
    """The names `text` imports with `from SOURCE import ...` (one line or in parentheses)."""
    found = re.findall(rf"^\s*from {re.escape(source)} import ([^\n(]+|\([^)]*\))", text, re.M)
    return {name.split(" as ")[0].strip() for names in found
            for name in re.sub(r"#.*", "", names).strip("()").split(",") if name.strip()}


def mentions(text: str, module: str, init: str = "") -> bool:
    """Whether source `text` imports or names `module` ("train/step.py"): its dotted name or
    path, `from train import step`, a package's `from train import`, `-m benchmarks`, or a name
    that the package's __init__ (source `init`) imports from the module."""
    package, stem = module[:-3].split("/")
    if stem == "__init__":
        return bool(re.search(rf"^\s*(from {package} import|import {package}\b)", text, re.M))
    if stem == "__main__":
        return bool(re.search(rf"-m\W+{package}\b(?!\.)", text))
    if re.search(rf"\b{package}\.{stem}\b|\b{package}/{stem}\.py\b", text):
        return True
    names = imported_names(text, package)
    return stem in names or bool(names & imported_names(init, f"{package}.{stem}"))


def uses(path: Path, module: str) -> bool:
    """`mentions` for the file at `path`, with the module's package __init__ read."""
    init = ROOT / module.split("/")[0] / "__init__.py"
    return mentions(path.read_text(), module, init.read_text())


def test_every_module_is_listed_once_with_tests_that_exist():
    rows = test_map()
    assert sorted(rows) == module_files(), (
        "tests/README.md must list every module file of " + ", ".join(PACKAGES) + " and no "
        f"other: missing {sorted(set(module_files()) - set(rows))}, not modules "
        f"{sorted(set(rows) - set(module_files()))}")
    for module, (tests, through) in rows.items():
        assert tests, f"{module}: no test file listed"
        missing = [t for t in tests if not (TESTS / t).is_file()]
        assert not missing, f"{module}: tests/README.md lists {missing}, which do not exist"
        assert all((ROOT / t).is_file() for t in through), (module, through)


@pytest.mark.parametrize("module", module_files())
def test_the_listed_tests_use_the_module(module):
    """Each listed test file imports or names the module, or a module the row says it is tested
    through (which imports or names it in turn); the module's own test_<module>.py, where it
    names the module, is listed."""
    tests, through = test_map().get(module, ([], []))
    via = [t for t in through if uses(ROOT / t, module)]
    assert via == through, f"{module}: {sorted(set(through) - set(via))} do not use it"
    for test in tests:
        assert uses(TESTS / test, module) or any(uses(TESTS / test, t) for t in via), (
            f"tests/README.md: {test} neither imports nor names {module} (nor one of {via})")
    own = TESTS / f"test_{Path(module).stem}.py"
    if own.is_file() and uses(own, module):
        assert own.name in tests, f"{module}: its own {own.name} is not listed"


def test_mentions_reads_imports_names_and_module_runs():
    assert mentions("from train.step import create_state", "train/step.py")
    assert mentions("from train import compare, step\n", "train/step.py")
    assert mentions("from bert_jax import (api,\n    plots)", "bert_jax/plots.py")
    assert mentions('run(["-m", "benchmarks.device_stages"])', "benchmarks/device_stages.py")
    assert mentions('"""bert_jax/errors.py: ..."""', "bert_jax/errors.py")
    assert mentions('prefix=("-m", "benchmarks")', "benchmarks/__main__.py")
    assert mentions("    from train import ablation\n", "train/__init__.py")
    assert not mentions("from train.step_log import LossWatch", "train/step.py")
    assert not mentions('run(["-m", "benchmarks.cli"])', "benchmarks/__main__.py")
    assert not mentions("from bert_jax.api import step", "train/step.py")
    init = "from bert_jax.tokenizer import Tokenizer, pad_ids\n"
    assert mentions("from bert_jax import (BertModel,\n    Tokenizer)", "bert_jax/tokenizer.py",
                    init)
    assert not mentions("from bert_jax import BertModel", "bert_jax/tokenizer.py", init)
    assert mentions("from bert_jax import Tokenizer  # noqa: E402", "bert_jax/tokenizer.py", init)
