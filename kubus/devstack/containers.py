"""The dev stack from container images, for machines with a Docker engine (testcontainers).

k3s (its own controller manager disabled, so kubus is the only one), NATS with JetStream and
Jaeger v2. It answers with the same env keys as :class:`kubus.devstack.DevStack`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from kubus.devstack import versions

__all__ = ["ContainerStack", "docker_available"]

K3S_IMAGE = "rancher/k3s:v1.36.3-k3s1"
NATS_IMAGE = "nats:" + versions.NATS_SERVER.lstrip("v")
JAEGER_IMAGE = "jaegertracing/jaeger:" + versions.JAEGER.lstrip("v")


def docker_available() -> bool:
    """True when a Docker engine answers (a docker client alone is not enough)."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run([docker, "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


class ContainerStack:
    def __init__(self) -> None:
        self._containers: list[Any] = []
        self._dir = Path(tempfile.mkdtemp(prefix="kubus-containers-"))
        self.env: dict[str, str] = {}

    def up(self) -> dict[str, str]:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs
        from testcontainers.k3s import K3SContainer

        try:
            k3s = K3SContainer(K3S_IMAGE).with_command(
                "server --disable-controller-manager --disable=traefik,servicelb,metrics-server"
            )
            nats = (
                DockerContainer(NATS_IMAGE)
                .with_command("-js -m 8222")
                .with_exposed_ports(4222, 8222)
            )
            jaeger = DockerContainer(JAEGER_IMAGE).with_exposed_ports(4317, 4318, 16686)
            for container in (k3s, nats, jaeger):
                container.start()
                self._containers.append(container)
            wait_for_logs(nats, "Server is ready")
            kubeconfig = self._dir / "kubeconfig"
            kubeconfig.write_text(k3s.config_yaml())
            host = nats.get_container_host_ip()
            self.env = {
                "KUBECONFIG": str(kubeconfig),
                "NATS_URL": f"nats://{host}:{nats.get_exposed_port(4222)}",
                "NATS_MONITOR_URL": f"http://{host}:{nats.get_exposed_port(8222)}",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{host}:{jaeger.get_exposed_port(4317)}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "JAEGER_OTLP_HTTP_ENDPOINT": f"http://{host}:{jaeger.get_exposed_port(4318)}",
                "JAEGER_QUERY_URL": f"http://{host}:{jaeger.get_exposed_port(16686)}",
            }
        except BaseException:
            self.stop()
            raise
        return self.env

    def stop(self) -> None:
        for container in reversed(self._containers):
            container.stop()
        self._containers.clear()
        shutil.rmtree(self._dir, ignore_errors=True)
