"""Legacy service-account tokens as kube-controller-manager signs them, and the flags' checks."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from kubus.cli import build_parser
from reconcilers.controllers.serviceaccount.legacytoken import legacy_claims, load_signing_key

SA = {"metadata": {"namespace": "team-a", "name": "builder", "uid": "1b2c-uid"}}
SECRET = {"metadata": {"namespace": "team-a", "name": "builder-token"}}


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _write(path: Path, key: Any) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _expected_kid(public_key: Any) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def test_claims_are_the_legacy_ones() -> None:
    assert legacy_claims(SA, SECRET) == {
        "iss": "kubernetes/serviceaccount",
        "sub": "system:serviceaccount:team-a:builder",
        "kubernetes.io/serviceaccount/namespace": "team-a",
        "kubernetes.io/serviceaccount/service-account.name": "builder",
        "kubernetes.io/serviceaccount/service-account.uid": "1b2c-uid",
        "kubernetes.io/serviceaccount/secret.name": "builder-token",
    }


def test_es256_token_header_payload_and_signature(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    key = load_signing_key(_write(tmp_path / "sa.key", private))
    token = key.sign(legacy_claims(SA, SECRET))
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = json.loads(_unb64(header_b64))
    assert header == {"alg": "ES256", "kid": _expected_kid(private.public_key())}
    payload = json.loads(_unb64(payload_b64))
    assert payload["sub"] == "system:serviceaccount:team-a:builder"
    assert "exp" not in payload  # legacy tokens never expire
    signature = _unb64(signature_b64)
    assert len(signature) == 64  # JWS: r || s, 32 bytes each
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    private.public_key().verify(
        encode_dss_signature(r, s),
        f"{header_b64}.{payload_b64}".encode(),
        ec.ECDSA(hashes.SHA256()),
    )  # raises InvalidSignature if wrong


def test_rs256_token_verifies_with_the_public_key(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "rsa.key"
    # PKCS#1 ("RSA PRIVATE KEY"), as older kcm setups have it.
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key = load_signing_key(path)
    header_b64, payload_b64, signature_b64 = key.sign(legacy_claims(SA, SECRET)).split(".")
    assert json.loads(_unb64(header_b64)) == {
        "alg": "RS256",
        "kid": _expected_kid(private.public_key()),
    }
    private.public_key().verify(
        _unb64(signature_b64),
        f"{header_b64}.{payload_b64}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


def _parse_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["reconciler", *argv])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file"),
        (b"not a key\n", "not a PEM-encoded, unencrypted RSA or ECDSA private key"),
        ("ed25519", "not an RSA or ECDSA key"),
    ],
)
def test_a_bad_private_key_file_is_one_line_naming_flag_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: Any, problem: str
) -> None:
    path = tmp_path / "sa.key"
    if content == "ed25519":
        _write(path, ed25519.Ed25519PrivateKey.generate())
    elif content is not None:
        path.write_bytes(content)
    last = _parse_error(capsys, f"--service-account-private-key-file={path}")
    assert last.startswith("kubus reconciler: error: argument --service-account-private-key-file")
    assert f"{path}: {problem}" in last


def test_a_root_ca_file_without_a_certificate_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ca.crt"
    _write(path, ec.generate_private_key(ec.SECP256R1()))  # a key, not a certificate
    last = _parse_error(capsys, f"--root-ca-file={path}")
    assert last.startswith("kubus reconciler: error: argument --root-ca-file")
    assert f"{path}: no PEM-encoded certificate in it" in last


def test_a_good_key_file_is_accepted(tmp_path: Path) -> None:
    path = _write(tmp_path / "sa.key", ec.generate_private_key(ec.SECP384R1()))
    args = build_parser().parse_args(["reconciler", f"--service-account-private-key-file={path}"])
    assert args.service_account_private_key_file.algorithm == "ES384"


def test_without_a_private_key_the_token_controller_does_not_start() -> None:
    from reconcilers.cache import ObjectCache
    from reconcilers.controller import Context, NotStarted
    from reconcilers.controllers.serviceaccount.tokens import TokensController

    context = Context(
        cache=ObjectCache(),
        kube=None,  # type: ignore[arg-type]  # never reached: the key is checked first
        apis={},
        events=None,  # type: ignore[arg-type]
        tracer=None,
        options={"service-account-private-key-file": None, "root-ca-file": None},
    )
    with pytest.raises(NotStarted, match="no --service-account-private-key-file"):
        TokensController(context)
