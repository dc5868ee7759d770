"""Reference packs and the SSRF guard (shared/adapters/netguard.py, adapters/references.py).

The fetcher under test is the production one: only its name resolution and
its TCP connect are swapped. Made-up public names resolve to made-up public
addresses, and the test connector carries exactly those to an HTTPS server on
loopback (with a certificate from a test CA), so URL rules, address checks,
TLS (SNI and certificate verification against the name), redirects and caps
all run as in production. Addresses the guard must refuse are served by
counting listeners on loopback: a request that slipped through would show up
there, and the test connector never leaves loopback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import ipaddress
import json
import random
import socket
import ssl
import struct
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.adapters.netguard import Refused, SafeFetcher, Validators, public_address, vet
from shared.adapters.references import ENTRY_OVERHEAD, PackLimits, PackReferenceLoader
from shared.contracts.messages import JobMessage
from shared.domain.errors import PermanentError, TransientError
from shared.domain.job import JobState
from shared.services.generation import Generation
from tests.fakes import (
    IMAGES_BUCKET,
    FakeImageGenerator,
    FakeJobStore,
    FakeObjectStore,
    jpeg_bytes,
    make_job,
    png_bytes,
)

PUBLIC = {
    "refs.example.test": ["1.2.3.4"],
    "cdn.example.test": ["5.6.7.8"],
    "wrong-cert.example.test": ["1.2.3.4"],
    "intranet.example.test": ["10.1.2.3"],
    "mixed.example.test": ["1.2.3.4", "10.0.0.1"],
    "sneaky.example.test": ["127.0.0.1"],
    "v6-mapped.example.test": ["::ffff:169.254.169.254"],
}
TLS_NAMES = ["refs.example.test", "cdn.example.test"]
PNG = png_bytes(size=(16, 16))
JPEG = jpeg_bytes(size=(16, 16))
MB = 1024 * 1024
DEFLATED = zipfile.ZIP_DEFLATED


# --------------------------------------------------------------------------- TLS test server


@dataclass
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA and a server certificate for the made-up public names."""
    folder = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("test CA"))
        .issuer_name(_name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(TLS_NAMES[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in TLS_NAMES]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    pki.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False
    delay_s: float = 0.0
    # A crawling server: the answer goes out a byte at a time, this far apart,
    # from the status line on ("status") or after the headers ("body").
    dribble_s: float = 0.0
    dribble_from: str = "status"


class SiteServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SiteHandler)
        self.routes: dict[str, Route] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.finished: list[str] = []  # paths whose dribbled answer went out whole

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients the guard makes hang up (size caps, bad certificates) are expected

    def hits(self, path: str) -> int:
        return sum(1 for seen, _ in self.seen if seen == path)


class _SiteHandler(BaseHTTPRequestHandler):
    server: SiteServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append((self.path, dict(self.headers.items())))
        route = self.server.routes.get(self.path, Route(404, b"not here"))
        if route.delay_s:
            time.sleep(route.delay_s)
        etag = route.headers.get("ETag")
        if etag and self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if route.dribble_s:
            self._dribble(route)
            return
        self.send_response(route.status)
        for name, value in route.headers.items():
            self.send_header(name, value)
        if route.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(route.body), 4096):
                piece = route.body[start : start + 4096]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.write(route.body)
        self.close_connection = True

    def _dribble(self, route: Route) -> None:
        self.close_connection = True
        lines = [f"HTTP/1.1 {route.status} Whatever"]
        lines += [f"{name}: {value}" for name, value in route.headers.items()]
        if route.chunked:
            lines.append("Transfer-Encoding: chunked")
            body = b"".join(
                b"1\r\n" + route.body[i : i + 1] + b"\r\n" for i in range(len(route.body))
            )
            body += b"0\r\n\r\n"
        else:
            lines.append(f"Content-Length: {len(route.body)}")
            body = route.body
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        at_once, slowly = (head, body) if route.dribble_from == "body" else (b"", head + body)
        try:
            self.wfile.write(at_once)
            for i in range(len(slowly)):
                self.wfile.write(slowly[i : i + 1])
                time.sleep(route.dribble_s)
        except OSError:
            return  # the client hung up: the guard gave up on us
        self.server.finished.append(self.path)


@pytest.fixture(scope="module")
def site(pki: Pki) -> Iterator[SiteServer]:
    server = SiteServer()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(autouse=True)
def fresh_site(request: pytest.FixtureRequest) -> None:
    if "site" in request.fixturenames:
        site: SiteServer = request.getfixturevalue("site")
        site.routes.clear()
        site.seen.clear()
        site.finished.clear()


class Counter:
    """A TCP listener on loopback that only counts the connections it gets."""

    def __init__(self, family: socket.AddressFamily, host: str) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.count += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def counter() -> Iterator[Counter]:
    listener = Counter(socket.AF_INET, "127.0.0.1")
    yield listener
    listener.close()


