"""A reconcile's writes traced into the apiserver and on to etcd, as Jaeger shows them."""

from __future__ import annotations

import json
import secrets
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubus.kube.config import load_kube_config
from tests.integration.test_deployment import complete, deployment
from tests.support.services import kubus_pool
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Span:
    span_id: str
    parent_id: str | None
    service: str
    name: str
    tags: dict[str, Any]


def spans_of(trace: dict[str, Any]) -> dict[str, Span]:
    services = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
    spans = {}
    for raw in trace["spans"]:
        parents = [r["spanID"] for r in raw["references"] if r["refType"] == "CHILD_OF"]
        spans[raw["spanID"]] = Span(
            raw["spanID"],
            parents[0] if parents else None,
            services[raw["processID"]],
            raw["operationName"],
            {t["key"]: t["value"] for t in raw["tags"]},
        )
    return spans


def jaeger(stack_env: dict[str, str], path: str) -> list[dict[str, Any]] | None:
    """The traces of a query API call, None while Jaeger has none (or does not answer)."""
    try:
        with urllib.request.urlopen(f"{stack_env['JAEGER_QUERY_URL']}{path}", timeout=5) as r:
            data: list[dict[str, Any]] = json.load(r)["data"] or []
    except urllib.error.HTTPError as error:
        if error.code == 404:  # /api/traces/<id> of a trace it does not have
            return None
        raise
    except OSError:
        return None
    return data or None


# kube-apiserver's service.name (k8s.io/apiserver/pkg/server/options/tracing.go).
APISERVER = "apiserver"


def is_etcd_call(span: Span) -> bool:
    """The apiserver's gRPC client span of an etcd call (``etcdserverpb.KV/Txn``, ...)."""
    return (
        span.service == APISERVER
        and span.name.startswith("etcdserverpb.")
        and span.tags.get("span.kind") == "client"
    )


def below(spans: dict[str, Span], top: Span) -> list[Span]:
    """Every span under ``top``: the apiserver nests its etcd calls under its filter spans."""
    found, frontier = [], [top.span_id]
    while frontier:
        children = [s for s in spans.values() if s.parent_id in frontier]
        found += children
        frontier = [s.span_id for s in children]
    return found


@pytest.fixture(autouse=True)
def _apiserver_traces(stack_env: dict[str, str]) -> None:
    if "KUBUS_STATE_DIR" not in stack_env:
        pytest.skip("only the kubus dev stack's apiserver is known to export traces to Jaeger")


def test_a_reconcile_write_has_the_apiserver_span_as_child_and_its_etcd_call_below(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps = client.AppsV1Api(kube)
    with kubus_pool(stack_env, tmp_path):
        apps.create_namespaced_deployment(namespace, deployment("traced", 2))
        wait_for(lambda: complete(apps, namespace, "traced"), timeout=60, what="rollout")

        def write_traced_into_etcd() -> Any:
            traces = jaeger(stack_env, f"/api/traces?service={APISERVER}&limit=500&lookback=1h")
            for trace in traces or []:
                spans = spans_of(trace)
                for span in spans.values():
                    write = spans.get(span.parent_id or "")
                    reconcile = spans.get(write.parent_id or "") if write else None
                    if (
                        span.service == APISERVER
                        and write is not None
                        and write.service == "kubus-reconciler"
                        and write.tags.get("span.kind") == "client"
                        and reconcile is not None
                        and reconcile.name == "reconcile deployment-controller"
                        and reconcile.tags.get("k8s.object.key") == f"{namespace}/traced"
                        # Spans reach Jaeger in batches per process: wait for the whole chain.
                        and reconcile.parent_id in spans
                    ):
                        under = below(spans, span)
                        if any(is_etcd_call(s) for s in under):
                            return spans, write, span, under
            return None

        spans, write, served, under = wait_for(
            write_traced_into_etcd,
            timeout=60,
            what="an apiserver span whose parent is a reconciler's write, an etcd call below it",
        )
    method = write.tags["http.request.method"]
    assert method in ("POST", "PUT", "PATCH", "DELETE")
    assert served.name.startswith(f"{method} /"), served.name  # the apiserver's route name
    assert served.tags.get("span.kind") == "server"
    assert f"/namespaces/{namespace}/" in write.tags["url.path"]
    # The reconcile that made the write continues the watcher's publish of the Deployment or
    # of one of its ReplicaSets (the Deployment controller reconciles on both).
    reconcile = spans[write.parent_id or ""]
    published = spans[reconcile.parent_id or ""]
    assert published.service == "kubus-watcher"
    assert published.name in ("publish apps/v1/deployments", "publish apps/v1/replicasets")
    assert all(s.service == APISERVER for s in under)


def _request(stack_env: dict[str, str], traceparent: str, *, token: str | None = None) -> None:
    """GET /version with this traceparent, as the admin (certificate) or with ``token``."""
    config = load_kube_config(Path(stack_env["KUBECONFIG"]))
    headers = {"traceparent": traceparent}
    context = config.ssl_context
    assert isinstance(context, ssl.SSLContext)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
        context = ssl.create_default_context(cafile=config.official.ssl_ca_cert)
    request = urllib.request.Request(f"{config.server}/version", headers=headers)
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        assert response.status == 200


def test_the_apiserver_takes_a_level_1_traceparent_from_system_masters_only(
    kube: Any, namespace: str, stack_env: dict[str, str]
) -> None:
    """The two conditions the README names, checked on the apiserver itself."""
    core = client.CoreV1Api(kube)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "tracer"}})
    token = core.create_namespaced_service_account_token(
        "tracer", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token

    def traceparent(flags: str) -> tuple[str, str, str]:
        trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
        return trace_id, span_id, f"00-{trace_id}-{span_id}-{flags}"

    level2, _, level2_header = traceparent("03")  # what the OpenTelemetry SDK sends as is
    service_account, _, service_account_header = traceparent("01")
    admin, caller, admin_header = traceparent("01")
    _request(stack_env, level2_header)
    _request(stack_env, service_account_header, token=token)
    _request(stack_env, admin_header)

    (trace,) = wait_for(
        lambda: jaeger(stack_env, f"/api/traces/{admin}"),
        timeout=60,
        what=f"the apiserver's span of trace {admin} (admin, flags 01)",
    )
    (served,) = (s for s in spans_of(trace).values() if s.parent_id == caller)
    assert (served.service, served.name) == (APISERVER, "GET")
    # Sent before the admin's request and exported no later: had the apiserver traced them,
    # Jaeger would have them by now.
    assert jaeger(stack_env, f"/api/traces/{level2}") is None, "flags 03 were taken"
    assert jaeger(stack_env, f"/api/traces/{service_account}") is None, (
        "a ServiceAccount's trace context was taken"
    )
