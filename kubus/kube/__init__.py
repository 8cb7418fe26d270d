"""An asyncio apiserver client for the hot paths: discovery, paginated lists, watches.

Configuration and authentication come from the official client (kubeconfig, in-cluster, exec
plugins); requests go through aiohttp and responses are decoded with msgspec, so a watch never
blocks the event loop and an object is decoded once, only as far as the caller needs.
"""

from kubus.kube.client import (
    ApiResource,
    KubeClient,
    ListPage,
    ObjectIdentity,
    WatchEvent,
    decode_identity,
)
from kubus.kube.config import KubeConfig, load_kube_config
from kubus.kube.discovery import Discovery, discover_all
from kubus.kube.errors import (
    AlreadyExistsError,
    ConflictError,
    GoneError,
    InvalidError,
    KubeApiError,
    NotFoundError,
    UnknownResourceError,
)

__all__ = [
    "AlreadyExistsError",
    "ApiResource",
    "ConflictError",
    "Discovery",
    "GoneError",
    "InvalidError",
    "KubeApiError",
    "KubeClient",
    "KubeConfig",
    "ListPage",
    "NotFoundError",
    "ObjectIdentity",
    "UnknownResourceError",
    "WatchEvent",
    "decode_identity",
    "discover_all",
    "load_kube_config",
]