@pytest.fixture
def counter6() -> Iterator[Counter]:
    try:
        listener = Counter(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    yield listener
    listener.close()


# --------------------------------------------------------------------------- the network ports


@dataclass
class Network:
    """The swapped resolver and connector, and what the fetcher asked of them."""

    site_port: int
    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    resolved: list[str] = field(default_factory=list)
    connects: list[tuple[str, int]] = field(default_factory=list)

    def resolve(self, host: str, port: int) -> list[str]:
        self.resolved.append(host)
        queued = self.answers.get(host)
        if queued:
            return queued.pop(0) if len(queued) > 1 else queued[0]
        if host not in PUBLIC:
            raise PermanentError(f"{host} does not resolve")
        return PUBLIC[host]

    def connect(self, address: str, port: int, timeout_s: float) -> socket.socket:
        self.connects.append((address, port))
        if address in ("1.2.3.4", "5.6.7.8") and port == 443:
            return socket.create_connection(("127.0.0.1", self.site_port), timeout=timeout_s)
        if not ipaddress.ip_address(address).is_loopback:
            raise ConnectionRefusedError(f"tests never connect to {address}")
        # Loopback the guard let through reaches the counting listener: a failure shows.
        return socket.create_connection((address, port), timeout=timeout_s)


@pytest.fixture
def network(site: SiteServer) -> Network:
    return Network(site_port=site.server_address[1])


@pytest.fixture
def fetcher(network: Network, pki: Pki) -> SafeFetcher:
    tls = ssl.create_default_context(cafile=str(pki.ca_file))
    return SafeFetcher(network.resolve, network.connect, tls, max_redirects=3)


def get(fetcher: SafeFetcher, url: str, max_bytes: int = MB, timeout_s: float = 5.0) -> bytes:
    return fetcher.get(url, max_bytes, timeout_s).body


# --------------------------------------------------------------------------- SSRF: refused


LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.9.9.9",
    "localhost",
    "LocalHost.",
    "2130706433",  # decimal
    "0177.0.0.1",  # octal
    "017700000001",  # octal, one number
    "0x7f.0.0.1",  # hex
    "0x7f000001",
    "127.1",  # short form
    "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6
    "[::ffff:7f00:1]",
    "[::127.0.0.1]",  # IPv4-compatible IPv6
    "[2002:7f00:1::]",  # 6to4 of 127.0.0.1
    "sneaky.example.test",  # a name that resolves to loopback
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_loopback_in_any_spelling_is_refused_and_never_reached(
    fetcher: SafeFetcher, network: Network, counter: Counter, host: str
) -> None:
    with pytest.raises(Refused) as info:
        get(fetcher, f"https://{host}:{counter.port}/refs.png")
    assert network.connects == []
    assert counter.count == 0
    reason = str(info.value)
    assert "not a public address" in reason or "non-canonical" in reason or "internal" in reason


def test_ipv6_loopback_is_refused_and_never_reached(
    fetcher: SafeFetcher, network: Network, counter6: Counter
) -> None:
    with pytest.raises(Refused, match=r"::1 is not a public address"):
        get(fetcher, f"https://[::1]:{counter6.port}/refs.png")
    assert (network.connects, counter6.count) == ([], 0)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://10.0.0.1/a.png", "10.0.0.1 is not a public address"),
        ("https://172.16.5.4/a.png", "not a public address"),
        ("https://192.168.1.1/a.png", "not a public address"),
        ("https://100.64.0.1/a.png", "not a public address"),  # carrier-grade NAT
        ("https://0.0.0.0/a.png", "not a public address"),
        ("https://169.254.169.254/computeMetadata/v1/", "169.254.169.254 is not a public"),
        ("https://[fd00::1]/a.png", "not a public address"),
        ("https://[fe80::1]/a.png", "not a public address"),
        ("https://[::]/a.png", "not a public address"),
        ("https://[::ffff:169.254.169.254]/", "not a public address"),
        ("https://[64:ff9b::a9fe:a9fe]/", "not a public address"),  # NAT64 of the metadata IP
        # Ranges Python 3.11's is_global calls global (issue 11, item 8).
        ("https://[64:ff9b:1::a9fe:a9fe]/", "NAT64 local-use"),
        ("https://[::ffff:0:a9fe:a9fe]/", "IPv4-translated"),
        ("https://[fec0::1]/", "site-local"),
        ("https://[5f00::1]/", "segment routing"),
        ("https://192.88.99.1/", "6to4 relay anycast"),
        ("https://224.0.0.1/a.png", "not a public address"),
        ("https://metadata.google.internal/computeMetadata/v1/", "internal name"),
        ("https://metadata/computeMetadata/v1/", "internal name"),
        ("https://printer.local/a.png", "internal name"),
        ("https://intranet.example.test/a.png", "10.1.2.3, which is not a public address"),
        ("https://mixed.example.test/a.png", "10.0.0.1, which is not a public address"),
        ("https://v6-mapped.example.test/a.png", "not a public address"),
        ("http://refs.example.test/refs.png", "is not an https:// URL"),
        ("file:///etc/passwd", "is not an https:// URL"),
        ("ftp://refs.example.test/refs.png", "is not an https:// URL"),
        ("gopher://refs.example.test:70/", "is not an https:// URL"),
        ("https://user:secret@refs.example.test/refs.png", "carries credentials"),
        ("https://refs.example.test@127.0.0.1/refs.png", "carries credentials"),
        ("https://:443/refs.png", "names no host"),
        ("https://refs.example.test:99999/", "invalid port"),
    ],
)
def test_private_and_internal_targets_are_refused_before_any_connection(
    fetcher: SafeFetcher, network: Network, site: SiteServer, url: str, reason: str
) -> None:
    with pytest.raises(Refused, match=reason.replace(".", r"\.")):
        get(fetcher, url)
    assert network.connects == []
    assert site.seen == []


