"""Entry-point targets that are not controllers, each in its own way."""

from __future__ import annotations

from typing import ClassVar


def helper() -> None:
    """A function, not a class."""


class HalfController:
    """Has a name and nothing else a controller needs."""

    name: ClassVar[str] = "half-controller"
