"""The flags of the garbage collector, the namespace controller and the persistentvolume binder,
apart from them.

Their packages import the controllers, so the flags live here: the registry declares them to
the command line (``kubus reconciler --help`` lists every controller's flags) without importing
a controller, and each controller's ``flags`` names the same objects.
"""

from __future__ import annotations

from typing import Final

from kubus.cliutil import duration
from reconcilers.controller import Flag

__all__ = [
    "ENABLE_DYNAMIC_PROVISIONING",
    "ENABLE_GARBAGE_COLLECTOR",
    "NAMESPACE_SYNC_PERIOD",
    "PVCLAIMBINDER_SYNC_PERIOD",
    "parse_bool",
]


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
PVCLAIMBINDER_SYNC_PERIOD: Final = Flag(
    "pvclaimbinder-sync-period",
    15.0,
    "the period for syncing persistent volumes and persistent volume claims",
    duration(minimum=0.0),
    shown_default="15s",
    metavar="DURATION",
)
ENABLE_DYNAMIC_PROVISIONING: Final = Flag(
    "enable-dynamic-provisioning",
    True,
    "enable dynamic provisioning for environments that support it",
    parse_bool,
    metavar="true|false",
)