def test_internal_names_are_refused_without_even_resolving(
    fetcher: SafeFetcher, network: Network
) -> None:
    for url in ("https://metadata.google.internal/", "https://localhost/", "https://a.internal/"):
        with pytest.raises(Refused):
            get(fetcher, url)
    assert network.resolved == []


@pytest.mark.parametrize(
    "text",
    ["127.0.0.1", "10.0.0.1", "::1", "::ffff:10.0.0.1", "2002:a00:1::", "64:ff9b::7f00:1"],
)
def test_public_address_refuses_non_global_and_embedded_non_global(text: str) -> None:
    with pytest.raises(Refused):
        public_address(text, "h")


def test_public_address_keeps_public_ones_and_unmaps_ipv4() -> None:
    assert str(public_address("8.8.8.8", "h")) == "8.8.8.8"
    assert str(public_address("2606:4700::1111", "h")) == "2606:4700::1111"
    assert str(public_address("::ffff:8.8.8.8", "h")) == "8.8.8.8"


# --------------------------------------------------------------------------- redirects


def test_redirect_from_a_public_name_to_a_private_address_is_refused(
    fetcher: SafeFetcher, network: Network, site: SiteServer, counter: Counter
) -> None:
    site.routes["/go"] = Route(302, headers={"Location": f"https://127.0.0.1:{counter.port}/x"})
    with pytest.raises(Refused, match=r"127\.0\.0\.1 is not a public address"):
        get(fetcher, "https://refs.example.test/go")
    assert site.hits("/go") == 1
    assert counter.count == 0
    assert network.connects == [("1.2.3.4", 443)]


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("https://intranet.example.test/a.png", "10.1.2.3, which is not a public"),
        ("https://169.254.169.254/computeMetadata/v1/", "not a public address"),
        ("https://metadata.google.internal/", "internal name"),
        ("http://refs.example.test/refs.png", "is not an https:// URL"),
        ("file:///etc/passwd", "is not an https:// URL"),
        ("https://2130706433/", "non-canonical"),
    ],
)
def test_every_redirect_hop_is_checked(
    fetcher: SafeFetcher, network: Network, site: SiteServer, location: str, reason: str
) -> None:
    site.routes["/go"] = Route(301, headers={"Location": location})
    with pytest.raises(Refused, match=reason):
        get(fetcher, "https://refs.example.test/go")
    assert network.connects == [("1.2.3.4", 443)]


def test_checked_redirects_to_public_names_are_followed(
    fetcher: SafeFetcher, network: Network, site: SiteServer
) -> None:
    site.routes["/a"] = Route(302, headers={"Location": "https://cdn.example.test/b"})
    site.routes["/b"] = Route(307, headers={"Location": "/c.png"})  # relative
    site.routes["/c.png"] = Route(200, PNG)
    fetched = fetcher.get("https://refs.example.test/a", MB, 5.0)
    assert (fetched.body, fetched.url) == (PNG, "https://cdn.example.test/c.png")
    assert network.resolved == ["refs.example.test", "cdn.example.test", "cdn.example.test"]
    assert network.connects == [("1.2.3.4", 443), ("5.6.7.8", 443), ("5.6.7.8", 443)]
    # The Host header names the host, though the connection went to an address.
    assert [headers["Host"] for _, headers in site.seen] == [
        "refs.example.test",
        "cdn.example.test",
        "cdn.example.test",
    ]


def test_redirect_chains_are_bounded(fetcher: SafeFetcher, site: SiteServer) -> None:
    site.routes["/loop"] = Route(302, headers={"Location": "/loop"})
    with pytest.raises(Refused, match="redirects more than 3 times"):
        get(fetcher, "https://refs.example.test/loop")
    assert site.hits("/loop") == 4


# --------------------------------------------------------------------------- connection


def test_the_connection_goes_to_the_checked_address_without_a_second_lookup(
    fetcher: SafeFetcher, network: Network, site: SiteServer
) -> None:
    # DNS rebinding: a public answer for the check, loopback for any later lookup.
    network.answers["refs.example.test"] = [["1.2.3.4"], ["127.0.0.1"]]
    site.routes["/refs.png"] = Route(200, PNG)
    assert get(fetcher, "https://refs.example.test/refs.png") == PNG
    assert network.resolved == ["refs.example.test"]
    assert network.connects == [("1.2.3.4", 443)]


def test_tls_certificate_is_verified_against_the_host_name(
    fetcher: SafeFetcher, site: SiteServer
) -> None:
    site.routes["/refs.png"] = Route(200, PNG)
    with pytest.raises(PermanentError, match="TLS certificate not valid"):
        get(fetcher, "https://wrong-cert.example.test/refs.png")
    assert site.seen == []


