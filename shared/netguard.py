"""Fetch user-supplied ``https://`` URLs from public addresses only (the SSRF guard).

The generate function runs inside Google Cloud, where the metadata server
(169.254.169.254, ``metadata.google.internal``) hands out service-account
tokens and private ranges reach internal services. For every hop of a fetch:

- https only, no credentials in the URL, no internal host names;
- a numeric host only in its canonical spelling (``2130706433``, ``0177.0.0.1``
  and ``127.1`` all mean 127.0.0.1 to ``inet_aton``);
- every resolved address public (``is_global``), including the IPv4 address
  embedded in IPv4-mapped, IPv4-compatible, 6to4, NAT64 and Teredo forms;
- the connection goes to the checked address itself, with the host name kept
  for TLS (SNI and certificate verification), so no second DNS lookup can
  swap the address (DNS rebinding);
- redirects are followed hop by hop under the same rules, a bounded number of
  times; the body and the total time are capped.

Name resolution and the TCP connection are injectable (``Resolve``, ``Connect``)
so tests can serve on loopback behind a made-up public address while every
check above still runs unchanged.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

import certifi

from shared.errors import PermanentError, TransientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the host's addresses as text.
Resolve = Callable[[str, int], Sequence[str]]
# (address, port, timeout in seconds) -> a connected TCP socket.
Connect = Callable[[str, int, float], socket.socket]

INTERNAL_NAMES = frozenset({"localhost", "metadata", "metadata.google.internal", "metadata.goog"})
INTERNAL_SUFFIXES = (".localhost", ".internal", ".local", ".localdomain", ".home.arpa")
# Labels inet_aton reads as numbers: decimal, octal (leading 0) or hex (0x).
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
# Characters kept as they are when a path or query is percent-encoded (RFC 3986).
_URL_SAFE = "/:@!$&'()*+,;=?%-._~"
# Addresses of one host tried before giving up on connecting.
_MAX_ADDRESSES = 3
USER_AGENT = "sheets-image-pipeline/reference-fetch"


class Refused(PermanentError):
    """The URL may not be fetched; the message says why."""


@dataclass(frozen=True)
class Validators:
    """What a cached answer is revalidated with (``ETag``, ``Last-Modified``)."""

    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers

    def __bool__(self) -> bool:
        return bool(self.etag or self.last_modified)


@dataclass(frozen=True)
class Fetched:
    url: str
    body: bytes
    not_modified: bool
    validators: Validators


@dataclass(frozen=True)
class Target:
    """One vetted hop: where to connect, and what to ask for."""

    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


def system_resolve(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (production)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            raise TransientError(f"{host} could not be resolved just now") from exc
        raise PermanentError(f"{host} does not resolve") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def system_connect(address: str, port: int, timeout_s: float) -> socket.socket:
    """A TCP connection to exactly this address (production)."""
    return socket.create_connection((address, port), timeout=timeout_s)


def public_address(text: str, host: str) -> IPAddress:
    """``text`` (an address of ``host``) if it and every IPv4 address inside it are public."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError as exc:
        raise Refused(f"{host} resolves to {text!r}, which is not an IP address") from exc
    for candidate in _embedded(address):
        if not candidate.is_global or candidate.is_multicast:
            named = f"{host} resolves to {address}, which" if host != text else f"{address}"
            raise Refused(f"{named} is not a public address")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # connect over IPv4 to the address we checked
    return address


def _embedded(address: IPAddress) -> list[IPAddress]:
    """The address and every IPv4 address an IPv6 form routes to."""
    found: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.ipv4_mapped is not None:
            found.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            found.append(address.sixtofour)
        if address.teredo is not None:
            found.extend(address.teredo)
        if address in _NAT64 or address in _IPV4_COMPATIBLE:
            found.append(low32)
    return found


