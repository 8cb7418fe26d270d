"""deploy/components/nats-cluster: the kustomize Component of kubus's production NATS.

Checked without a cluster: the kustomization lists every file of its folder, kustomize (the
kubectl of .venv) renders it inside an overlay, the ConfigMap carries nats.conf as the file
holds it, nats-server accepts that file (``nats-server -t``, rendered for loopback exactly as
the cluster test runs it), and the StatefulSet gives the server what the file refers to: its
ports, paths and environment variables. Against running servers:
tests/integration/test_nats_cluster.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubus.devstack.versions import NATS_SERVER
from tests.support.nats_cluster import (
    COMPONENT,
    CONFIG,
    NatsCluster,
    make_password,
    make_tls,
)

KUBECTL = Path(sys.executable).with_name("kubectl")


def kustomization() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    return document


def rendered(tmp_path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The component as an overlay that includes it renders it: (kind, name) -> object."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    # kustomize refuses a component outside the overlay's tree: copy it beside the overlay.
    shutil.copytree(COMPONENT, tmp_path / "nats-cluster")
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "namespace: kubus\ncomponents:\n- ../nats-cluster\n"
    )
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    objects = {}
    for document in yaml.safe_load_all(result.stdout):
        objects[(document["kind"], document["metadata"]["name"])] = document
    return objects


def test_the_kustomization_is_a_component_listing_every_file_of_its_folder() -> None:
    document = kustomization()
    assert document["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert document["kind"] == "Component"
    listed = set(document.get("resources", []))
    for generator in document.get("configMapGenerator", []):
        listed.update(generator.get("files", []))
    on_disk = {
        path.name
        for path in COMPONENT.iterdir()
        if path.name not in ("kustomization.yaml", "README.md")
    }
    assert listed == on_disk


def test_kustomize_renders_the_cluster_its_services_budget_and_config(tmp_path: Path) -> None:
    objects = rendered(tmp_path)
    (config_map,) = [o for (kind, _), o in objects.items() if kind == "ConfigMap"]
    assert re.fullmatch(r"nats-config-[a-z0-9]+", config_map["metadata"]["name"])
    assert config_map["data"] == {"nats.conf": CONFIG.read_text()}
    assert set(objects) == {
        ("ConfigMap", config_map["metadata"]["name"]),
        ("Service", "nats"),
        ("Service", "nats-headless"),
        ("StatefulSet", "nats"),
        ("PodDisruptionBudget", "nats"),
    }
    assert all(o["metadata"]["namespace"] == "kubus" for o in objects.values())

    statefulset = objects[("StatefulSet", "nats")]
    spec = statefulset["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"nats:{NATS_SERVER.removeprefix('v')}"  # the dev stack's
    assert spec["replicas"] == 3
    assert spec["serviceName"] == "nats-headless"
    # The generated name (with its hash) is what the pods mount: a new config rolls them.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert volumes["tls"]["secret"]["secretName"] == "kubus-nats-tls"
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"

    labels = spec["selector"]["matchLabels"]
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term == {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": labels},
    }
    budget = objects[("PodDisruptionBudget", "nats")]["spec"]
    assert budget == {"maxUnavailable": 1, "selector": {"matchLabels": labels}}

    probes = {
        kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "readiness", "liveness")
    }
    assert {probe["port"] for probe in probes.values()} == {"monitor"}
    assert all(probe["path"].startswith("/healthz") for probe in probes.values())

    headless = objects[("Service", "nats-headless")]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is True
    client = objects[("Service", "nats")]["spec"]
    assert {p["name"]: p["port"] for p in client["ports"]} == {"client": 4222, "monitor": 8222}
    for service in (headless, client):
        assert service["selector"] == labels


def test_the_statefulset_gives_the_server_what_nats_conf_refers_to(tmp_path: Path) -> None:
    text = CONFIG.read_text()
    objects = rendered(tmp_path)
    pod = objects[("StatefulSet", "nats")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    # Every $VARIABLE the file takes from the environment is set, and the secrets come from
    # the Secret the README names, by the keys it names.
    # (Outside comments and quoted strings, where a $ is only text.)
    code = re.sub(r'"[^"\n]*"', '""', re.sub(r"#.*", "", text))
    defined = set(re.findall(r"^\s*([A-Z_]+)\s*[:=]", code, flags=re.MULTILINE))
    referenced = set(re.findall(r"\$([A-Z_]+)\b", code)) - defined
    env = {item["name"]: item["valueFrom"] for item in container["env"]}
    assert referenced == set(env) == {"POD_NAME", "WATCHER_PASSWORD", "RECONCILER_PASSWORD"}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["WATCHER_PASSWORD"]["secretKeyRef"] == {
        "name": "kubus-nats-users",
        "key": "watcher-password",
    }
    assert env["RECONCILER_PASSWORD"]["secretKeyRef"] == {
        "name": "kubus-nats-users",
        "key": "reconciler-password",
    }
    # No password in the ConfigMap: each user's is a variable.
    for user in ("watcher", "reconciler"):
        assert re.search(rf"user: {user}, password: \${user.upper()}_PASSWORD,", text), (
            f"{user}'s password is not taken from ${user.upper()}_PASSWORD"
        )

    # The ports it listens on are the container's, by name.
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert f"listen: 0.0.0.0:{ports['client']}" in text
    assert f"http: 0.0.0.0:{ports['monitor']}" in text
    assert f"listen: 0.0.0.0:{ports['cluster']}" in text
    # Each route is a pod of the StatefulSet, by the headless Service's DNS name.
    spec = objects[("StatefulSet", "nats")]["spec"]
    routes = re.findall(r"nats-route://([a-z0-9.-]+):(\d+)", text)
    assert routes == [
        (f"nats-{i}.{spec['serviceName']}", str(ports["cluster"])) for i in range(spec["replicas"])
    ]

    # Every file it names is under a mount: TLS from the Secret, the store on the volume
    # claim, the pid file (for the preStop hook) on the emptyDir.
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts["config"] == "/etc/nats/nats.conf"
    assert container["args"] == ["--config", mounts["config"]]
    for path in re.findall(r"(?:cert_file|key_file|ca_file): (\S+)", text):
        assert path.startswith(mounts["tls"] + "/")
        assert Path(path).name in ("tls.crt", "tls.key", "ca.crt")
    (store,) = re.findall(r"store_dir: (\S+)", text)
    assert store.startswith(mounts["data"] + "/")
    (pid_file,) = re.findall(r"pid_file: (\S+)", text)
    assert pid_file.startswith(mounts["pid"] + "/")
    assert container["lifecycle"]["preStop"]["exec"]["command"][-1] == f"ldm={pid_file}"

    # The grace period outlasts the lame duck.
    grace = int(re.search(r"lame_duck_grace_period: (\d+)s", text).group(1))  # type: ignore[union-attr]
    duration = int(re.search(r"lame_duck_duration: (\d+)s", text).group(1))  # type: ignore[union-attr]
    assert pod["terminationGracePeriodSeconds"] > grace + duration


def test_nats_server_accepts_the_config_as_the_cluster_test_renders_it(tmp_path: Path) -> None:
    cluster = NatsCluster(
        tmp_path / "cluster",
        make_tls(tmp_path / "tls"),
        {"watcher": make_password(), "reconciler": make_password()},
    )
    verdict = cluster.check_config()
    assert "is valid" in verdict


@pytest.mark.parametrize("user", ["watcher", "reconciler"])
def test_each_user_refuses_what_the_issue_says_it_must_not_do(user: str) -> None:
    """The two rules of the issue stand in the file as explicit denials, whatever the allow
    lists become (the servers enforce them: tests/integration/test_nats_cluster.py)."""
    text = CONFIG.read_text()
    block = text.split(f"{user.upper()}_PERMISSIONS: {{", 1)[1].split("\n}\n", 1)[0]
    deny = block.split("deny: [", 1)[1].split("]", 1)[0]
    if user == "reconciler":
        assert '"kubus.obj.>"' in deny
    else:
        for bucket in ("members", "leases", "leaders"):
            assert f'"$KV.kubus-default-{bucket}.>"' in deny
            assert f'"$JS.API.STREAM.*.KV_kubus-default-{bucket}"' in deny