def test_untrusted_certificate_is_refused(network: Network, site: SiteServer) -> None:
    site.routes["/refs.png"] = Route(200, PNG)
    production_trust = SafeFetcher(network.resolve, network.connect)
    with pytest.raises(PermanentError, match="TLS certificate not valid"):
        get(production_trust, "https://refs.example.test/refs.png")


# --------------------------------------------------------------------------- caps and answers


def test_oversized_body_with_length_is_refused_before_reading(
    fetcher: SafeFetcher, site: SiteServer
) -> None:
    site.routes["/big"] = Route(200, b"x" * 5000)
    with pytest.raises(Refused, match="is 5000 bytes; the limit is 4096"):
        get(fetcher, "https://refs.example.test/big", max_bytes=4096)


def test_oversized_body_without_length_is_cut_off(fetcher: SafeFetcher, site: SiteServer) -> None:
    site.routes["/big"] = Route(200, b"x" * 50_000, chunked=True)
    with pytest.raises(Refused, match="larger than the limit of 10000 bytes"):
        get(fetcher, "https://refs.example.test/big", max_bytes=10_000)


def test_chunked_body_within_the_limit_is_read(fetcher: SafeFetcher, site: SiteServer) -> None:
    body = png_bytes(size=(64, 64))
    site.routes["/ok.png"] = Route(200, body, chunked=True)
    assert get(fetcher, "https://refs.example.test/ok.png") == body


def test_slow_server_runs_into_the_time_cap(fetcher: SafeFetcher, site: SiteServer) -> None:
    site.routes["/slow"] = Route(200, PNG, delay_s=1.0)
    with pytest.raises(TransientError, match=r"took longer than the 0\.3 s allowed"):
        get(fetcher, "https://refs.example.test/slow", timeout_s=0.3)


# A crawling answer goes out over about 3 s, a byte every 20-30 ms: no single
# socket operation waits long, so only one deadline for the whole fetch stops it.
CRAWL = {
    "status line and headers": Route(200, PNG, dribble_s=0.02),
    "body with a length": Route(200, PNG * 3, dribble_s=0.01, dribble_from="body"),
    "chunked body": Route(200, PNG, chunked=True, dribble_s=0.005, dribble_from="body"),
}


@pytest.mark.parametrize("phase", list(CRAWL))
def test_a_crawling_server_is_cut_off_at_one_deadline(
    fetcher: SafeFetcher, site: SiteServer, phase: str
) -> None:
    site.routes["/crawl"] = CRAWL[phase]
    with pytest.raises(TransientError, match=r"took longer than the 0\.4 s allowed"):
        get(fetcher, "https://refs.example.test/crawl", timeout_s=0.4)
    # The guard hung up mid-answer; a per-operation timeout would have read it all.
    assert site.finished == []


def test_one_deadline_covers_every_redirect_hop(fetcher: SafeFetcher, site: SiteServer) -> None:
    # Each hop alone fits in the time allowed; the two together do not.
    site.routes["/first"] = Route(302, headers={"Location": "/second"}, dribble_s=0.007)
    site.routes["/second"] = Route(200, b"", dribble_s=0.009)
    with pytest.raises(TransientError, match=r"took longer than the 0\.5 s allowed"):
        get(fetcher, "https://refs.example.test/first", timeout_s=0.5)
    assert "/second" not in site.finished


def test_a_pack_has_one_deadline_for_all_its_fetches(make_loader: Make, site: SiteServer) -> None:
    # A manifest and its items are one pack: their fetches share REFERENCE_TIMEOUT_S.
    site.routes["/m.json"] = Route(
        200,
        b'["https://cdn.example.test/1.png", "https://cdn.example.test/2.png"]',
        dribble_s=0.004,
    )
    site.routes["/1.png"] = Route(200, PNG, dribble_s=0.002)
    site.routes["/2.png"] = Route(200, PNG, dribble_s=0.002)
    with pytest.raises(TransientError, match="longer than"):
        make_loader(timeout_s=0.6).load("https://refs.example.test/m.json")
    assert "/2.png" not in site.finished


@pytest.mark.parametrize(
    ("status", "error"),
    [(503, TransientError), (429, TransientError), (404, PermanentError), (403, PermanentError)],
)
def test_error_statuses(
    fetcher: SafeFetcher, site: SiteServer, status: int, error: type[Exception]
) -> None:
    site.routes["/x"] = Route(status, b"no")
    with pytest.raises(error, match=f"answered {status}"):
        get(fetcher, "https://refs.example.test/x")


def test_vet_quotes_the_path_and_keeps_the_query() -> None:
    target = vet("https://refs.example.test/a b/ü.png?x=1&y=ä#frag", lambda h, p: ["1.2.3.4"])
    assert target.path == "/a%20b/%C3%BC.png?x=1&y=%C3%A4"
    assert (target.host, target.port, target.addresses) == ("refs.example.test", 443, ("1.2.3.4",))


# --------------------------------------------------------------------------- the loader


def zip_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


