"""What the deploy/ tests need: kubectl, the rendered overlays, and the operators' CRDs.

The production overlay holds a KEDA ScaledObject and a Prometheus Operator ServiceMonitor; an
apiserver validates them only once their CRDs exist. The CRDs are not checked in: they come,
at the versions pinned here, from the operators' own Go modules through the Go module proxy
(``go mod download``), which keeps them in ``GOMODCACHE`` for the next run.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from kubus.devstack import Binaries, default_cache_dir
from kubus.devstack.gobuild import find_go

__all__ = [
    "DEPLOY",
    "KEDA",
    "OPERATOR_CRDS",
    "OVERLAYS",
    "PROMETHEUS_OPERATOR",
    "OperatorCrd",
    "kubectl",
    "operator_crd_files",
    "overlay_with_component",
    "render",
]

ROOT: Final = Path(__file__).resolve().parents[2]
DEPLOY: Final = ROOT / "deploy"
OVERLAYS: Final = tuple(sorted(p.name for p in (DEPLOY / "overlays").iterdir() if p.is_dir()))

# The operators whose objects the overlays hold, pinned: their CRDs are fetched at these versions.
KEDA: Final = "v2.21.0"
PROMETHEUS_OPERATOR: Final = "v0.85.0"


@dataclass(frozen=True)
class OperatorCrd:
    module: str
    version: str
    path: str  # inside the module
    name: str  # the CRD's metadata.name


OPERATOR_CRDS: Final = (
    OperatorCrd(
        "github.com/kedacore/keda/v2",
        KEDA,
        "config/crd/bases/keda.sh_scaledobjects.yaml",
        "scaledobjects.keda.sh",
    ),
    OperatorCrd(
        "github.com/prometheus-operator/prometheus-operator",
        PROMETHEUS_OPERATOR,
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
        "servicemonitors.monitoring.coreos.com",
    ),
)


def kubectl() -> Path:
    """kubectl as the dev stack resolves its binaries: PATH, beside the Python, cache, build."""
    binaries = Binaries(cache_dir=default_cache_dir(os.environ))
    return binaries.ensure(["kubectl"])["kubectl"].path


def render(kustomization: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of a directory, as objects; a failure shows kustomize's error."""
    result = subprocess.run(
        [str(kubectl()), "kustomize", str(kustomization)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {kustomization}: {result.stderr.strip()}"
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def overlay_with_component(directory: Path, overlay: str, component: str) -> Path:
    """A kustomization in ``directory``: ``deploy/overlays/<overlay>`` with an optional
    component of ``deploy/components/`` added, as a user's own overlay would."""
    # kustomize takes other directories only by relative path.
    base = os.path.relpath(DEPLOY / "overlays" / overlay, directory)
    added = os.path.relpath(DEPLOY / "components" / component, directory)
    (directory / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources:\n- {base}\n"
        f"components:\n- {added}\n"
    )
    return directory


def operator_crd_files(environ: Mapping[str, str] | None = None) -> dict[str, Path]:
    """CRD name -> its YAML in the module cache, downloading each pinned module if needed."""
    env = dict(os.environ if environ is None else environ)
    env["GOTOOLCHAIN"] = "local"
    go = find_go(env)
    files: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as outside_any_module:
        for crd in OPERATOR_CRDS:
            result = subprocess.run(
                [str(go), "mod", "download", "-json", f"{crd.module}@{crd.version}"],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
                cwd=outside_any_module,
                env=env,
            )
            # On failure `go mod download -json` still prints JSON, with an "Error" field.
            try:
                info = json.loads(result.stdout)
            except json.JSONDecodeError:
                info = {"Error": result.stderr.strip() or f"exit {result.returncode}"}
            assert result.returncode == 0 and "Error" not in info, (
                f"go mod download {crd.module}@{crd.version}: {info.get('Error')}"
            )
            path = Path(info["Dir"]) / crd.path
            assert path.is_file(), f"{crd.module}@{crd.version} has no {crd.path}"
            files[crd.name] = path
    return files
