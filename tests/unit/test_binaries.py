"""Where the dev stack finds its binaries, in the documented order."""

from __future__ import annotations

import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from kubus.devstack import binaries as binaries_module
from kubus.devstack import versions
from kubus.devstack.binaries import COMPONENTS, STACK_COMPONENTS, Binaries
from kubus.devstack.errors import BinaryError
from kubus.devstack.gobuild import GoModule


def fake_binary(path: Path, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho 'etcd Version: {version}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    cache = tmp_path / "cache"
    return {
        "cache_dir": cache,
        "cached": fake_binary(cache / "bin" / "etcd-v3.6.16" / "etcd", "3.6.16"),
        "on_path": fake_binary(tmp_path / "path" / "etcd", "3.5.21"),
        "assets": fake_binary(tmp_path / "assets" / "etcd", "3.5.17"),
        "by_env": fake_binary(tmp_path / "env" / "etcd", "3.6.1"),
        "by_flag": fake_binary(tmp_path / "flag" / "etcd", "3.6.2"),
    }


def test_lookup_order_is_flag_env_assets_path_cache(places: dict[str, Path]) -> None:
    environ = {
        "PATH": str(places["on_path"].parent),
        "KUBEBUILDER_ASSETS": str(places["assets"].parent),
        "KUBUS_ETCD_BIN": str(places["by_env"]),
    }
    explicit = {"etcd": places["by_flag"]}

    def found(environ: dict[str, str], explicit: dict[str, Path]) -> tuple[str, str, Path]:
        binary = Binaries(cache_dir=places["cache_dir"], explicit=explicit, environ=environ).find(
            "etcd"
        )
        assert binary is not None
        return binary.source, binary.version, binary.path

    assert found(environ, explicit) == ("flag", "v3.6.2", places["by_flag"])
    assert found(environ, {}) == ("env", "v3.6.1", places["by_env"])
    del environ["KUBUS_ETCD_BIN"]
    assert found(environ, {}) == ("kubebuilder-assets", "v3.5.17", places["assets"])
    del environ["KUBEBUILDER_ASSETS"]
    assert found(environ, {}) == ("path", "v3.5.21", places["on_path"])
    environ["PATH"] = "/nonexistent"
    assert found(environ, {}) == ("cache", "v3.6.16", places["cached"])


def test_a_named_binary_that_does_not_exist_is_an_error(places: dict[str, Path]) -> None:
    binaries = Binaries(
        cache_dir=places["cache_dir"],
        environ={"PATH": "", "KUBUS_ETCD_BIN": "/nonexistent/etcd"},
    )
    with pytest.raises(
        BinaryError, match=r"KUBUS_ETCD_BIN \(/nonexistent/etcd\) is not executable"
    ):
        binaries.find("etcd")


def test_an_unknown_component_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BinaryError, match="unknown component 'etcdd'"):
        Binaries(cache_dir=tmp_path, explicit={"etcdd": tmp_path / "x"}, environ={})


def fake_kubectl(path: Path, version: str) -> Path:
    """Answers only `kubectl version --client`, as kubectl does (it has no --version)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "#!/bin/sh\n"
        'if [ "$1 $2" = "version --client" ]; then\n'
        f"  echo 'Client Version: {version}'; echo 'Kustomize Version: v5.5.0'; exit 0\n"
        "fi\n"
        "echo 'error: unknown flag: --version' >&2; exit 1\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_kubectl_is_registered_from_the_kubernetes_release_but_not_run_by_the_stack() -> None:
    kubectl, apiserver = COMPONENTS["kubectl"], COMPONENTS["kube-apiserver"]
    assert kubectl.version == versions.KUBERNETES
    assert kubectl.package == "k8s.io/kubernetes/cmd/kubectl"
    assert kubectl.module == apiserver.module  # one wrapper module, one build of both
    assert kubectl.env_var == "KUBUS_KUBECTL_BIN"
    assert "kubectl" not in STACK_COMPONENTS


def test_kubectl_on_path_is_found_with_its_client_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    on_path = fake_kubectl(tmp_path / "path" / "kubectl", "v1.32.4-dispatcher")
    found = Binaries(cache_dir=tmp_path / "cache", environ={"PATH": str(on_path.parent)}).find(
        "kubectl"
    )
    assert found is not None
    assert (found.source, found.version, found.path) == ("path", "v1.32.4-dispatcher", on_path)


def test_kubectl_beside_the_python_comes_after_path_and_before_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv_kubectl = fake_kubectl(tmp_path / "venv" / "bin" / "kubectl", "v1.37.1")
    monkeypatch.setattr(sys, "executable", str(venv_kubectl.with_name("python")))
    cache = tmp_path / "cache"
    fake_kubectl(cache / "bin" / f"kubectl-{versions.KUBERNETES}" / "kubectl", versions.KUBERNETES)
    binaries = Binaries(cache_dir=cache, environ={"PATH": str(tmp_path / "empty")})
    found = binaries.find("kubectl")
    assert found is not None
    assert (found.source, found.version, found.path) == ("python-env", "v1.37.1", venv_kubectl)
    venv_kubectl.unlink()
    found = binaries.find("kubectl")
    assert found is not None
    assert (found.source, found.version) == ("cache", versions.KUBERNETES)


def test_a_missing_kubectl_is_built_with_the_control_plane_in_one_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grouping only: the Go build itself is gobuild's (and `make binaries`')."""
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    builds: list[tuple[GoModule, dict[str, str]]] = []

    def build(
        module: GoModule,
        packages: Mapping[str, str],
        *,
        destinations: Mapping[str, Path],
        work_dir: Path,
        environ: Mapping[str, str],
        progress: Callable[[str], None],
    ) -> None:
        builds.append((module, dict(packages)))
        for name, destination in destinations.items():
            make = fake_kubectl if name == "kubectl" else fake_binary
            make(destination, versions.KUBERNETES)

    monkeypatch.setattr(binaries_module, "build_binaries", build)
    cache = tmp_path / "cache"
    resolved = Binaries(cache_dir=cache, environ={"PATH": ""}).ensure(["kube-apiserver", "kubectl"])
    assert builds == [
        (
            COMPONENTS["kube-apiserver"].module,
            {
                "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
                "kubectl": "k8s.io/kubernetes/cmd/kubectl",
            },
        )
    ]
    kubectl = resolved["kubectl"]
    assert (kubectl.source, kubectl.version) == ("built", versions.KUBERNETES)
    assert kubectl.path == cache / "bin" / f"kubectl-{versions.KUBERNETES}" / "kubectl"
