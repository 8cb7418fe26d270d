"""Legacy service-account tokens: the JWT a ``kubernetes.io/service-account-token`` Secret holds.

As kube-controller-manager signs them (``pkg/serviceaccount``): issuer
``kubernetes/serviceaccount``, subject ``system:serviceaccount:<namespace>:<name>``, the four
``kubernetes.io/serviceaccount/...`` private claims, no expiry. The header carries ``alg`` and
``kid``; the key id is the unpadded base64url SHA-256 of the public key's PKIX DER, so that the
apiserver (``--service-account-key-file``) and anyone reading a JWKS agree on it. RSA keys sign
RS256, ECDSA keys ES256/ES384/ES512 by curve (the signature as JWS wants it: r || s).

cryptography is imported by what loads and signs with a key, not with this module: a
reconciler without ``--service-account-private-key-file`` never loads it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = [
    "LEGACY_ISSUER",
    "SigningKey",
    "key_id",
    "legacy_claims",
    "load_signing_key",
    "make_username",
    "read_file",
]

LEGACY_ISSUER: Final = "kubernetes/serviceaccount"
# The curves kube-controller-manager signs with: their JWS algorithm, hash (by name in
# cryptography's ``hashes``) and the size in bytes of each half of a signature.
_CURVES: Final[dict[str, tuple[str, str, int]]] = {
    "secp256r1": ("ES256", "SHA256", 32),
    "secp384r1": ("ES384", "SHA384", 48),
    "secp521r1": ("ES512", "SHA512", 66),
}


def make_username(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def legacy_claims(service_account: dict[str, Any], secret: dict[str, Any]) -> dict[str, str]:
    """The claims of a legacy token for ``service_account``, stored in ``secret``."""
    sa_meta = service_account["metadata"]
    namespace, name = sa_meta["namespace"], sa_meta["name"]
    return {
        "iss": LEGACY_ISSUER,
        "sub": make_username(namespace, name),
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/service-account.name": name,
        "kubernetes.io/serviceaccount/service-account.uid": sa_meta.get("uid", ""),
        "kubernetes.io/serviceaccount/secret.name": secret["metadata"]["name"],
    }


def key_id(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _b64(hashlib.sha256(der).digest())


@dataclass(frozen=True)
class SigningKey:
    """A private key read from ``--service-account-private-key-file``, ready to sign."""

    path: Path
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    algorithm: str
    kid: str

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS of ``claims`` (keys sorted, as go-jose serializes a claims map)."""
        header = {"alg": self.algorithm, "kid": self.kid}
        signing_input = f"{_b64(_json(header))}.{_b64(_json(claims))}".encode()
        return f"{signing_input.decode()}.{_b64(self._signature(signing_input))}"

    def _signature(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        _alg, digest, size = _CURVES[self.key.curve.name]
        algorithm: hashes.HashAlgorithm = getattr(hashes, digest)()
        r, s = decode_dss_signature(self.key.sign(data, ec.ECDSA(algorithm)))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def read_file(path: Path) -> bytes:
    """The bytes of a file a flag names; ValueError names it and says why not, in a few words."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError as error:
        raise ValueError(f"{path}: {error.strerror}") from None


def load_signing_key(path: Path) -> SigningKey:
    """The key in the PEM file ``path`` (PKCS#1, SEC1 or PKCS#8); ValueError says what is
    wrong with it in a few words."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    data = read_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(
            f"{path}: not a PEM-encoded, unencrypted RSA or ECDSA private key"
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        return SigningKey(path, key, "RS256", key_id(key.public_key()))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in _CURVES:
            raise ValueError(f"{path}: ECDSA curve {key.curve.name} is not P-256, P-384 or P-521")
        return SigningKey(path, key, _CURVES[key.curve.name][0], key_id(key.public_key()))
    raise ValueError(f"{path}: not an RSA or ECDSA key")


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
