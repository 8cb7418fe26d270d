"""The versions the dev stack pins, in one place.

Kubernetes 1.36 is the newest release whose staging modules build with the Go 1.26 toolchain;
etcd 3.6 is the series paired with it upstream; Jaeger's module tag v1.76.0 is the Jaeger v2.13.0
binary (Jaeger publishes v2 under its v1 module path).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ETCD",
    "JAEGER",
    "JAEGER_MODULE",
    "KUBERNETES",
    "KWOK",
    "NATS_SERVER",
]

KUBERNETES: Final = "v1.36.3"
ETCD: Final = "v3.6.16"
KWOK: Final = "v0.8.0"
JAEGER: Final = "v2.13.0"
JAEGER_MODULE: Final = "v1.76.0"
NATS_SERVER: Final = "v2.15.1"
