"""Reconciler pools: partition ownership, caches, work queues and controllers.

What a controller is written against is exported here; everything else (the manager, the
partition runners, the supervisor) is machinery a controller never imports.

The exports are imported on first use (PEP 562's module ``__getattr__``), so that importing
any module of the package (the command line, the registry) does not import the cache, the
event recorder and the apiserver client behind them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from reconcilers.cache import ObjectCache, controller_of
    from reconcilers.controller import (
        EVERY_RESOURCE,
        Context,
        Controller,
        ControllerBase,
        Flag,
        Permission,
        Request,
        Result,
        RetryPolicy,
        Scope,
        TerminalError,
    )
    from reconcilers.events import EventRecorder
    from reconcilers.expectations import Expectations
    from reconcilers.selectors import InvalidSelectorError, Selector

__all__ = [
    "EVERY_RESOURCE",
    "Context",
    "Controller",
    "ControllerBase",
    "EventRecorder",
    "Expectations",
    "Flag",
    "InvalidSelectorError",
    "ObjectCache",
    "Permission",
    "Request",
    "Result",
    "RetryPolicy",
    "Scope",
    "Selector",
    "TerminalError",
    "controller_of",
]

# Each export, and the module it comes from.
_FROM: Final[dict[str, str]] = {
    "ObjectCache": "reconcilers.cache",
    "controller_of": "reconcilers.cache",
    "EventRecorder": "reconcilers.events",
    "Expectations": "reconcilers.expectations",
    "InvalidSelectorError": "reconcilers.selectors",
    "Selector": "reconcilers.selectors",
    **dict.fromkeys(
        (
            "EVERY_RESOURCE",
            "Context",
            "Controller",
            "ControllerBase",
            "Flag",
            "Permission",
            "Request",
            "Result",
            "RetryPolicy",
            "Scope",
            "TerminalError",
        ),
        "reconcilers.controller",
    ),
}


def __getattr__(name: str) -> Any:
    module = _FROM.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
