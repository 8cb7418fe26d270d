"""Reconciler pools: partition ownership, caches, work queues and controllers.

What a controller is written against is exported here; everything else (the manager, the
partition runners, the supervisor) is machinery a controller never imports.
"""

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
