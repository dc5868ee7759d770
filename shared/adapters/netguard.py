"""Fetch user-supplied ``https://`` URLs from public addresses only (the SSRF guard).

The generate function runs inside Google Cloud, where the metadata server
(169.254.169.254, ``metadata.google.internal``) hands out service-account
tokens and private ranges reach internal services. For every hop of a fetch:

- https only, no credentials in the URL, no internal host names;
- a numeric host only in its canonical spelling (``2130706433``, ``0177.0.0.1``
  and ``127.1`` all mean 127.0.0.1 to ``inet_aton``);
- every resolved address public: outside every range of the explicit table
  below (IPv6 also inside global unicast, 2000::/3), including the IPv4
  address embedded in IPv4-mapped, NAT64 and 6to4 forms;
- the connection goes to the checked address itself, with the host name kept
  for TLS (SNI and certificate verification), so no second DNS lookup can
  swap the address (DNS rebinding);
- redirects are followed hop by hop under the same rules, a bounded number of
  times; the body is capped, and one deadline covers the whole fetch: every
  connect, TLS handshake, request, header and body read of every hop gets only
  what is left of it, so a server that sends a byte at a time cannot stretch it.

Name resolution and the TCP connection are injectable (``Resolve``, ``Connect``)
so tests can serve on loopback behind a made-up public address while every
check above still runs unchanged.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import math
import re
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import certifi

from shared.domain.errors import PermanentError, TransientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the host's addresses as text.
Resolve = Callable[[str, int], Sequence[str]]
# (address, port, timeout in seconds) -> a connected TCP socket.
Connect = Callable[[str, int, float], socket.socket]

INTERNAL_NAMES = frozenset({"localhost", "metadata", "metadata.google.internal", "metadata.goog"})
INTERNAL_SUFFIXES = (".localhost", ".internal", ".local", ".localdomain", ".home.arpa")
# Labels inet_aton reads as numbers: decimal, octal (leading 0) or hex (0x).
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
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


def _table(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), why) for net, why in rows)


# The refused ranges, written out: ``is_global`` answers differently across
# Python versions (3.11 and early 3.12 call NAT64 local-use, IPv4-translated
# and site-local addresses global). From IANA's special-purpose address
# registries; a range there that is "globally reachable" but serves no web
# content (6to4 relays, protocol anycasts) is refused too.
REFUSED_V4 = _table(
    ("0.0.0.0/8", "'this network'"),
    ("10.0.0.0/8", "private-use"),
    ("100.64.0.0/10", "shared address space (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (the metadata server)"),
    ("172.16.0.0/12", "private-use"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast (deprecated)"),
    ("192.168.0.0/16", "private-use"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved or broadcast"),
)
REFUSED_V6 = _table(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("::ffff:0:0:0/96", "IPv4-translated"),
    ("64:ff9b:1::/48", "NAT64 local-use"),
    ("100::/64", "discard-only"),
    ("100:0:0:1::/64", "dummy prefix"),
    ("2001::/23", "IETF protocol assignments (Teredo, benchmarking, ORCHID)"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing (SRv6) SIDs"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)
# IPv6 forms that carry an IPv4 address: the IPv4 address is what gets reached.
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` is not public (None if it is), by the tables above alone."""
    if isinstance(address, ipaddress.IPv4Address):
        return next((f"{why}, {net}" for net, why in REFUSED_V4 if address in net), None)
    embedded = _embedded_v4(address)
    if embedded is not None:
        inner = refusal(embedded)
        return f"it carries {embedded}: {inner}" if inner else None
    found = next((f"{why}, {net}" for net, why in REFUSED_V6 if address in net), None)
    if found is None and address not in _GLOBAL_UNICAST:
        found = f"outside global unicast, {_GLOBAL_UNICAST}"
    return found


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, NAT64 or 6to4 address routes to."""
    value = int(address)
    if address in _MAPPED or address in _NAT64:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF)
    return None


def public_address(text: str, host: str) -> IPAddress:
    """``text`` (an address of ``host``) if it and every IPv4 address inside it are public."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError as exc:
        raise Refused(f"{host} resolves to {text!r}, which is not an IP address") from exc
    why = refusal(address)
    if why is not None:
        named = f"{host} resolves to {address}, which" if host != text else f"{address}"
        raise Refused(f"{named} is not a public address ({why})")
    if isinstance(address, ipaddress.IPv6Address) and address in _MAPPED:
        return _embedded_v4(address) or address  # connect over IPv4 to the address we checked
    return address


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


class _DeadlineSSLSocket(ssl.SSLSocket):
    """A TLS socket whose every handshake, read and write ends by one deadline.

    A socket timeout bounds each operation: a server that sends a byte every
    fraction of a second never trips it. Each operation here gets what is left
    until ``deadline`` instead (CPython's ssl module applies the socket timeout
    to a whole handshake, read or write, however many packets it takes).
    """

    deadline = math.inf

    def _arm(self) -> None:
        self.settimeout(_left(self.deadline))

    def do_handshake(self, block: bool = False) -> None:
        self._arm()
        super().do_handshake(block)

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        self._arm()
        return super().read(len, buffer)

    def send(self, data: Any, flags: int = 0) -> int:
        self._arm()
        return super().send(data, flags)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a vetted address, with the host name for SNI and certificate checks."""

    def __init__(self, target: Target, connect: Connect, tls: ssl.SSLContext, deadline: float):
        super().__init__(target.host, target.port, timeout=_left(deadline), context=tls)
        self._deadline = deadline
        self._target = target
        self._connect = connect
        self._tls = tls

    def connect(self) -> None:
        last: OSError | None = None
        for address in self._target.addresses[:_MAX_ADDRESSES]:
            try:
                raw = self._connect(address, self.port, _left(self._deadline))
            except OSError as exc:
                last = exc
                continue
            try:
                sock = self._tls.wrap_socket(
                    raw, server_hostname=self.host, do_handshake_on_connect=False
                )
                if isinstance(sock, _DeadlineSSLSocket):
                    sock.deadline = self._deadline
                sock.do_handshake()
            except BaseException:
                raw.close()
                raise
            self.sock = sock
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
        # Every socket of this context keeps to the deadline of its fetch.
        self._tls.sslsocket_class = _DeadlineSSLSocket
        self._max_redirects = max_redirects

    def get(
        self,
        url: str,
        max_bytes: int,
        timeout_s: float,
        validators: Validators | None = None,
    ) -> Fetched:
        """The body of ``url`` (or ``not_modified``), following checked redirects.

        ``timeout_s`` is one deadline for all of it, every hop included.
        """
        deadline = time.monotonic() + timeout_s
        current = url
        for _ in range(self._max_redirects + 1):
            target = vet(current, self._resolve)
            try:
                outcome = self._request(current, target, max_bytes, deadline, validators)
            except TimeoutError as exc:
                raise TransientError(
                    f"{current} took longer than the {timeout_s:.3g} s allowed"
                ) from exc
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
        connection = _PinnedHTTPSConnection(target, self._connect, self._tls, deadline)
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
            # BytesIO hands its buffer over as bytes without a copy: a body at
            # the cap costs the cap in memory, not twice that.
            body = io.BytesIO()
            while True:
                chunk = answer.read(min(_CHUNK, max_bytes + 1 - body.tell()))
                if not chunk:
                    break
                body.write(chunk)
                if body.tell() > max_bytes:
                    raise Refused(f"{url} is larger than the limit of {max_bytes} bytes")
            return Fetched(url, body.getvalue(), False, found)
        finally:
            connection.close()


def _left(deadline: float) -> float:
    """Seconds until ``deadline``; TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the time allowed has run out")
    return left
