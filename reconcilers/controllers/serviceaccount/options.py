"""The flags kube-controller-manager's service-account controllers share, and their checks.

``--service-account-private-key-file`` signs legacy tokens; ``--root-ca-file`` is the CA put in
token Secrets and in every namespace's ``kube-root-ca.crt``. Both are read and checked when the
flag is parsed, so a bad file is one line naming the flag and the file before anything starts
(kcm refuses to start on either too). cryptography is imported only then, for a flag given.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

from reconcilers.controller import Flag
from reconcilers.controllers.serviceaccount.legacytoken import (
    SigningKey,
    load_signing_key,
    read_file,
)

if TYPE_CHECKING:
    from kubus.kube import KubeClient

__all__ = ["PRIVATE_KEY_FILE", "ROOT_CA_FILE", "read_root_ca", "root_ca"]


def _signing_key(value: str) -> SigningKey:
    return load_signing_key(Path(value).expanduser())


def read_root_ca(value: str) -> bytes:
    """The PEM bundle in ``value``: one or more certificates, nothing unparsable."""
    from cryptography import x509

    path = Path(value).expanduser()
    data = read_file(path)
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{path}: no PEM-encoded certificate in it") from None
    return data


PRIVATE_KEY_FILE: Final = Flag(
    "service-account-private-key-file",
    None,
    "PEM private key (RSA or ECDSA) that signs legacy service-account tokens; without it "
    "serviceaccount-token-controller does not start",
    _signing_key,
    metavar="FILE",
)
ROOT_CA_FILE: Final = Flag(
    "root-ca-file",
    None,
    "PEM CA bundle put in service-account token Secrets and kube-root-ca.crt ConfigMaps "
    "(unset: the kubeconfig's CA)",
    read_root_ca,
    metavar="FILE",
)


def root_ca(options: dict[str, object], kube: KubeClient) -> bytes:
    """``--root-ca-file``'s bundle, else the CA the controller's own client trusts (kcm's
    fallback to its kubeconfig's CA data)."""
    given = options.get(ROOT_CA_FILE.name)
    if isinstance(given, bytes):
        return given
    return kube.certificate_authority()