class Ticker:
    """A monotonic clock for the cache, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ticker() -> Ticker:
    return Ticker()


@pytest.fixture
def objects() -> FakeObjectStore:
    return FakeObjectStore()


Make = Callable[..., PackReferenceLoader]


@pytest.fixture
def make_loader(fetcher: SafeFetcher, objects: FakeObjectStore, ticker: Ticker) -> Make:
    def build(**overrides: Any) -> PackReferenceLoader:
        values: dict[str, Any] = {
            "max_bytes": MB,
            "max_images": 3,
            "max_pixels": 1_000_000,
            "timeout_s": 5.0,
            "cache_bytes": 8 * MB,
            "fresh_s": 60.0,
        }
        values.update(overrides)
        return PackReferenceLoader(objects, IMAGES_BUCKET, fetcher, PackLimits(**values), ticker)

    return build


def test_single_image_pack(make_loader: Make, site: SiteServer) -> None:
    site.routes["/one.jpg"] = Route(200, JPEG, {"Content-Type": "application/octet-stream"})
    (image,) = make_loader().load("https://refs.example.test/one.jpg")
    assert (image.data, image.mime_type) == (JPEG, "image/jpeg")


def test_zip_pack_keeps_images_in_name_order_up_to_the_model_limit(
    make_loader: Make, site: SiteServer
) -> None:
    pngs = [png_bytes(size=(8, 8), color=(i * 40, 0, 0)) for i in range(5)]
    pack = zip_of(
        {
            "README.txt": b"refs for scene 1",
            "__MACOSX/._e.png": b"junk",
            "fake.png": b"\x89PNG\r\n\x1a\n" + b"not really",
            **{f"{name}.png": data for name, data in zip("edcba", pngs, strict=True)},
        }
    )
    site.routes["/pack.zip"] = Route(200, pack)
    images = make_loader(max_images=3).load("https://refs.example.test/pack.zip")
    assert [i.data for i in images] == [pngs[4], pngs[3], pngs[2]]  # a, b, c
    assert {i.mime_type for i in images} == {"image/png"}


def test_zip_members_larger_than_an_image_may_be_are_not_inflated(
    make_loader: Make, site: SiteServer
) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.png", b"\0" * (3 * MB))  # compresses to a few KB
        archive.writestr("ok.png", PNG)
    site.routes["/pack.zip"] = Route(200, out.getvalue())
    images = make_loader(max_bytes=MB).load("https://refs.example.test/pack.zip")
    assert [i.data for i in images] == [PNG]


def test_zip_without_images_is_permanent(make_loader: Make, site: SiteServer) -> None:
    site.routes["/pack.zip"] = Route(200, zip_of({"notes.txt": b"hello"}))
    with pytest.raises(PermanentError, match="holds no usable PNG, JPEG or WebP"):
        make_loader().load("https://refs.example.test/pack.zip")


def test_broken_zip_is_permanent(make_loader: Make, site: SiteServer) -> None:
    site.routes["/pack.zip"] = Route(200, b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(PermanentError, match="broken zip"):
        make_loader().load("https://refs.example.test/pack.zip")


@pytest.mark.parametrize(
    "body",
    [b"<html>hello</html>", b"GIF89a....", b"\x89PNG\r\n\x1a\n" + b"0" * 64, PNG[:-20]],
    ids=["html", "gif", "png-magic-garbage", "truncated-png"],
)
def test_non_image_is_refused(make_loader: Make, site: SiteServer, body: bytes) -> None:
    site.routes["/x"] = Route(200, body)
    with pytest.raises(PermanentError, match="is not a usable image, zip or JSON manifest"):
        make_loader().load("https://refs.example.test/x")


def test_image_over_the_pixel_limit_is_refused(make_loader: Make, site: SiteServer) -> None:
    site.routes["/huge.png"] = Route(200, png_bytes(size=(200, 200)))
    with pytest.raises(PermanentError, match="200x200 pixels exceed the limit of 10000"):
        make_loader(max_pixels=10_000).load("https://refs.example.test/huge.png")


def test_manifest_of_https_and_gs_images(
    make_loader: Make, site: SiteServer, objects: FakeObjectStore
) -> None:
    objects.put(IMAGES_BUCKET, "refs/b.jpg", JPEG, "image/jpeg")
    site.routes["/a.png"] = Route(200, PNG)
    manifest = {"images": ["https://cdn.example.test/a.png", f"gs://{IMAGES_BUCKET}/refs/b.jpg"]}
    site.routes["/m.json"] = Route(200, json.dumps(manifest).encode())
    images = make_loader().load("https://refs.example.test/m.json")
    assert [(i.data, i.mime_type) for i in images] == [(PNG, "image/png"), (JPEG, "image/jpeg")]


def test_manifest_items_are_guarded_too(
    make_loader: Make, site: SiteServer, network: Network, counter: Counter
) -> None:
    for items in (
        [f"https://127.0.0.1:{counter.port}/a.png"],
        ["http://cdn.example.test/a.png"],
        ["file:///etc/passwd"],
        ["https://169.254.169.254/computeMetadata/v1/"],
    ):
        site.routes["/m.json"] = Route(200, json.dumps(items).encode())
        with pytest.raises(Refused):
            make_loader().load("https://refs.example.test/m.json")
    assert counter.count == 0
    assert set(network.connects) == {("1.2.3.4", 443)}


def test_manifest_inside_a_manifest_is_refused(make_loader: Make, site: SiteServer) -> None:
    site.routes["/m.json"] = Route(200, b'["https://cdn.example.test/n.json"]')
    site.routes["/n.json"] = Route(200, b'["https://cdn.example.test/a.png"]')
    with pytest.raises(PermanentError, match="manifest inside a manifest"):
        make_loader().load("https://refs.example.test/m.json")


@pytest.mark.parametrize("body", [b"{not json", b'{"images": "a.png"}', b"[1, 2]"])
def test_malformed_manifest_is_permanent(make_loader: Make, site: SiteServer, body: bytes) -> None:
    site.routes["/m.json"] = Route(200, body)
    with pytest.raises(PermanentError, match="manifest"):
        make_loader().load("https://refs.example.test/m.json")


def test_gs_pack_is_read_from_our_bucket_only(
    make_loader: Make, objects: FakeObjectStore, network: Network
) -> None:
    objects.put(IMAGES_BUCKET, "refs/pack.zip", zip_of({"a.png": PNG}))
    loader = make_loader()
    assert [i.data for i in loader.load(f"gs://{IMAGES_BUCKET}/refs/pack.zip")] == [PNG]
    with pytest.raises(PermanentError, match="not found or not allowed"):
        loader.load(f"gs://{IMAGES_BUCKET}/refs/missing.png")
    with pytest.raises(PermanentError, match=f"only gs://{IMAGES_BUCKET}/ can be read"):
        loader.load("gs://someone-elses-bucket/a.png")
    assert network.connects == []


def test_a_pack_is_fetched_once_then_revalidated_with_its_etag(
    make_loader: Make, site: SiteServer, ticker: Ticker
) -> None:
    site.routes["/pack.zip"] = Route(200, zip_of({"a.png": PNG}), {"ETag": '"v1"'})
    loader = make_loader(fresh_s=60)
    url = "https://refs.example.test/pack.zip"
    for _ in range(5):
        assert [i.data for i in loader.load(url)] == [PNG]
    assert site.hits("/pack.zip") == 1

    ticker.now += 61
    assert [i.data for i in loader.load(url)] == [PNG]
    assert site.hits("/pack.zip") == 2
    assert site.seen[-1][1].get("If-None-Match") == '"v1"'  # answered 304, no body

    # The pack changed: a new ETag, new images.
    site.routes["/pack.zip"] = Route(200, zip_of({"a.png": JPEG}), {"ETag": '"v2"'})
    ticker.now += 61
    assert [i.data for i in loader.load(url)] == [JPEG]
    ticker.now += 61
    loader.load(url)
    assert site.seen[-1][1].get("If-None-Match") == '"v2"'


def test_last_modified_is_sent_back_as_if_modified_since(
    make_loader: Make, site: SiteServer, ticker: Ticker
) -> None:
    stamp = "Wed, 01 Jan 2031 00:00:00 GMT"
    site.routes["/a.png"] = Route(200, PNG, {"Last-Modified": stamp})
    loader = make_loader(fresh_s=0)
    loader.load("https://refs.example.test/a.png")
    loader.load("https://refs.example.test/a.png")
    assert site.seen[-1][1].get("If-Modified-Since") == stamp


def test_cache_is_bounded_in_bytes_and_drops_the_least_recently_used(
    make_loader: Make, site: SiteServer
) -> None:
    first, second = png_bytes(size=(40, 40), color=(1, 1, 1)), png_bytes(size=(40, 40))
    site.routes["/1.png"] = Route(200, first)
    site.routes["/2.png"] = Route(200, second)
    loader = make_loader(cache_bytes=len(first) + len(second) + 2 * ENTRY_OVERHEAD - 1)
    loader.load("https://refs.example.test/1.png")
    loader.load("https://refs.example.test/2.png")  # evicts 1
    loader.load("https://refs.example.test/2.png")
    loader.load("https://refs.example.test/1.png")
    assert (site.hits("/1.png"), site.hits("/2.png")) == (2, 1)


def load_at_once(loader: PackReferenceLoader, url: str, times: int = 4) -> None:
    threads = [threading.Thread(target=loader.load, args=(url,)) for _ in range(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)


def test_concurrent_loads_of_one_pack_fetch_it_once(make_loader: Make, site: SiteServer) -> None:
    site.routes["/a.png"] = Route(200, PNG, delay_s=0.2)
    load_at_once(make_loader(), "https://refs.example.test/a.png")
    assert site.hits("/a.png") == 1


def test_failed_fetch_is_not_cached(make_loader: Make, site: SiteServer) -> None:
    site.routes["/a.png"] = Route(503, b"busy")
    loader = make_loader()
    with pytest.raises(TransientError):
        loader.load("https://refs.example.test/a.png")
    site.routes["/a.png"] = Route(200, PNG)
    assert [i.data for i in loader.load("https://refs.example.test/a.png")] == [PNG]


def test_validators_send_nothing_when_empty() -> None:
    assert Validators().headers() == {}
    assert not Validators()
    assert Validators(etag='"x"').headers() == {"If-None-Match": '"x"'}


# --------------------------------------------------------------------------- hostile packs


def declare_sizes(pack: bytes, sizes: dict[str, int]) -> bytes:
    """``pack`` with the uncompressed sizes its headers declare replaced (a lying zip)."""
    data = bytearray(pack)
    with zipfile.ZipFile(io.BytesIO(pack)) as archive:
        for info in archive.infolist():
            if info.filename in sizes:
                struct.pack_into("<I", data, info.header_offset + 22, sizes[info.filename])
    eocd = data.rfind(b"PK\x05\x06")
    (position,) = struct.unpack_from("<I", data, eocd + 16)
    while data[position : position + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<3H", data, position + 28)
        name = bytes(data[position + 46 : position + 46 + name_len]).decode()
        if name in sizes:
            struct.pack_into("<I", data, position + 24, sizes[name])
        position += 46 + name_len + extra_len + comment_len
    return bytes(data)


def packed(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A zip of ``{name: (content, compression method)}``."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, (data, method) in files.items():
            archive.writestr(name, data, compress_type=method)
    return out.getvalue()


def test_a_member_that_inflates_past_its_declared_size_fails_the_pack(
    make_loader: Make, site: SiteServer
) -> None:
    # 50 MB of zeros deflate to ~50 KB; the headers say 1000 bytes.
    bomb = packed({"a.png": (PNG, zipfile.ZIP_STORED), "b.png": (b"\0" * 50 * MB, DEFLATED)})
    site.routes["/pack.zip"] = Route(200, declare_sizes(bomb, {"b.png": 1000}))
    with pytest.raises(PermanentError, match=r"pack\.zip!b\.png does not match what it declares"):
        make_loader(max_bytes=MB).load("https://refs.example.test/pack.zip")


def test_a_member_that_holds_less_than_it_declares_fails_the_pack(
    make_loader: Make, site: SiteServer
) -> None:
    lying = declare_sizes(packed({"a.png": (PNG, zipfile.ZIP_STORED)}), {"a.png": 5000})
    site.routes["/pack.zip"] = Route(200, lying)
    with pytest.raises(PermanentError, match=rf"a\.png declares 5000 bytes but holds {len(PNG)}"):
        make_loader().load("https://refs.example.test/pack.zip")


@pytest.mark.parametrize(("method", "number"), [(zipfile.ZIP_BZIP2, 12), (zipfile.ZIP_LZMA, 14)])
def test_compression_methods_that_cannot_be_bounded_are_refused(
    make_loader: Make, site: SiteServer, method: int, number: int
) -> None:
    # A few hundred bytes of bzip2 inflate to 20 MB in one call; zipfile cannot cap it.
    bomb = packed({"a.png": (PNG, zipfile.ZIP_STORED), "b.png": (b"\0" * 20 * MB, method)})
    site.routes["/pack.zip"] = Route(200, declare_sizes(bomb, {"b.png": 1000}))
    with pytest.raises(PermanentError, match=f"b.png is compressed with zip method {number}; only"):
        make_loader(max_images=3).load("https://refs.example.test/pack.zip")


def test_a_pack_with_too_many_members_is_refused(make_loader: Make, site: SiteServer) -> None:
    site.routes["/pack.zip"] = Route(200, zip_of({f"{n:02}.png": PNG for n in range(9)}))
    with pytest.raises(PermanentError, match="has more than 8 members"):
        make_loader(max_members=8).load("https://refs.example.test/pack.zip")
    site.routes["/ok.zip"] = Route(200, zip_of({f"{n:02}.png": PNG for n in range(8)}))
    assert len(make_loader(max_members=8).load("https://refs.example.test/ok.zip")) == 3


def test_the_bytes_unpacked_from_a_pack_are_capped(make_loader: Make, site: SiteServer) -> None:
    notes = {f"{n}-notes.txt": b"x" * 400_000 for n in range(3)}
    site.routes["/pack.zip"] = Route(200, zip_of({**notes, "z.png": PNG}))
    with pytest.raises(PermanentError, match="members unpack to more than 1000000 bytes"):
        make_loader(max_unpacked_bytes=1_000_000).load("https://refs.example.test/pack.zip")


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000, b'{"images": ' * 50_000, b"[" * 100_000 + b"]" * 100_000],
    ids=["lists", "objects", "closed"],
)
def test_a_deeply_nested_manifest_is_permanent(
    make_loader: Make, site: SiteServer, body: bytes
) -> None:
    site.routes["/m.json"] = Route(200, body)
    with pytest.raises(PermanentError, match="nested too deeply"):
        make_loader().load("https://refs.example.test/m.json")


def test_mangled_zips_fail_permanently_and_never_otherwise(
    make_loader: Make, objects: FakeObjectStore
) -> None:
    base = zip_of({"a.png": png_bytes(size=(8, 8)), "b.txt": b"hello" * 20})
    loader = make_loader()
    reasons: list[str] = []
    for seed in range(300):
        rng = random.Random(seed)
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(4, len(data))] = rng.randrange(256)
        objects.put(IMAGES_BUCKET, f"refs/fuzz-{seed}.zip", bytes(data))
        try:
            loader.load(f"gs://{IMAGES_BUCKET}/refs/fuzz-{seed}.zip")
        except PermanentError as exc:
            reasons.append(str(exc))
    # Parsers fail in ways no list foresees (a negative seek, say): each is recorded.
    assert any("could not be read: ValueError: negative seek" in r for r in reasons)


@pytest.fixture
def references(make_loader: Make) -> PackReferenceLoader:
    """The generation service's loader, for the tests below: the production one."""
    return make_loader()


