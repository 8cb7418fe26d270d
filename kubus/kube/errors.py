"""Errors of the apiserver client::

KubeApiError            the apiserver answered with an error Status
├── GoneError           410: the resourceVersion asked for is compacted away; relist
└── UnknownResourceError  discovery knows no such group/version/resource
"""

from __future__ import annotations

__all__ = ["GoneError", "KubeApiError", "UnknownResourceError"]


class KubeApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message


class GoneError(KubeApiError):
    pass


class UnknownResourceError(KubeApiError):
    pass
