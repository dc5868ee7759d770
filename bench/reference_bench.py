"""Hostile reference packs against the reference loader (issue 11): outcome, time, memory.

    .venv/bin/python -m bench.reference_bench [--timeout 5] [--only NAME ...]

Every pack is loaded by the production ``PackReferenceLoader`` and
``SafeFetcher`` (only name resolution and the TCP connect are swapped, as in
the unit tests: made-up names resolve to a made-up public address, and the
connector carries it to a TLS server on loopback run by this process). Each
pack is loaded in a fresh child process, so the peak memory reported (the
child's ``ru_maxrss``) is that pack's alone; "growth" is the peak minus the
child's peak just before the load (Python, Pillow and the loader imported).

The limits are the settings' defaults (REFERENCE_MAX_BYTES x
REFERENCE_MAX_IMAGES fetched, REFERENCE_MAX_UNPACKED_BYTES unpacked, 64 zip
members), but for REFERENCE_TIMEOUT_S, ``--timeout`` (default 5 s, so that the
slow packs do not take minutes; production's default is 20 s).
Targets: wall time <= the timeout + 1 s; memory growth <= what a pack may hold
+ a small constant. "may hold" is the fetch cap for what is never unpacked, the
fetch cap plus the unpacked cap for zips, and for an image at the pixel limit
the fetch cap plus its decode (IMAGE_MAX_PIXELS x 4 bytes: that bound is the
pixel limit's, not the pack's).

Everything is served on 127.0.0.1; every server loop ends when the client
hangs up or after ``SERVE_AT_MOST_S``. Reports figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
HOST = "refs.bench.test"
PUBLIC_ADDRESS = "1.2.3.4"  # what HOST resolves to; never connected to
HANDSHAKE_ADDRESS = "1.2.3.5"  # the host whose TLS handshake crawls
SERVE_AT_MOST_S = 120.0


# --------------------------------------------------------------------------- packs


def _deflate_stream(size: int, method: int) -> bytes:
    """A zip holding one member of ``size`` zero bytes, written as it streams."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        info = zipfile.ZipInfo("b.png")
        info.compress_type = method
        with archive.open(info, "w", force_zip64=size >= 2**31) as member:
            block = b"\0" * MIB
            for _ in range(size // MIB):
                member.write(block)
    return out.getvalue()


def _declare(pack: bytes, size: int) -> bytes:
    """``pack`` with every member's declared uncompressed size replaced by ``size``."""
    data = bytearray(pack)
    with zipfile.ZipFile(io.BytesIO(pack)) as archive:
        for info in archive.infolist():
            struct.pack_into("<I", data, info.header_offset + 22, size)
    position = struct.unpack_from("<I", data, data.rfind(b"PK\x05\x06") + 16)[0]
    while data[position : position + 4] == b"PK\x01\x02":
        struct.pack_into("<I", data, position + 24, size)
        name, extra, comment = struct.unpack_from("<3H", data, position + 28)
        position += 46 + name + extra + comment
    return bytes(data)


def _many_members(count: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for n in range(count):
            archive.writestr(f"{n:06}.txt", b"")
    return out.getvalue()


def _members_of_zeros(count: int, size: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for n in range(count):
            archive.writestr(f"{n}.bin", b"\0" * size)
    return out.getvalue()


def _stored_noise(count: int, size: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for n in range(count):
            archive.writestr(f"{n}.bin", os.urandom(size))
    return out.getvalue()


def _png(size: tuple[int, int] = (16, 16)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


@dataclass
class Route:
    """How the loopback server answers one path."""

    body: bytes = b""
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    dribble_s: float = 0.0  # seconds between bytes of a crawling answer
    dribble_from: str = "status"  # "status": everything crawls; "body": after the headers
    endless: bool = False  # crawl forever (until the client hangs up)
    chunked_stream: bool = False  # a chunked body streamed fast, without end


@dataclass
class Pack:
    name: str
    what: str
    url: str
    routes: Callable[[], dict[str, Route]]
    holds: str = "fetch+unpacked"  # which caps bound what the pack may hold in memory


def _square_at_most(pixels: int) -> tuple[int, int]:
    side = int(pixels**0.5)
    return side, pixels // side


def _routes(path: str, route: Route) -> Callable[[], dict[str, Route]]:
    return lambda: {path: route}


def packs(limits: Any) -> list[Pack]:
    """The hostile packs, built lazily (some take seconds to compress)."""
    url = f"https://{HOST}"
    gib = 1024 * MIB
    return [
        Pack(
            "deflate-lie",
            "1 GiB of zeros deflated (~1 MiB), declared 1000 bytes",
            f"{url}/deflate-lie.zip",
            lambda: {"/deflate-lie.zip": Route(_declare(_deflate_stream(gib, 8), 1000))},
        ),
        Pack(
            "bzip2-lie",
            "1 GiB of zeros in bzip2, declared 1000 bytes",
            f"{url}/bzip2-lie.zip",
            lambda: {"/bzip2-lie.zip": Route(_declare(_deflate_stream(gib, 12), 1000))},
        ),
        Pack(
            "lzma-lie",
            "256 MiB of zeros in LZMA, declared 1000 bytes",
            f"{url}/lzma-lie.zip",
            lambda: {"/lzma-lie.zip": Route(_declare(_deflate_stream(256 * MIB, 14), 1000))},
        ),
        Pack(
            "honest-bomb",
            "1 GiB of zeros deflated, declared as 1 GiB",
            f"{url}/honest-bomb.zip",
            lambda: {"/honest-bomb.zip": Route(_deflate_stream(gib, 8))},
        ),
        Pack(
            "many-members",
            "100,000 empty members (central directory ~8 MiB)",
            f"{url}/many.zip",
            lambda: {"/many.zip": Route(_many_members(100_000))},
        ),
        Pack(
            "unpacked-total",
            "8 deflated members of 6 MiB zeros each (48 MiB unpacked)",
            f"{url}/total.zip",
            lambda: {"/total.zip": Route(_members_of_zeros(8, 6 * MIB))},
        ),
        Pack(
            "largest-allowed",
            "a zip just under the fetch cap: 3 stored members of noise",
            f"{url}/largest.zip",
            lambda: {
                "/largest.zip": Route(_stored_noise(3, limits.fetch_cap // 3 - 4096)),
            },
        ),
        Pack(
            "pixels-at-the-limit",
            "one PNG of one colour with IMAGE_MAX_PIXELS pixels (a few hundred KB)",
            f"{url}/pixels.png",
            lambda: {"/pixels.png": Route(_png(_square_at_most(limits.max_pixels)))},
            holds="pixels",
        ),
        Pack(
            "endless-body",
            "a chunked body streamed fast without end",
            f"{url}/endless",
            _routes("/endless", Route(chunked_stream=True)),
            holds="fetch",
        ),
        Pack(
            "deep-manifest",
            "a JSON manifest of 1 MiB of '['",
            f"{url}/deep.json",
            _routes("/deep.json", Route(b"[" * MIB)),
            holds="fetch",
        ),
        Pack(
            "crawl-headers",
            "headers a byte every 100 ms, without end",
            f"{url}/crawl-headers",
            _routes("/crawl-headers", Route(dribble_s=0.1, endless=True)),
            holds="fetch",
        ),
        Pack(
            "crawl-body",
            "a 7 MiB body announced, sent a byte every 50 ms",
            f"{url}/crawl-body",
            _routes(
                "/crawl-body",
                Route(b"\0" * 7 * MIB, dribble_s=0.05, dribble_from="body"),
            ),
            holds="fetch",
        ),
        Pack(
            "crawl-handshake",
            "a TLS record header, then a byte every 100 ms",
            "https://handshake.bench.test/pack.zip",
            dict,
            holds="fetch",
        ),
        Pack(
            "crawl-redirects",
            "redirect hops of ~40 bytes each, a byte every 40 ms (1.6 s a hop)",
            f"{url}/hop/0",
            lambda: {
                f"/hop/{n}": Route(
                    status=302, headers=(("Location", f"/hop/{n + 1}"),), dribble_s=0.04
                )
                for n in range(11)
            },
            holds="fetch",
        ),
        Pack(
            "crawl-manifest-items",
            "a manifest of 3 PNGs, each crawling at a byte every 25 ms (~3 s each)",
            f"{url}/items.json",
            lambda: {
                "/items.json": Route(json.dumps([f"{url}/item/{n}" for n in range(3)]).encode()),
                **{f"/item/{n}": Route(_png(), dribble_s=0.025) for n in range(3)},
            },
            holds="fetch",
        ),
    ]


# --------------------------------------------------------------------------- loopback servers


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, routes: dict[str, Route]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes = routes

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients the loader hangs up on are the point


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.close_connection = True
        route = self.server.routes.get(self.path, Route(b"no such pack", 404))
        lines = [f"HTTP/1.1 {route.status} Bench", *(f"{k}: {v}" for k, v in route.headers)]
        if route.chunked_stream:
            lines.append("Transfer-Encoding: chunked")
        elif not route.endless:
            lines.append(f"Content-Length: {len(route.body)}")
        head = ("\r\n".join(lines) + "\r\n" + ("" if route.endless else "\r\n")).encode()
        deadline = time.monotonic() + SERVE_AT_MOST_S
        if route.chunked_stream:
            self.wfile.write(head)
            piece = b"%x\r\n%s\r\n" % (MIB, b"x" * MIB)
            while time.monotonic() < deadline:
                self.wfile.write(piece)
            return
        if not route.dribble_s:
            self.wfile.write(head + route.body)
            return
        at_once, slowly = (
            (head, route.body) if route.dribble_from == "body" else (b"", head + route.body)
        )
        self.wfile.write(at_once)
        for byte in _bytes(slowly, route.endless):
            if time.monotonic() > deadline:
                return
            self.wfile.write(byte)
            time.sleep(route.dribble_s)


def _bytes(data: bytes, endless: bool) -> Iterator[bytes]:
    """The bytes of ``data`` one at a time, then (endless) a header line that never ends."""
    for i in range(len(data)):
        yield data[i : i + 1]
    if endless:
        yield from iter(lambda: b"x", None)


def _crawl_handshake(listener: socket.socket) -> None:
    """Accept TLS clients and answer a record header, then a byte every 100 ms."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_crawl_one, args=(conn,), daemon=True).start()


def _crawl_one(conn: socket.socket) -> None:
    deadline = time.monotonic() + SERVE_AT_MOST_S
    with conn:
        try:
            conn.sendall(b"\x16\x03\x03\x40\x00")  # a handshake record of 16 KiB follows...
            while time.monotonic() < deadline:
                conn.sendall(b"\x02")
                time.sleep(0.1)
        except OSError:
            return


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for the bench's names, trusted as its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


# --------------------------------------------------------------------------- the child: one load


def _limits(timeout_s: float) -> Any:
    from shared.adapters.references import PackLimits
    from shared.config.settings import Settings

    default = {name: field.default for name, field in Settings.model_fields.items()}
    return PackLimits(
        max_bytes=default["reference_max_bytes"],
        max_images=default["reference_max_images"],
        max_pixels=default["image_max_pixels"],
        timeout_s=timeout_s,
        cache_bytes=default["reference_cache_bytes"],
        fresh_s=default["reference_cache_fresh_s"],
        max_members=default["reference_max_zip_members"],
        max_unpacked_bytes=default["reference_max_unpacked_bytes"],
        gcs_prefix=default["references_prefix"],
    )


class _NoObjects:
    """The object store port: the bench reads only https:// packs."""

    def find(self, bucket: str, prefix: str) -> None:
        return None

    def create(self, *args: Any) -> bool:
        raise NotImplementedError

    def read(self, bucket: str, name: str, max_bytes: int) -> bytes:
        from shared.domain.errors import NotFound

        raise NotFound(name)

    def signed_url(self, bucket: str, name: str, ttl_s: int) -> str:
        raise NotImplementedError


def _status(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    # VmHWM is this address space's peak RSS; writing 5 to clear_refs resets it
    # to the current RSS (ru_maxrss would also count the parent's RSS before exec).
    Path("/proc/self/clear_refs").write_text("5")


def child(args: argparse.Namespace) -> None:
    """Load one URL as the generate function would; print what happened as JSON."""
    from shared.adapters.netguard import SafeFetcher
    from shared.adapters.references import PackReferenceLoader
    from shared.domain.errors import PermanentError, TransientError

    def resolve(host: str, port: int) -> list[str]:
        return [HANDSHAKE_ADDRESS if host.startswith("handshake.") else PUBLIC_ADDRESS]

    def connect(address: str, port: int, timeout_s: float) -> socket.socket:
        target = {PUBLIC_ADDRESS: args.port, HANDSHAKE_ADDRESS: args.handshake_port}[address]
        return socket.create_connection(("127.0.0.1", target), timeout=timeout_s)

    limits = _limits(args.timeout)
    tls = ssl.create_default_context(cafile=args.cafile)
    loader = PackReferenceLoader(
        _NoObjects(), "bench-bucket", SafeFetcher(resolve, connect, tls), limits
    )
    _reset_peak()
    before = _status("VmRSS")
    started = time.monotonic()
    try:
        images = loader.load(args.url)
        outcome = f"ok: {len(images)} image(s)"
    except PermanentError as exc:
        outcome = f"permanent: {exc}"
    except TransientError as exc:
        outcome = f"transient: {exc}"
    wall = time.monotonic() - started
    report = {"outcome": outcome, "wall_s": wall, "before": before, "peak": _status("VmHWM")}
    print(json.dumps(report))


# --------------------------------------------------------------------------- the parent: all packs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=5.0, help="REFERENCE_TIMEOUT_S")
    parser.add_argument("--only", nargs="*", help="pack names")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--handshake-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cafile", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    limits = _limits(args.timeout)
    chosen = [p for p in packs(limits) if not args.only or p.name in args.only]
    folder = Path(tempfile.mkdtemp(prefix="reference-bench-"))
    cert_file, key_file = _self_signed(folder)
    routes: dict[str, Route] = {}
    print(f"building {len(chosen)} packs...", file=sys.stderr)
    for pack in chosen:
        built = pack.routes()
        routes.update(built)
        sizes = ", ".join(f"{len(r.body) / MIB:.2f} MiB" for r in built.values() if r.body)
        print(f"  {pack.name}: {sizes or 'streamed'}", file=sys.stderr)

    server = _Server(routes)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_crawl_handshake, args=(listener,), daemon=True).start()

    holds = {
        "fetch": limits.fetch_cap,
        "fetch+unpacked": limits.fetch_cap + limits.unpacked_cap,
        # Pillow keeps RGB as 4 bytes a pixel; IMAGE_MAX_PIXELS bounds a decode, not the pack.
        "pixels": limits.fetch_cap + 4 * limits.max_pixels,
    }
    print(
        f"limits: REFERENCE_TIMEOUT_S {args.timeout:g} s, "
        f"fetch cap {limits.fetch_cap / MIB:g} MiB, "
        f"unpacked cap {limits.unpacked_cap / MIB:g} MiB, {limits.max_members} members"
    )
    columns = ("pack", "wall s", "limit s", "peak MiB", "growth", "may hold")
    header = "{:22} {:>7} {:>7} {:>9} {:>7} {:>8}  outcome".format(*columns)
    print(header)
    print("-" * len(header))
    try:
        for pack in chosen:
            command = [
                sys.executable,
                "-m",
                "bench.reference_bench",
                "--child",
                "--url",
                pack.url,
                "--timeout",
                str(args.timeout),
                "--port",
                str(server.server_address[1]),
                "--handshake-port",
                str(listener.getsockname()[1]),
                "--cafile",
                str(cert_file),
            ]
            done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
            if done.returncode != 0:
                print(f"{pack.name:22} child failed ({done.returncode}): {done.stderr[-400:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            growth = (r["peak"] - r["before"]) / MIB
            print(
                f"{pack.name:22} {r['wall_s']:7.2f} {args.timeout:7g} {r['peak'] / MIB:9.1f} "
                f"{growth:7.1f} {holds[pack.holds] / MIB:8.0f}  {r['outcome'][:150]}"
            )
    finally:
        server.shutdown()
        server.server_close()
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
