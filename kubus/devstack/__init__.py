"""The local dev stack: real etcd, kube-apiserver, kube-scheduler, kwok, NATS and Jaeger.

``kubus dev up`` and the test fixtures share this code; nothing here is a stand-in for a server.
"""

from kubus.devstack.binaries import COMPONENTS, Binaries, ResolvedBinary, default_cache_dir
from kubus.devstack.errors import (
    BinaryError,
    ComponentError,
    DevStackError,
    PortInUseError,
    StateDirError,
    ToolchainMissingError,
)
from kubus.devstack.stack import DevStack, StackConfig, down

__all__ = [
    "COMPONENTS",
    "Binaries",
    "BinaryError",
    "ComponentError",
    "DevStack",
    "DevStackError",
    "PortInUseError",
    "ResolvedBinary",
    "StackConfig",
    "StateDirError",
    "ToolchainMissingError",
    "default_cache_dir",
    "down",
]
