"""The resources kubus's controllers read and write, and the shape of an object, named once.

Objects are the apiserver's JSON decoded to plain dicts (the bus and the cache hold nothing
else), so ``Object`` is an alias, not a model. The ``ResourceType`` constants are what the
cache, the bus subjects and a controller's ``reads`` declaration key on.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

import msgspec

from bus.subjects import ResourceType

__all__ = [
    "CONFIGMAPS",
    "CONTROLLERREVISIONS",
    "CRONJOBS",
    "DAEMONSETS",
    "DEPLOYMENTS",
    "EVENTS",
    "JOBS",
    "NAMESPACES",
    "NODES",
    "PERSISTENTVOLUMECLAIMS",
    "PERSISTENTVOLUMES",
    "PODDISRUPTIONBUDGETS",
    "PODS",
    "REPLICASETS",
    "REPLICATIONCONTROLLERS",
    "SECRETS",
    "SERVICEACCOUNTS",
    "SERVICES",
    "STATEFULSETS",
    "STORAGECLASSES",
    "Object",
    "clone",
]

Object = dict[str, Any]

_Json = TypeVar("_Json")
_encoder = msgspec.json.Encoder()


def clone(value: _Json) -> _Json:
    """A deep copy of JSON data (an object, or any part of one). Decoding its encoding is six
    times faster than ``copy.deepcopy`` on a pod, which every sync makes a few of."""
    copied: _Json = msgspec.json.decode(_encoder.encode(value))
    return copied


PODS: Final = ResourceType("", "v1", "pods")
REPLICASETS: Final = ResourceType("apps", "v1", "replicasets")
REPLICATIONCONTROLLERS: Final = ResourceType("", "v1", "replicationcontrollers")
DEPLOYMENTS: Final = ResourceType("apps", "v1", "deployments")
STATEFULSETS: Final = ResourceType("apps", "v1", "statefulsets")
DAEMONSETS: Final = ResourceType("apps", "v1", "daemonsets")
CONTROLLERREVISIONS: Final = ResourceType("apps", "v1", "controllerrevisions")
PODDISRUPTIONBUDGETS: Final = ResourceType("policy", "v1", "poddisruptionbudgets")
JOBS: Final = ResourceType("batch", "v1", "jobs")
CRONJOBS: Final = ResourceType("batch", "v1", "cronjobs")
EVENTS: Final = ResourceType("", "v1", "events")
NODES: Final = ResourceType("", "v1", "nodes")
NAMESPACES: Final = ResourceType("", "v1", "namespaces")
SERVICEACCOUNTS: Final = ResourceType("", "v1", "serviceaccounts")
SECRETS: Final = ResourceType("", "v1", "secrets")
CONFIGMAPS: Final = ResourceType("", "v1", "configmaps")
SERVICES: Final = ResourceType("", "v1", "services")
PERSISTENTVOLUMES: Final = ResourceType("", "v1", "persistentvolumes")
PERSISTENTVOLUMECLAIMS: Final = ResourceType("", "v1", "persistentvolumeclaims")
STORAGECLASSES: Final = ResourceType("storage.k8s.io", "v1", "storageclasses")
