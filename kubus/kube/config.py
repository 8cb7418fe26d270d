"""Where the apiserver is and how to authenticate to it, via the official client's loaders."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["KubeConfig", "load_kube_config"]


@dataclass(frozen=True)
class KubeConfig:
    server: str
    ssl_context: ssl.SSLContext | bool
    # Returns the Authorization header value, refreshing expiring tokens; None for certs only.
    authorization: Callable[[], str | None]
    # The official client's Configuration, for the code paths that use that client (writes).
    official: Any


def load_kube_config(kubeconfig: Path | None, *, context: str | None = None) -> KubeConfig:
    """From ``kubeconfig`` if given, else the in-cluster service account, else ~/.kube/config."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    if kubeconfig is not None:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), context=context, client_configuration=configuration
        )
    else:
        try:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        except ConfigException:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                context=context, client_configuration=configuration
            )

    def authorization() -> str | None:
        hook = configuration.refresh_api_key_hook
        if hook is not None:
            hook(configuration)
        value: str | None = configuration.get_api_key_with_prefix("authorization")
        return value

    return KubeConfig(
        server=configuration.host.rstrip("/"),
        ssl_context=_ssl_context(configuration),
        authorization=authorization,
        official=configuration,
    )


def _ssl_context(configuration: Any) -> ssl.SSLContext | bool:
    if not configuration.host.startswith("https"):
        return False
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return context
