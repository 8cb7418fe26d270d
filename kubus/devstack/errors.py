"""Errors of the dev stack.

Every error here is meant to end a command with one line that names the thing at fault::

    DevStackError
    ├── StateDirError        the state dir cannot be used, or a stack already runs from it
    ├── PortInUseError       a port asked for explicitly is taken
    ├── BinaryError          a component's binary cannot be found or built
    │   └── ToolchainMissingError   nothing to build it with
    └── ComponentError       a component exited early or never became ready
"""

from __future__ import annotations

__all__ = [
    "BinaryError",
    "ComponentError",
    "DevStackError",
    "PortInUseError",
    "StateDirError",
    "ToolchainMissingError",
]


class DevStackError(Exception):
    """Base of every dev stack failure; its message is a complete, user-facing sentence."""


class StateDirError(DevStackError):
    pass


class PortInUseError(DevStackError):
    pass


class BinaryError(DevStackError):
    pass


class ToolchainMissingError(BinaryError):
    pass


class ComponentError(DevStackError):
    pass
