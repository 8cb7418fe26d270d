"""Where the dev stack finds its binaries, in the documented order."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kubus.devstack.binaries import Binaries
from kubus.devstack.errors import BinaryError


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
