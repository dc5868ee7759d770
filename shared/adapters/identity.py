"""Who is calling: a Google ID token (Apps Script) or an API key; never anonymous."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from shared.domain.errors import TransientError

GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
CERTS_FALLBACK_TTL_S = 3600.0
CLOCK_SKEW_S = 10
# Fewest seconds between two certificate fetches (unknown key ids come from anyone).
CERTS_MIN_REFETCH_S = 60.0


def hash_key(key: str) -> str:
    """The SHA-256 hex digest under which an API key is configured."""
    return hashlib.sha256(key.encode()).hexdigest()


def caller_for_api_key(presented: str | None, key_hashes: Mapping[str, str]) -> str | None:
    """The caller whose key matches, or None; compares against every hash."""
    if not presented:
        return None
    digest = hash_key(presented)
    found: str | None = None
    for caller, expected in key_hashes.items():
        # No early exit, so timing does not tell which entry matched.
        if hmac.compare_digest(digest, expected):
            found = caller
    return found


@dataclass(frozen=True)
class Identity:
    caller: str
    kind: str  # "id_token" or "api_key"
    admin: bool = False


@dataclass(frozen=True)
class AuthFailure:
    status: int  # 401: no valid credential; 403: valid, but not allowed
    code: str
    message: str


# url -> ({kid: PEM certificate}, seconds it may be cached); raises OSError or
# ValueError when the certificates cannot be had.
CertsFetcher = Callable[[str], tuple[Mapping[str, str], float]]


class CertsUnavailable(TransientError):
    """Google's certificates could not be fetched: answer 503 and let the caller retry."""


def fetch_certs(url: str) -> tuple[Mapping[str, str], float]:
    """Google's ``{kid: PEM certificate}`` document and how long it may be cached."""
    import requests

    answer = requests.get(url, timeout=10)
    answer.raise_for_status()
    ttl = CERTS_FALLBACK_TTL_S
    for part in answer.headers.get("Cache-Control", "").split(","):
        name, _, value = part.strip().partition("=")
        if name == "max-age" and value.isdigit():
            ttl = float(value)
    certs = answer.json()
    if not isinstance(certs, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in certs.items()
    ):
        raise ValueError(f"{url} did not answer a {{key id: certificate}} object")
    return certs, ttl


@dataclass(frozen=True)
class _Certs:
    """What the verifier knows, replaced whole so readers need no lock."""

    certs: Mapping[str, str]
    expires: float = 0.0
    next_fetch: float = 0.0  # no fetch before this, whatever tokens arrive
    failed: bool = False  # the last fetch failed


class IdTokenVerifier:
    """Checks signature, expiry, audience and issuer of Google ID tokens.

    Certificates are cached for their ``max-age`` and fetched again early when a
    token names a key id we have not seen (Google rotates keys). Key ids are
    chosen by whoever sends the token, so fetches are rationed: one at a time,
    at most one per ``min_refetch_s``; an unknown key id in between is simply
    not valid (401). A failed fetch raises ``CertsUnavailable`` (503).
    """

    def __init__(
        self,
        audiences: Collection[str],
        certs_url: str,
        fetcher: CertsFetcher = fetch_certs,
        clock: Callable[[], float] = time.time,
        min_refetch_s: float = CERTS_MIN_REFETCH_S,
    ) -> None:
        self._audiences = list(audiences)
        self._url = certs_url
        self._fetcher = fetcher
        self._clock = clock
        self._min_refetch_s = min_refetch_s
        self._state = _Certs({})
        self._fetching = threading.Lock()

    def _certs_for(self, kid: str | None) -> Mapping[str, str]:
        state = self._state
        if self._clock() < state.expires and (kid is None or kid in state.certs):
            return state.certs  # the usual case: no lock, no fetch
        with self._fetching:  # one fetch in flight; the others wait for its outcome
            state, now = self._state, self._clock()
            stale = now >= state.expires
            if not stale and (kid is None or kid in state.certs):
                return state.certs  # fetched while we waited
            if now < state.next_fetch:
                if stale and (state.failed or not state.certs):
                    raise CertsUnavailable("Google's token certificates are unavailable")
                return state.certs  # an unknown key id stays unknown until the next fetch
            self._state = _Certs(state.certs, state.expires, now + self._min_refetch_s, True)
            try:
                certs, ttl = self._fetcher(self._url)
            except (OSError, ValueError) as exc:
                raise CertsUnavailable(f"Google's token certificates: {exc}") from exc
            self._state = _Certs(dict(certs), now + ttl, now + self._min_refetch_s)
            return self._state.certs

    def verify(self, token: str) -> Mapping[str, Any]:
        """The token's claims; ValueError with the reason when it is not valid."""
        from google.auth import exceptions, jwt

        try:
            header = jwt.decode_header(token)
            certs = self._certs_for(header.get("kid"))
            claims: Mapping[str, Any] = jwt.decode(
                token,
                certs=certs,
                audience=self._audiences,
                clock_skew_in_seconds=CLOCK_SKEW_S,
            )
        except (ValueError, exceptions.GoogleAuthError) as exc:
            raise ValueError(str(exc)) from exc
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise ValueError(f"token issuer {claims.get('iss')!r} is not Google")
        return claims


class Authenticator:
    """Turns request headers into an ``Identity`` or an ``AuthFailure``."""

    def __init__(
        self,
        key_hashes: Mapping[str, str],
        verifier: IdTokenVerifier | None,
        allowed_emails: Collection[str],
        allowed_domains: Collection[str],
        admins: Collection[str],
    ) -> None:
        self._key_hashes = key_hashes
        self._verifier = verifier
        self._emails = {e.lower() for e in allowed_emails}
        self._domains = {d.lower() for d in allowed_domains}
        self._admins = {a.lower() for a in admins}

    def authenticate(self, headers: Mapping[str, str]) -> Identity | AuthFailure:
        # HTTP header names are case-insensitive.
        lowered = {name.lower(): value for name, value in headers.items()}
        api_key = lowered.get("x-api-key")
        authorization = lowered.get("authorization")
        if api_key:
            caller = caller_for_api_key(api_key, self._key_hashes)
            if caller is None:
                return AuthFailure(401, "unauthenticated", "the API key is not recognised")
            return Identity(caller, "api_key", caller.lower() in self._admins)
        if not authorization:
            return AuthFailure(
                401,
                "unauthenticated",
                "send an API key (X-API-Key) or a Google ID token (Authorization: Bearer)",
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return AuthFailure(401, "unauthenticated", "Authorization must be 'Bearer <ID token>'")
        if self._verifier is None:
            return AuthFailure(401, "unauthenticated", "ID tokens are not accepted here")
        try:
            # CertsUnavailable (a TransientError) is not the caller's fault: it goes up as 503.
            claims = self._verifier.verify(token.strip())
        except ValueError as exc:
            return AuthFailure(401, "unauthenticated", f"the ID token is not valid: {exc}")
        email = str(claims.get("email", "")).lower()
        if not email or claims.get("email_verified") is not True:
            return AuthFailure(403, "forbidden", "the ID token carries no verified email")
        # A domain is vouched for by Google's hosted-domain claim, set only for
        # accounts of that Workspace; a personal account can carry a verified
        # address of any domain (one a former employee kept, say).
        hosted = str(claims.get("hd") or "").lower()
        if email not in self._emails and not (hosted and hosted in self._domains):
            return AuthFailure(403, "forbidden", f"{email} is not allowed to use this service")
        return Identity(email, "id_token", email in self._admins)
