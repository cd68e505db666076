"""Import a module that a build of Slipway may leave out (a domain's CLI, API or jobs)."""

from __future__ import annotations

import importlib
from types import ModuleType


def import_optional(name: str) -> ModuleType | None:
    """The module, or ``None`` when it (or its package) does not exist.

    A missing *dependency* inside an existing module still raises: that is a bug to see.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            return None
        raise