def _literal(host: str) -> IPAddress | None:
    """The address a numeric host names; non-canonical spellings are refused."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if all(_NUMERIC_LABEL.match(label) for label in host.split(".")):
        try:
            meant = f" (it means {socket.inet_ntoa(socket.inet_aton(host))})"
        except OSError:
            meant = ""
        raise Refused(f"host {host} is an IP address in a non-canonical spelling{meant}")
    return None


def vet(url: str, resolve: Resolve) -> Target:
    """Check one URL and resolve its host once; refuse it unless every address is public."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "https":
        raise Refused(f"{url} is not an https:// URL")
    if parts.username is not None or parts.password is not None:
        raise Refused(f"{url} carries credentials")
    try:
        port = parts.port or 443
    except ValueError as exc:
        raise Refused(f"{url} has an invalid port") from exc
    try:
        # The ASCII (IDNA) form is what DNS, TLS and the Host header all use.
        host = (parts.hostname or "").rstrip(".").encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise Refused(f"{url} has an invalid host name") from exc
    if not host:
        raise Refused(f"{url} names no host")
    if host in INTERNAL_NAMES or host.endswith(INTERNAL_SUFFIXES):
        raise Refused(f"host {host} is an internal name")
    literal = _literal(host)
    if literal is not None:
        host = str(literal)  # the canonical spelling, for TLS and the Host header
    texts = [host] if literal is not None else resolve(host, port)
    if not texts:
        raise PermanentError(f"{host} does not resolve")
    # Every answer must be public: a mixed answer is how rebinding attacks start.
    addresses = tuple(dict.fromkeys(str(public_address(text, host)) for text in texts))
    path = quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_URL_SAFE)
    return Target(host=host, port=port, path=path, addresses=addresses)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a vetted address, with the host name for SNI and certificate checks."""

    def __init__(self, target: Target, connect: Connect, tls: ssl.SSLContext, timeout_s: float):
        super().__init__(target.host, target.port, timeout=timeout_s, context=tls)
        self._timeout_s = timeout_s
        self._target = target
        self._connect = connect
        self._tls = tls
        self.tls_socket: ssl.SSLSocket | None = None

    def connect(self) -> None:
        last: OSError | None = None
        for address in self._target.addresses[:_MAX_ADDRESSES]:
            try:
                raw = self._connect(address, self.port, self._timeout_s)
            except OSError as exc:
                last = exc
                continue
            self.sock = self.tls_socket = self._tls.wrap_socket(raw, server_hostname=self.host)
            return
        raise last or OSError(f"no address of {self.host} to connect to")


class SafeFetcher:
    """GET of user-supplied URLs under the rules in this module's docstring."""

    def __init__(
        self,
        resolve: Resolve = system_resolve,
        connect: Connect = system_connect,
        tls: ssl.SSLContext | None = None,
        max_redirects: int = 3,
    ) -> None:
        self._resolve = resolve
        self._connect = connect
        self._tls = tls or ssl.create_default_context(cafile=certifi.where())
        self._max_redirects = max_redirects

    def get(
        self,
        url: str,
        max_bytes: int,
        timeout_s: float,
        validators: Validators | None = None,
    ) -> Fetched:
        """The body of ``url`` (or ``not_modified``), following checked redirects."""
        deadline = time.monotonic() + timeout_s
        current = url
        for _ in range(self._max_redirects + 1):
            target = vet(current, self._resolve)
            try:
                outcome = self._request(current, target, max_bytes, deadline, validators)
            except TimeoutError as exc:
                raise TransientError(f"{current} timed out") from exc
            except ssl.SSLCertVerificationError as exc:
                raise PermanentError(f"{current}: TLS certificate not valid: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                raise TransientError(f"{current} could not be fetched: {exc}") from exc
            if isinstance(outcome, Fetched):
                return outcome
            current = urljoin(current, outcome)
        raise Refused(f"{url} redirects more than {self._max_redirects} times")

    def _request(
        self,
        url: str,
        target: Target,
        max_bytes: int,
        deadline: float,
        validators: Validators | None,
    ) -> Fetched | str:
        """The answer of one hop, or the Location it redirects to."""
        remaining = _remaining(url, deadline)
        connection = _PinnedHTTPSConnection(target, self._connect, self._tls, remaining)
        headers = {
            "User-Agent": USER_AGENT,
            "Accept": "image/png, image/jpeg, image/webp, application/zip, application/json",
            "Accept-Encoding": "identity",
            **(validators.headers() if validators else {}),
        }
        try:
            try:
                connection.request("GET", target.path, headers=headers)
            except http.client.InvalidURL as exc:
                raise Refused(f"{url} is not a valid URL: {exc}") from exc
            answer = connection.getresponse()
            status = answer.status
            if status in _REDIRECTS:
                location = answer.getheader("Location")
                if not location:
                    raise PermanentError(f"{url} redirects without a Location")
                return location
            found = Validators(answer.getheader("ETag"), answer.getheader("Last-Modified"))
            if status == 304 and validators:
                return Fetched(url, b"", True, found or validators)
            if status in (408, 429) or status >= 500:
                raise TransientError(f"{url} answered {status}")
            if status != 200:
                raise PermanentError(f"{url} answered {status}")
            length = answer.getheader("Content-Length") or ""
            if length.isdigit() and int(length) > max_bytes:
                raise Refused(f"{url} is {length} bytes; the limit is {max_bytes}")
            body = bytearray()
            while True:
                if connection.tls_socket is not None:
                    connection.tls_socket.settimeout(_remaining(url, deadline))
                chunk = answer.read(min(_CHUNK, max_bytes + 1 - len(body)))
                if not chunk:
                    break
                body += chunk
                if len(body) > max_bytes:
                    raise Refused(f"{url} is larger than the limit of {max_bytes} bytes")
            return Fetched(url, bytes(body), False, found)
        finally:
            connection.close()


def _remaining(url: str, deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TransientError(f"{url} took longer than the time allowed")
    return left
