from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import duckstream
from duckstream._optional import EXTRA_OF_MODULE, require
from duckstream.errors import DuckstreamError, MissingDependencyError

PACKAGE_DIR = Path(duckstream.__file__).parent


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert duckstream.__all__ == sorted(duckstream.__all__)
    for name in duckstream.__all__:
        assert getattr(duckstream, name) is not None


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = duckstream.Nope


@pytest.mark.parametrize(
    "module", sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE_DIR)], "duckstream."))
)
def test_every_module_has_a_docstring_and_a_sorted_all(module: str) -> None:
    imported = importlib.import_module(module)
    assert imported.__doc__, f"{module} has no module docstring"
    names = getattr(imported, "__all__", None)
    if names is not None:
        assert list(names) == sorted(names)
        for name in names:
            assert hasattr(imported, name), f"{module}.__all__ names missing {name}"


def _imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.partition(".")[0])
    return found


def test_the_core_never_imports_the_optional_stacks() -> None:
    core_files = [
        *PACKAGE_DIR.joinpath("core").rglob("*.py"),
        *(PACKAGE_DIR / name for name in ("engine.py", "query.py", "storage.py", "redact.py")),
    ]
    for path in core_files:
        assert not _imports_of(path) & set(EXTRA_OF_MODULE), path


def test_import_duckstream_stays_light() -> None:
    code = (
        "import sys, duckstream; from duckstream import LakehouseQuery; "
        "heavy = {'torch', 'datasets', 'lightning', 'wandb', 'pydantic_ai'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(("module", "extra"), sorted(EXTRA_OF_MODULE.items()))
def test_require_names_the_extra_to_install(module: str, extra: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail exactly as for an absent package.
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependencyError, match=rf"pip install 'duckstream\[{extra}\]'"):
        require(module)


def test_require_returns_installed_modules() -> None:
    assert require("torch").__name__ == "torch"


def test_missing_dependency_is_both_an_import_error_and_ours() -> None:
    assert issubclass(MissingDependencyError, ImportError)
    assert issubclass(MissingDependencyError, DuckstreamError)
