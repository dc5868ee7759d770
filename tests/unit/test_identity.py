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

from shared.adapters.identity import (
    CERTS_MIN_REFETCH_S,
    Authenticator,
    AuthFailure,
    CertsUnavailable,
    Identity,
    IdTokenVerifier,
    fetch_certs,
    hash_key,
)

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

    def token_with_kid(self, kid: str) -> str:
        """A token signed by this key but naming another key id in its header."""
        signer = crypt.RSASigner(self.key, key_id=kid)
        now = int(time.time())
        claims = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "iat": now}
        return jwt.encode(signer, {**claims, "exp": now + 3600}).decode()


class CertsServer:
    """Serves ``{kid: PEM}`` like https://www.googleapis.com/oauth2/v1/certs."""

    def __init__(self) -> None:
        self.certs: dict[str, str] = {}
        self.hits = 0
        self.status = 200
        self.body: bytes | None = None  # instead of the certificates
        self.delay_s = 0.0
        self.in_flight = self.most_in_flight = 0
        owner = self
        count = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with count:
                    owner.hits += 1
                    owner.in_flight += 1
                    owner.most_in_flight = max(owner.most_in_flight, owner.in_flight)
                time.sleep(owner.delay_s)
                with count:
                    owner.in_flight -= 1
                body = owner.body if owner.body is not None else json.dumps(owner.certs).encode()
                self.send_response(owner.status)
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


class Clock:
    """Wall-clock seconds, moved by hand (the verifier's rationing clock)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def verifier(certs: CertsServer, clock: Clock) -> IdTokenVerifier:
    return IdTokenVerifier([AUDIENCE], certs.url, clock=clock)


def test_certificates_are_cached_and_refetched_for_a_new_key(
    issuer: Issuer, certs: CertsServer
) -> None:
    clock = Clock()
    auth = authenticator(certs, verifier=verifier(certs, clock))
    for _ in range(3):
        assert isinstance(auth.authenticate(bearer(issuer.token())), Identity)
    assert certs.hits == 1
    rotated = Issuer("kid-2")
    certs.certs[rotated.kid] = rotated.cert_pem
    clock.now += CERTS_MIN_REFETCH_S
    assert isinstance(auth.authenticate(bearer(rotated.token())), Identity)
    assert certs.hits == 2


# --------------------------------------------------------------------------- hostile tokens


def test_allowed_domains_are_matched_on_the_hosted_domain_claim(
    issuer: Issuer, certs: CertsServer
) -> None:
    auth = authenticator(certs)
    # A personal Google account with a verified work address (kept by a former
    # employee, say) has no hd claim: the address's domain proves nothing.
    kept = issuer.token(email="former@studio.example", hd=None)
    result = failure(auth.authenticate(bearer(kept)))
    assert (result.status, result.message) == (
        403,
        "former@studio.example is not allowed to use this service",
    )
    # Another domain's Workspace account with an address in ours: not allowed either.
    other = issuer.token(email="mallory@studio.example", hd="elsewhere.example")
    assert failure(auth.authenticate(bearer(other))).status == 403
    # An account of the studio's Workspace is allowed, whatever its address's domain.
    alias = issuer.token(email="ana@studio-alias.example", hd="studio.example")
    assert auth.authenticate(bearer(alias)) == Identity("ana@studio-alias.example", "id_token")
    # ALLOWED_EMAILS stays an exact match on the verified email.
    assert isinstance(
        auth.authenticate(bearer(issuer.token(email="solo@freelance.example"))), Identity
    )


def test_unknown_key_ids_fetch_certificates_at_most_once_per_interval(
    issuer: Issuer, certs: CertsServer
) -> None:
    clock = Clock()
    auth = authenticator(certs, verifier=verifier(certs, clock))
    assert isinstance(auth.authenticate(bearer(issuer.token())), Identity)
    assert certs.hits == 1
    for n in range(20):
        result = failure(auth.authenticate(bearer(issuer.token_with_kid(f"made-up-{n}"))))
        assert result.status == 401
        assert "made-up" in result.message
    assert certs.hits == 1  # anonymous requests with made-up key ids cost no fetch
    assert isinstance(auth.authenticate(bearer(issuer.token())), Identity)

    clock.now += CERTS_MIN_REFETCH_S
    assert failure(auth.authenticate(bearer(issuer.token_with_kid("made-up-x")))).status == 401
    assert failure(auth.authenticate(bearer(issuer.token_with_kid("made-up-y")))).status == 401
    assert certs.hits == 2


def test_concurrent_unknown_key_ids_share_one_fetch(issuer: Issuer, certs: CertsServer) -> None:
    certs.delay_s = 0.3
    auth = authenticator(certs, verifier=verifier(certs, Clock()))
    results: list[Identity | AuthFailure] = []

    def call(n: int) -> None:
        results.append(auth.authenticate(bearer(issuer.token_with_kid(f"made-up-{n}"))))

    threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [failure(r).status for r in results] == [401] * 8
    assert (certs.hits, certs.most_in_flight) == (1, 1)


@pytest.mark.parametrize(
    ("status", "body"),
    [(500, b"oops"), (200, b"not json"), (200, b'["a list"]'), (200, b'{"kid": 1}')],
    ids=["5xx", "not-json", "not-an-object", "not-pem-text"],
)
def test_failed_certificate_fetch_is_unavailable_and_not_retried_at_once(
    issuer: Issuer, certs: CertsServer, status: int, body: bytes
) -> None:
    certs.status, certs.body = status, body
    clock = Clock()
    auth = authenticator(certs, verifier=verifier(certs, clock))
    for _ in range(3):
        with pytest.raises(CertsUnavailable):
            auth.authenticate(bearer(issuer.token()))
    assert certs.hits == 1
    certs.status, certs.body = 200, None
    clock.now += CERTS_MIN_REFETCH_S
    assert isinstance(auth.authenticate(bearer(issuer.token())), Identity)
    assert certs.hits == 2


def test_fetch_certs_reads_max_age(certs: CertsServer, issuer: Issuer) -> None:
    found, ttl = fetch_certs(certs.url)
    assert found == {issuer.kid: issuer.cert_pem}
    assert ttl == 600
