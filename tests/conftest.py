"""Session fixtures: one real dev stack for the whole test run.

Which stack, in this order:
- ``KUBUS_TEST_ENV_FILE=DIR/env``: an already running stack (``kubus dev up --detach``), or any
  cluster + NATS + Jaeger described by such a file;
- a Docker engine that answers: the testcontainers stack (k3s, NATS, Jaeger);
- otherwise the local stack of ``kubus dev up``, started by the same code.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubus.devstack import Binaries, DevStack, StackConfig, default_cache_dir
from kubus.devstack.containers import ContainerStack, docker_available
from kubus.devstack.state import read_env_file

log = logging.getLogger("kubus.tests")


@pytest.fixture(scope="session")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The env of a running stack: KUBECONFIG, NATS_URL, OTEL_EXPORTER_OTLP_ENDPOINT, ..."""
    env_file = os.environ.get("KUBUS_TEST_ENV_FILE")
    if env_file:
        yield read_env_file(Path(env_file))
        return
    if os.environ.get("KUBUS_TEST_STACK", "auto") != "local" and docker_available():
        containers = ContainerStack()
        yield containers.up()
        containers.stop()
        return
    # Infrastructure only: each test runs the kubus services it is about, as it needs them.
    stack = _local_stack(tmp_path_factory.mktemp("dev-stack"), nodes=3)
    env = stack.up(progress=log.info)
    try:
        yield env
    finally:
        stack.stop()


def _local_stack(state_dir: Path, *, nodes: int) -> DevStack:
    return DevStack(
        StackConfig(
            state_dir=state_dir,
            binaries=Binaries(cache_dir=default_cache_dir(os.environ)),
            nodes=nodes,
            services=False,
            tied_to_parent=True,
        )
    )


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[DevStack]:
    """A local stack of this test's own, for tests that stop and restart its servers."""
    stack = _local_stack(tmp_path / "stack", nodes=1)
    stack.up(progress=log.info)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def kube(stack_env: dict[str, str]) -> Any:
    """An ApiClient of the official Kubernetes client, as the stack's admin."""
    from kubernetes import config

    return config.new_client_from_config(config_file=stack_env["KUBECONFIG"])


@pytest.fixture
def namespace(kube: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(kube)
    name = f"t-{request.node.name.lower().replace('_', '-')[:40].strip('-')}-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)
