"""Where the apiserver is and how to authenticate to it, via the official client's loaders."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KubeConfig", "KubeConfigError", "load_kube_config"]


class KubeConfigError(ValueError):
    """A kubeconfig that cannot be used: ``"<path>: why"``, or why none was found (no path)."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(f"{path}: {message}" if path is not None else message)
        self.path = path


@dataclass(frozen=True)
class KubeConfig:
    server: str
    ssl_context: ssl.SSLContext | bool
    # Returns the Authorization header value, refreshing expiring tokens; None for certs only.
    authorization: Callable[[], str | None]
    # The official client's Configuration, for the code paths that use that client (writes).
    official: Any


def load_kube_config(kubeconfig: Path | None, *, context: str | None = None) -> KubeConfig:
    """From ``kubeconfig`` if given, else the in-cluster service account, else ~/.kube/config.

    Anything wrong with the file (missing, not YAML, no current context, a certificate file
    that is not there) is a :class:`KubeConfigError` naming it.
    """
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    if kubeconfig is not None:
        _load_file(kubeconfig, context, configuration)
    else:
        try:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        except ConfigException:
            default = Path(config.KUBE_CONFIG_DEFAULT_LOCATION).expanduser()
            if not default.exists():
                raise KubeConfigError(
                    "no kubeconfig: none given (--kubeconfig, $KUBECONFIG), not running in a "
                    f"cluster, and no {default}"
                ) from None
            _load_file(default, context, configuration)

    def authorization() -> str | None:
        hook = configuration.refresh_api_key_hook
        if hook is not None:
            hook(configuration)
        # In-cluster config keys the token as "authorization"; a kubeconfig's user token the
        # official client (v31 and later) keys as "BearerToken", prefix included.
        for key in ("authorization", "BearerToken"):
            value: str | None = configuration.get_api_key_with_prefix(key)
            if value:
                return value
        return None

    try:
        ssl_context = _ssl_context(configuration)
    except (OSError, ssl.SSLError) as error:
        raise KubeConfigError(f"TLS files: {_one_line(error)}", path=kubeconfig) from None
    return KubeConfig(
        server=configuration.host.rstrip("/"),
        ssl_context=ssl_context,
        authorization=authorization,
        official=configuration,
    )


def _load_file(path: Path, context: str | None, configuration: Any) -> None:
    from kubernetes import config

    if not path.is_file():
        reason = "is a directory" if path.is_dir() else "no such file"
        raise KubeConfigError(reason, path=path)
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise KubeConfigError(f"not YAML{where}: {error.problem}", path=path) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise KubeConfigError(_one_line(error), path=path) from None
    if not isinstance(document, dict):
        raise KubeConfigError("not a kubeconfig (a YAML mapping expected)", path=path)
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(path), context=context, client_configuration=configuration
        )
    except Exception as error:  # the loader raises what it meets: YAML, key, type errors
        raise KubeConfigError(_one_line(error), path=path) from None
    if not configuration.host or "://" not in configuration.host:
        raise KubeConfigError("the current context names no server URL", path=path)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


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
