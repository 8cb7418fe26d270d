"""A kubeconfig user with a bearer token authenticates with it (found by the RBAC test: the
official client keys such a token as "BearerToken", and kubus sent none)."""

from __future__ import annotations

from pathlib import Path

import yaml

from kubus.kube.config import load_kube_config


def test_a_kubeconfig_token_is_sent_as_a_bearer_token(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": "https://127.0.0.1:6443",
                            "insecure-skip-tls-verify": True,
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": "abc.def"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    assert load_kube_config(path).authorization() == "Bearer abc.def"
