"""Identity: real ID-token verification against certificates served on loopback."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from shared.auth import hash_key
from shared.identity import Authenticator, AuthFailure, Identity, IdTokenVerifier, fetch_certs

AUDIENCE = "1234-script.apps.googleusercontent.com"


class Issuer:
    """A local stand-in for Google's token signer: a key pair and its certificate."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-issuer")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.signer = crypt.RSASigner.from_string(pem, key_id=kid)

    def token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "sub": "1001",
            "email": "ana@studio.example",
            "email_verified": True,
            "hd": "studio.example",
            "iat": now,
            "exp": now + 3600,
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(self.signer, claims).decode()


class CertsServer:
    """Serves ``{kid: PEM}`` like https://www.googleapis.com/oauth2/v1/certs."""

    def __init__(self) -> None:
        self.certs: dict[str, str] = {}
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                body = json.dumps(owner.certs).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=600")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth2/v1/certs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer("kid-1")


@pytest.fixture
def certs(issuer: Issuer) -> Iterator[CertsServer]:
    server = CertsServer()
    server.certs = {issuer.kid: issuer.cert_pem}
    yield server
    server.server.shutdown()
    server.server.server_close()


def authenticator(certs: CertsServer, **kwargs: Any) -> Authenticator:
    options: dict[str, Any] = {
        "key_hashes": {"robot": hash_key("s3cret")},
        "verifier": IdTokenVerifier([AUDIENCE], certs.url),
        "allowed_emails": ["solo@freelance.example"],
        "allowed_domains": ["studio.example"],
        "admins": ["boss@studio.example"],
    }
    options.update(kwargs)
    return Authenticator(**options)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def failure(result: Identity | AuthFailure) -> AuthFailure:
    assert isinstance(result, AuthFailure), result
    return result


def test_valid_token_from_allowed_domain_is_the_email(issuer: Issuer, certs: CertsServer) -> None:
    result = authenticator(certs).authenticate(bearer(issuer.token()))
    assert result == Identity("ana@studio.example", "id_token", admin=False)


def test_allowed_email_outside_the_domains(issuer: Issuer, certs: CertsServer) -> None:
    token = issuer.token(email="solo@freelance.example", hd=None)
    assert authenticator(certs).authenticate(bearer(token)) == Identity(
        "solo@freelance.example", "id_token"
    )


def test_admin_is_flagged(issuer: Issuer, certs: CertsServer) -> None:
    result = authenticator(certs).authenticate(bearer(issuer.token(email="boss@studio.example")))
    assert isinstance(result, Identity) and result.admin


@pytest.mark.parametrize(
    ("headers", "needle"),
    [
        ({}, "send an API key"),
        ({"Authorization": "Basic abc"}, "Bearer"),
        ({"Authorization": "Bearer "}, "Bearer"),
        ({"Authorization": "Bearer not.a.jwt"}, "not valid"),
        ({"X-API-Key": "wrong"}, "not recognised"),
    ],
)
def test_missing_or_malformed_credentials_are_401(
    certs: CertsServer, headers: dict[str, str], needle: str
) -> None:
    result = failure(authenticator(certs).authenticate(headers))
    assert result.status == 401
    assert needle in result.message


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda i: i.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
            id="expired",
        ),
        pytest.param(lambda i: i.token(aud="someone-else"), id="wrong-audience"),
        pytest.param(lambda i: i.token(iss="https://evil.example"), id="wrong-issuer"),
        pytest.param(lambda i: Issuer("kid-1").token(), id="wrong-signature"),
    ],
)
def test_invalid_tokens_are_401(
    issuer: Issuer, certs: CertsServer, make: Callable[[Issuer], str]
) -> None:
    result = failure(authenticator(certs).authenticate(bearer(make(issuer))))
    assert result.status == 401
    assert "not valid" in result.message


def test_valid_identity_not_allowed_is_403(issuer: Issuer, certs: CertsServer) -> None:
    token = issuer.token(email="eve@elsewhere.example", hd=None)
    result = failure(authenticator(certs).authenticate(bearer(token)))
    assert result.status == 403
    assert "eve@elsewhere.example" in result.message


def test_unverified_email_is_403(issuer: Issuer, certs: CertsServer) -> None:
    result = failure(authenticator(certs).authenticate(bearer(issuer.token(email_verified=False))))
    assert result.status == 403


def test_id_tokens_refused_when_no_audience_is_configured(
    issuer: Issuer, certs: CertsServer
) -> None:
    result = failure(authenticator(certs, verifier=None).authenticate(bearer(issuer.token())))
    assert result.status == 401 and "not accepted" in result.message


def test_api_key_identifies_its_caller_case_insensitively(certs: CertsServer) -> None:
    auth = authenticator(certs, admins=["robot"])
    assert auth.authenticate({"x-api-key": "s3cret"}) == Identity("robot", "api_key", admin=True)


def test_certificates_are_cached_and_refetched_for_a_new_key(
    issuer: Issuer, certs: CertsServer
) -> None:
    auth = authenticator(certs)
    for _ in range(3):
        assert isinstance(auth.authenticate(bearer(issuer.token())), Identity)
    assert certs.hits == 1
    rotated = Issuer("kid-2")
    certs.certs[rotated.kid] = rotated.cert_pem
    assert isinstance(auth.authenticate(bearer(rotated.token())), Identity)
    assert certs.hits == 2


def test_fetch_certs_reads_max_age(certs: CertsServer, issuer: Issuer) -> None:
    found, ttl = fetch_certs(certs.url)
    assert found == {issuer.kid: issuer.cert_pem}
    assert ttl == 600
