"""The flags of the garbage collector and of the namespace controller, apart from them.

Their packages import the controllers, so the flags live here: the registry declares them to
the command line (``kubus reconciler --help`` lists every controller's flags) without importing
a controller, and each controller's ``flags`` names the same objects.
"""

from __future__ import annotations

from typing import Final

from kubus.cliutil import duration
from reconcilers.controller import Flag

__all__ = ["ENABLE_GARBAGE_COLLECTOR", "NAMESPACE_SYNC_PERIOD", "parse_bool"]


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool, as kcm's boolean flags read their value."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f"must be true or false, not {text!r}")


ENABLE_GARBAGE_COLLECTOR: Final = Flag(
    "enable-garbage-collector",
    True,
    "enables the generic garbage collector; must be synced with the corresponding "
    "flag of the kube-apiserver",
    parse_bool,
    metavar="true|false",
)
NAMESPACE_SYNC_PERIOD: Final = Flag(
    "namespace-sync-period",
    300.0,
    "the period for syncing namespace life-cycle updates",
    duration(minimum=0.0),
    shown_default="5m0s",
    metavar="DURATION",
)