HOSTILE_PACKS = {
    "lying size": (
        declare_sizes(packed({"b.png": (b"\0" * 5 * MB, DEFLATED)}), {"b.png": 1000}),
        "does not match what it declares",
    ),
    "bzip2 member": (packed({"b.png": (b"\0" * MB, zipfile.ZIP_BZIP2)}), "zip method 12"),
    "deep manifest": (b"[" * 100_000, "nested too deeply"),
    "mangled zip": (zip_of({"a.png": PNG})[:-30] + b"PK\x05\x06" + b"\xff" * 26, "zip"),
}


@pytest.mark.parametrize("pack", list(HOSTILE_PACKS))
def test_a_hostile_pack_fails_its_job_with_the_reason_and_is_acknowledged(
    make_generation: Callable[..., Generation],
    store: FakeJobStore,
    generator: FakeImageGenerator,
    site: SiteServer,
    pack: str,
) -> None:
    body, reason = HOSTILE_PACKS[pack]
    site.routes["/pack"] = Route(200, body)
    store.add(make_job(ref_pack_public_url="https://refs.example.test/pack"))
    make_generation().handle(JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001"))
    job = store.job("job_1")
    assert job.state == JobState.FAILED
    assert reason in (job.error or ""), job.error
    assert generator.calls == []


# --------------------------------------------------------------------------- gs:// access


def test_gs_objects_outside_the_references_prefix_are_not_found_or_not_allowed(
    make_loader: Make, objects: FakeObjectStore
) -> None:
    objects.put(IMAGES_BUCKET, "refs/a.png", PNG)
    objects.put(IMAGES_BUCKET, "refs/big.png", b"x" * 2000)
    objects.put(IMAGES_BUCKET, "images/sc-001/job_b/var_1.png", PNG)  # another caller's image
    loader = make_loader(max_bytes=1000, max_images=1)
    assert [i.data for i in loader.load(f"gs://{IMAGES_BUCKET}/refs/a.png")] == [PNG]
    answers = set()
    for name in (
        "images/sc-001/job_b/var_1.png",  # exists, not allowed
        "images/sc-001/job_b/var_9.png",  # does not exist, not allowed
        "refs/missing.png",  # allowed, does not exist
        "refs/big.png",  # allowed, exists, too big
        "refs/../images/sc-001/job_b/var_1.png",
        "refs//a.png",
    ):
        url = f"gs://{IMAGES_BUCKET}/{name}"
        with pytest.raises(PermanentError) as info:
            loader.load(url)
        answers.add(str(info.value).replace(url, "<url>"))
    # One answer for all: it tells neither existence nor size.
    assert answers == {
        f"reference <url>: not found or not allowed (readable: objects under "
        f"gs://{IMAGES_BUCKET}/refs/ of at most 1000 bytes)"
    }
    assert ("read", IMAGES_BUCKET, "images/sc-001/job_b/var_1.png") not in objects.calls


def test_manifest_items_cannot_name_other_callers_outputs(
    make_loader: Make, site: SiteServer, objects: FakeObjectStore
) -> None:
    objects.put(IMAGES_BUCKET, "images/sc-001/job_b/var_1.png", PNG)
    site.routes["/m.json"] = Route(
        200, f'["gs://{IMAGES_BUCKET}/images/sc-001/job_b/var_1.png"]'.encode()
    )
    with pytest.raises(PermanentError, match="not found or not allowed"):
        make_loader().load("https://refs.example.test/m.json")


# --------------------------------------------------------------------------- bounded maps


def test_per_url_locks_last_only_while_loads_are_in_flight(
    make_loader: Make, site: SiteServer
) -> None:
    site.routes["/a.png"] = Route(200, PNG)
    loader = make_loader(fresh_s=0)
    for n in range(50):
        with contextlib.suppress(PermanentError):
            loader.load(f"https://refs.example.test/missing-{n}.png")
    load_at_once(loader, "https://refs.example.test/a.png")
    assert loader._url_locks == {}


def test_the_cache_counts_entries_that_hold_nothing(make_loader: Make, site: SiteServer) -> None:
    loader = make_loader(cache_bytes=10 * ENTRY_OVERHEAD)
    for n in range(50):
        site.routes[f"/empty-{n}.json"] = Route(200, b"[]")
        with pytest.raises(PermanentError, match="holds no PNG"):
            loader.load(f"https://refs.example.test/empty-{n}.json")
    assert len(loader._cache) == 10
