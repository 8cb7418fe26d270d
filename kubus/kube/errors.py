"""Errors of the apiserver client::

KubeApiError            the apiserver answered with an error Status
├── GoneError           410: the resourceVersion asked for is compacted away; relist
└── UnknownResourceError  discovery knows no such group/version/resource
"""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
    "ConflictError",
    "GoneError",
    "InvalidError",
    "KubeApiError",
    "NotFoundError",
    "UnknownResourceError",
]


class KubeApiError(Exception):
    def __init__(
        self, status: int, reason: str, message: str, causes: tuple[str, ...] = ()
    ) -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message
        # The Status's ``details.causes[].reason`` (e.g. ``NamespaceTerminating``).
        self.causes = causes


class GoneError(KubeApiError):
    pass


class UnknownResourceError(KubeApiError):
    pass


class NotFoundError(KubeApiError):
    pass


class ConflictError(KubeApiError):
    pass


class AlreadyExistsError(ConflictError):
    pass


class InvalidError(KubeApiError):
    pass


def error_for(code: int, reason: str, message: str, causes: tuple[str, ...] = ()) -> KubeApiError:
    """The most specific error class for an apiserver Status."""
    if code == 410 or reason in ("Expired", "Gone"):
        return GoneError(410, reason or "Gone", message, causes)
    if code == 404:
        return NotFoundError(code, reason, message, causes)
    if code == 409:
        if reason == "AlreadyExists":
            return AlreadyExistsError(code, reason, message, causes)
        return ConflictError(code, reason, message, causes)
    if code == 422:
        return InvalidError(code, reason, message, causes)
    return KubeApiError(code, reason, message, causes)
