"""Lazy imports of optional dependencies, failing with the pip extra that provides them."""

from __future__ import annotations

import importlib
from types import ModuleType

from duckstream.errors import MissingDependencyError

# module -> extra of duckstream that installs it
EXTRA_OF_MODULE: dict[str, str] = {
    "torch": "torch",
    "datasets": "hf",
    "lightning": "lightning",
    "wandb": "wandb",
    "pydantic_ai": "agent",
    "matplotlib": "quality",
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.partition(".")[0]
        if exc.name is None or exc.name.partition(".")[0] != top:
            raise  # the module exists but one of its own imports is broken: show that
        extra = EXTRA_OF_MODULE.get(top)
        hint = f"pip install 'duckstream[{extra}]'" if extra else f"pip install {top}"
        raise MissingDependencyError(
            f"{module!r} is required for this feature but is not installed; install it with: {hint}"
        ) from None
