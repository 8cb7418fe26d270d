"""Errors of the bus::

BusError
├── SubjectError      an object or subject that cannot be encoded or decoded
├── EnvelopeError     a message on the object stream that kubus did not write
└── BusConfigError    an existing stream or bucket whose settings conflict with ours
"""

from __future__ import annotations

__all__ = ["BusConfigError", "BusError", "EnvelopeError", "SubjectError"]


class BusError(Exception):
    pass


class SubjectError(BusError, ValueError):
    pass


class EnvelopeError(BusError, ValueError):
    pass


class BusConfigError(BusError):
    pass
