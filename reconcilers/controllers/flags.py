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
    "POD_GC_CHECK_PERIOD",
    "POD_GC_QUARANTINE_TIME",
    "PVCLAIMBINDER_SYNC_PERIOD",
    "STALE_POD_DISRUPTION_TIMEOUT",
    "TERMINATED_POD_GC_THRESHOLD",
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
TERMINATED_POD_GC_THRESHOLD: Final = Flag(
    "terminated-pod-gc-threshold",
    12500,
    "Number of terminated pods that can exist before the terminated pod garbage collector starts"
    " deleting terminated pods. If <= 0, the terminated pod garbage collector is disabled.",
    int,
    metavar="INT",
)
# kubus's own: kcm hard-codes these two (upstream's gcCheckPeriod and quarantineTime), and its
# integration tests shorten them through NewPodGCInternal; these flags do the same for ours.
POD_GC_CHECK_PERIOD: Final = Flag(
    "pod-gc-check-period",
    20.0,
    "(kubus) how often the pod garbage collector looks at every pod",
    duration(minimum=0.0),
    shown_default="20s",
    metavar="DURATION",
)
POD_GC_QUARANTINE_TIME: Final = Flag(
    "pod-gc-quarantine-time",
    40.0,
    "(kubus) how long a node must stay missing before its pods are deleted as orphans",
    duration(minimum=0.0, inclusive=True),
    shown_default="40s",
    metavar="DURATION",
)
ENABLE_DYNAMIC_PROVISIONING: Final = Flag(
    "enable-dynamic-provisioning",
    True,
    "enable dynamic provisioning for environments that support it",
    parse_bool,
    metavar="true|false",
)
# kubus's own: kcm hard-codes upstream's stalePodDisruptionTimeout, and its integration tests
# shorten it through NewDisruptionControllerInternal; this flag does the same for ours.
STALE_POD_DISRUPTION_TIMEOUT: Final = Flag(
    "stale-pod-disruption-timeout",
    120.0,
    "(kubus) how long a pod may keep a DisruptionTarget condition without being deleted "
    "before the disruption controller sets the condition to False",
    duration(minimum=0.0, inclusive=True),
    shown_default="2m0s",
    metavar="DURATION",
)
