"""The dev stack is made of real servers that behave as such."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


def test_unscheduled_pod_lands_on_a_fake_node_and_becomes_ready(kube: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
        },
    )

    def ready_pod() -> Any:
        pod = core.read_namespaced_pod("web", namespace)
        conditions = {c.type: c.status for c in pod.status.conditions or []}
        return pod if pod.status.phase == "Running" and conditions.get("Ready") == "True" else None

    pod = wait_for(ready_pod, timeout=60, what="pod web Running and Ready")
    assert pod.spec.node_name.startswith("kwok-node-")
    assert pod.status.pod_ip


@pytest.mark.parametrize(
    "image",
    [
        "webserver:404",
        "invalid.registry.k8s.io/invalid/alpine:3.1",
        "nonexistent:1",
        "foo:non-existent",
    ],
)
def test_a_pod_of_an_image_that_cannot_be_pulled_stays_pending_in_image_pull_backoff(
    kube: Any, namespace: str, image: str
) -> None:
    """As a kubelet reports it: Pending, ErrImagePull, then ImagePullBackOff; never Ready."""
    core = client.CoreV1Api(kube)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "unpullable"},
            "spec": {"containers": [{"name": "web", "image": image}]},
        },
    )
    seen: set[str] = set()

    def waiting_reason() -> str | None:
        pod = core.read_namespaced_pod("unpullable", namespace)
        assert pod.status.phase == "Pending", pod.status
        for status in pod.status.container_statuses or ():
            if status.state.waiting is not None:
                seen.add(status.state.waiting.reason)
                return str(status.state.waiting.reason)
        return None

    wait_for(lambda: waiting_reason() == "ImagePullBackOff", timeout=30, what="ImagePullBackOff")
    pod = core.read_namespaced_pod("unpullable", namespace)
    conditions = {c.type: (c.status, c.reason) for c in pod.status.conditions or []}
    assert conditions["Ready"] == ("False", "ContainersNotReady")
    assert pod.status.container_statuses[0].state.waiting.message == (
        f'Back-off pulling image "{image}"'
    )
    assert seen <= {"ErrImagePull", "ImagePullBackOff"}


def test_a_container_with_a_readiness_probe_is_ready_only_once_its_initial_delay_passed(
    kube: Any, namespace: str
) -> None:
    """As a kubelet reports it: Running at once with the probed container unready (the pod's
    Ready and ContainersReady False, naming it), then Ready after initialDelaySeconds plus a
    period per extra success of successThreshold; a container without a probe is ready at once."""
    core = client.CoreV1Api(kube)
    probe = {"exec": {"command": ["true"]}, "initialDelaySeconds": 10, "periodSeconds": 2}
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "probed"},
            "spec": {
                "containers": [
                    {"name": "plain", "image": "registry.example/plain:1"},
                    {
                        "name": "web",
                        "image": "registry.example/web:1",
                        "readinessProbe": {**probe, "successThreshold": 2},
                    },
                ]
            },
        },
    )

    def conditions(pod: Any) -> dict[str, Any]:
        return {c.type: c for c in pod.status.conditions or []}

    def running() -> Any:
        pod = core.read_namespaced_pod("probed", namespace)
        return pod if pod.status.phase == "Running" else None

    pod = wait_for(running, timeout=60, what="pod probed Running")
    started = {s.name: s for s in pod.status.container_statuses}
    assert conditions(pod)["Ready"].status == "False"
    assert conditions(pod)["Ready"].reason == "ContainersNotReady"
    assert conditions(pod)["Ready"].message == "containers with unready status: [web]"
    assert conditions(pod)["ContainersReady"].status == "False"
    assert (started["plain"].ready, started["web"].ready) == (True, False)
    began = started["web"].state.running.started_at

    def ready() -> Any:
        pod = core.read_namespaced_pod("probed", namespace)
        return pod if conditions(pod)["Ready"].status == "True" else None

    pod = wait_for(ready, timeout=60, what="pod probed Ready")
    ready_at = conditions(pod)["Ready"].last_transition_time
    # 10 s of initial delay and one more period of 2 s for the second success, to the second.
    assert (ready_at - began).total_seconds() >= 12 - 1
    assert conditions(pod)["ContainersReady"].status == "True"
    assert conditions(pod)["Ready"].reason is None
    assert all(s.ready for s in pod.status.container_statuses)
    assert pod.status.container_statuses[1].state.running.started_at == began


def test_a_deleted_pod_a_finalizer_holds_is_terminated_and_stays_until_the_finalizer_goes(
    kube: Any, namespace: str
) -> None:
    """As a kubelet plays a graceful deletion: the containers stop (exit 0), the pod is
    Succeeded and not Ready, and the object stays while the finalizer is on it."""
    core = client.CoreV1Api(kube)
    finalizer = "example.com/test-finalizer"
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "held", "finalizers": [finalizer]},
            "spec": {"containers": [{"name": "web", "image": "registry.example/web:1"}]},
        },
    )
    wait_for(
        lambda: core.read_namespaced_pod("held", namespace).status.phase == "Running",
        timeout=60,
        what="pod held Running",
    )
    core.delete_namespaced_pod("held", namespace)

    def terminated() -> Any:
        pod = core.read_namespaced_pod("held", namespace)
        return pod if pod.status.phase == "Succeeded" else None

    pod = wait_for(terminated, timeout=60, what="pod held Succeeded while its finalizer holds it")
    assert pod.metadata.deletion_timestamp is not None
    conditions = {c.type: (c.status, c.reason) for c in pod.status.conditions or []}
    assert conditions["Ready"] == ("False", "PodCompleted")
    (status,) = pod.status.container_statuses
    assert (status.ready, status.state.terminated.exit_code) == (False, 0)

    core.patch_namespaced_pod("held", namespace, {"metadata": {"finalizers": None}})

    def gone() -> bool:
        try:
            core.read_namespaced_pod("held", namespace)
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    wait_for(gone, timeout=60, what="pod held gone once its finalizer is removed")


def test_rbac_refuses_a_token_without_rights(
    kube: Any, namespace: str, stack_env: dict[str, str]
) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token

    configuration = client.Configuration()
    configuration.host = kube.configuration.host
    configuration.ssl_ca_cert = kube.configuration.ssl_ca_cert
    configuration.api_key = {"authorization": f"Bearer {token}"}
    as_nobody = client.CoreV1Api(client.ApiClient(configuration))

    with pytest.raises(ApiException) as refused:
        as_nobody.list_namespaced_pod(namespace)
    assert refused.value.status == 403
    assert f"system:serviceaccount:{namespace}:nobody" in json.loads(refused.value.body)["message"]
    # The same token is authenticated (not 401): the apiserver really authorizes it.
    review = client.AuthenticationV1Api(kube).create_token_review({"spec": {"token": token}})
    assert review.status.authenticated


def test_jetstream_stores_and_returns_a_message(stack_env: dict[str, str]) -> None:
    import nats

    async def roundtrip() -> bytes:
        connection = await nats.connect(stack_env["NATS_URL"])
        try:
            js = connection.jetstream()
            stream = f"T{uuid.uuid4().hex[:8]}"
            await js.add_stream(name=stream, subjects=[f"{stream}.>"])
            ack = await js.publish(f"{stream}.greeting", b"hello kubus")
            message = await js.get_msg(stream, ack.seq)
            await js.delete_stream(stream)
            return bytes(message.data or b"")
        finally:
            await connection.close()

    assert asyncio.run(roundtrip()) == b"hello kubus"


def test_an_otlp_span_is_found_through_the_jaeger_query_api(stack_env: dict[str, str]) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    service = f"kubus-test-{uuid.uuid4().hex[:8]}"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=stack_env["OTEL_EXPORTER_OTLP_ENDPOINT"], insecure=True)
        )
    )
    with provider.get_tracer("tests").start_as_current_span("reconcile") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()

    def found() -> Any:
        url = f"{stack_env['JAEGER_QUERY_URL']}/api/traces/{trace_id}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                data = json.load(response)["data"]
        except OSError:
            return None
        return data or None

    traces = wait_for(found, timeout=30, what=f"trace {trace_id} in Jaeger")
    assert [s["operationName"] for s in traces[0]["spans"]] == ["reconcile"]
    processes = traces[0]["processes"].values()
    assert {p["serviceName"] for p in processes} == {service}
