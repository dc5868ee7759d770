"""ReferenceLoader: one image, a zip of images or a JSON manifest of image URLs.

``gs://<images bucket>/<references prefix>...`` is read from our own bucket
with our credentials (earlier outputs are referenced through style anchors,
which check who may see them); ``https://`` goes through the SSRF guard
(``shared.adapters.netguard``). Every image is decoded by Pillow under a format
allowlist and a pixel limit before Gemini sees it, and a pack holds at most
``max_images`` of them.

Packs are untrusted input, so reading one is bounded whatever it claims: one
deadline for all its fetches, a cap on fetched bytes, on zip members and on
the bytes unpacked from them (counted as they are read, not as declared),
only compression methods that can be inflated a bounded piece at a time. A
pack that breaks a rule, lies about a size, or cannot be parsed at all fails
with ``PermanentError`` and the reason: the same bytes would fail again.

A pack used by many scenes is fetched once per instance: answers are cached by
URL with their validators (ETag, Last-Modified), reused as they are for
``fresh_s`` seconds, then revalidated with a conditional request (``gs://``
objects, read through a port without validators, are read again instead); the
cache is bounded in bytes and drops the least recently used first.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from shared.adapters.image_check import image_mime
from shared.adapters.netguard import SafeFetcher, Validators
from shared.domain.errors import NotAnImage, NotFound, PermanentError, PipelineError, TransientError
from shared.services.ports import ObjectStore, ReferenceImage

# Methods zipfile inflates a bounded piece at a time (deflate's decompressor
# takes a max_length); it inflates bzip2 and LZMA input a whole chunk at once,
# and a few KB of bzip2 can become gigabytes.
BOUNDED_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
# Every central-directory entry starts with this signature, so counting it in
# the pack bounds how many entries zipfile can parse, before it parses them.
_CENTRAL_ENTRY = b"PK\x01\x02"
# What reading a corrupt, encrypted or exotic zip raises.
_BROKEN_ZIP = (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, zlib.error, EOFError)
# Bytes a cache entry costs beyond its content, so empty entries still count.
ENTRY_OVERHEAD = 1024


@dataclass(frozen=True)
class PackLimits:
    max_bytes: int  # one image (and one fetched file, times max_images for a zip)
    max_images: int
    max_pixels: int
    timeout_s: float  # one deadline for the whole pack: every fetch, redirects included
    cache_bytes: int
    fresh_s: float
    max_members: int = 64  # zip entries a pack may have
    max_unpacked_bytes: int = 0  # all members read from one zip; 0: max_bytes x max_images
    gcs_prefix: str = "refs/"  # gs:// objects readable by every caller ("" for none)

    @property
    def fetch_cap(self) -> int:
        return self.max_bytes * max(1, self.max_images)

    @property
    def unpacked_cap(self) -> int:
        return self.max_unpacked_bytes or self.fetch_cap


@dataclass
class _Entry:
    """What one URL held: images, or the item URLs of a manifest."""

    images: list[ReferenceImage]
    items: list[str] | None
    validators: Validators
    size: int
    checked_at: float


class PackReferenceLoader:
    def __init__(
        self,
        objects: ObjectStore,
        bucket: str,
        fetcher: SafeFetcher,
        limits: PackLimits,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._objects = objects
        self._bucket = bucket
        self._fetcher = fetcher
        self._limits = limits
        self._clock = clock
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        # One fetch per URL at a time: concurrent jobs wait and share the answer.
        # An entry lives while someone holds or waits for it, so the map stays
        # as small as the number of loads in flight.
        self._url_locks: dict[str, tuple[threading.Lock, int]] = {}

    def load(self, url: str) -> list[ReferenceImage]:
        """The pack's images, at most ``max_images`` of them."""
        if self._limits.max_images == 0:
            return []
        deadline = time.monotonic() + self._limits.timeout_s
        top = self._entry(url, True, deadline)
        images = list(top.images)
        for item in (top.items or [])[: self._limits.max_images]:
            images += self._entry(item, False, deadline).images
        if not images:
            raise PermanentError(f"reference pack {url} holds no PNG, JPEG or WebP image")
        return images[: self._limits.max_images]

    # ------------------------------------------------------------------ cache
    def _entry(self, url: str, manifest_allowed: bool, deadline: float) -> _Entry:
        # Checked before the cache, so a cached object never skips the check.
        name = self._gcs_name(url) if url.startswith("gs://") else None
        with self._url_lock(url, deadline):
            with self._lock:
                cached = self._cache.get(url)
                if cached is not None:
                    self._cache.move_to_end(url)
            if cached is not None and self._clock() - cached.checked_at < self._limits.fresh_s:
                entry = cached
            else:
                entry = self._refresh(url, name, cached, deadline)
        if entry.items is not None and not manifest_allowed:
            raise PermanentError(f"reference {url} is a manifest inside a manifest")
        return entry

    @contextmanager
    def _url_lock(self, url: str, deadline: float) -> Iterator[None]:
        with self._lock:
            lock, users = self._url_locks.get(url, (threading.Lock(), 0))
            self._url_locks[url] = (lock, users + 1)
        try:
            # Another load of this URL keeps to its own deadline; ours may be shorter.
            if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise TransientError(f"reference {url}: another load of it took too long")
            try:
                yield
            finally:
                lock.release()
        finally:
            with self._lock:
                lock, users = self._url_locks[url]
                if users == 1:
                    del self._url_locks[url]
                else:
                    self._url_locks[url] = (lock, users - 1)

    def _refresh(
        self, url: str, name: str | None, cached: _Entry | None, deadline: float
    ) -> _Entry:
        if name is not None:
            try:
                data = self._objects.read(self._bucket, name, self._limits.fetch_cap)
            except (NotFound, PermanentError) as exc:
                # The same answer whether it is missing, elsewhere or too big:
                # the message must not tell one caller about another's objects.
                raise PermanentError(self._not_allowed(url)) from exc
            entry = self._parse(url, data)
        else:
            try:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TransientError(f"reference {url}: no time left")
                fetched = self._fetcher.get(
                    url,
                    self._limits.fetch_cap,
                    remaining,
                    cached.validators if cached is not None else None,
                )
            except TransientError as exc:
                if time.monotonic() < deadline:
                    raise
                # Name the pack's limit, not the part of it this fetch had left.
                raise TransientError(
                    f"reference {url}: the pack took longer than the "
                    f"{self._limits.timeout_s:g} s allowed"
                ) from exc
            if fetched.not_modified and cached is not None:
                cached.checked_at = self._clock()
                cached.validators = fetched.validators
                return cached
            entry = self._parse(url, fetched.body)
            entry.validators = fetched.validators
        entry.checked_at = self._clock()
        self._store(url, entry)
        return entry

    def _store(self, url: str, entry: _Entry) -> None:
        with self._lock:
            old = self._cache.pop(url, None)
            if old is not None:
                self._cached_bytes -= old.size
            if entry.size > self._limits.cache_bytes:
                return  # too big to keep; it is fetched again next time
            self._cache[url] = entry
            self._cached_bytes += entry.size
            while self._cached_bytes > self._limits.cache_bytes:
                _, dropped = self._cache.popitem(last=False)
                self._cached_bytes -= dropped.size

    # ------------------------------------------------------------------ gs:// access
    def _gcs_name(self, url: str) -> str:
        """The object name of an allowed ``gs://`` reference; PermanentError otherwise."""
        bucket = f"gs://{self._bucket}/"
        if not url.startswith(bucket):
            raise PermanentError(f"reference {url}: only gs://{self._bucket}/ can be read")
        name = url[len(bucket) :]
        parts = name.split("/")
        plain = all(p not in ("", ".", "..") for p in parts) and name.isprintable()
        prefix = self._limits.gcs_prefix
        if not plain or not (prefix and name.startswith(prefix)):
            raise PermanentError(self._not_allowed(url))
        return name

    def _not_allowed(self, url: str) -> str:
        where = f"gs://{self._bucket}/{self._limits.gcs_prefix}" if self._limits.gcs_prefix else ""
        scope = f" (readable: objects under {where} of at most {self._limits.fetch_cap} bytes)"
        return f"reference {url}: not found or not allowed" + (scope if where else "")

    # ------------------------------------------------------------------ content
    def _parse(self, url: str, data: bytes) -> _Entry:
        try:
            return self._parse_content(url, data)
        except (PipelineError, MemoryError):
            raise
        except Exception as exc:
            # Untrusted bytes that make a parser fail will make it fail again:
            # record why instead of raising into a redelivery.
            raise PermanentError(
                f"reference {url} could not be read: {type(exc).__name__}: {exc}"
            ) from exc

    def _parse_content(self, url: str, data: bytes) -> _Entry:
        if data.startswith(b"PK\x03\x04"):
            images = self._from_zip(url, data)
            size = sum(len(i.data) for i in images)
            return _Entry(images, None, Validators(), size + ENTRY_OVERHEAD, 0.0)
        if data.lstrip()[:1] in (b"{", b"["):
            items = _manifest_items(url, data)
            size = sum(len(i) for i in items)
            return _Entry([], items, Validators(), size + ENTRY_OVERHEAD, 0.0)
        return _Entry([self._image(url, data)], None, Validators(), len(data) + ENTRY_OVERHEAD, 0.0)

    def _image(self, where: str, data: bytes) -> ReferenceImage:
        if len(data) > self._limits.max_bytes:
            raise PermanentError(
                f"reference {where} is {len(data)} bytes; the limit is {self._limits.max_bytes}"
            )
        try:
            mime = image_mime(data, self._limits.max_pixels)
        except NotAnImage as exc:
            raise PermanentError(
                f"reference {where} is not a usable image, zip or JSON manifest: {exc}"
            ) from exc
        return ReferenceImage(data=data, mime_type=mime)

    def _from_zip(self, url: str, data: bytes) -> list[ReferenceImage]:
        limits = self._limits
        if data.count(_CENTRAL_ENTRY) > limits.max_members:
            raise PermanentError(
                f"reference zip {url} has more than {limits.max_members} members (the limit)"
            )
        images: list[ReferenceImage] = []
        budget = limits.unpacked_cap
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for info in sorted(archive.infolist(), key=lambda i: i.filename):
                    if info.is_dir() or info.filename.startswith("__MACOSX/"):
                        continue
                    if info.file_size > limits.max_bytes:
                        continue  # too big to be a reference image: never inflated
                    where = f"{url}!{info.filename}"
                    content = _read_member(archive, info, where, budget, limits.unpacked_cap)
                    budget -= len(content)
                    with contextlib.suppress(PermanentError):  # packs may carry a readme
                        images.append(self._image(where, content))
                    # Not kept alive while the next member is read.
                    del content
                    if len(images) >= limits.max_images:
                        break
        except _BROKEN_ZIP as exc:
            raise PermanentError(f"reference pack {url} is a broken zip: {exc}") from exc
        if not images:
            raise PermanentError(f"reference zip {url} holds no usable PNG, JPEG or WebP image")
        return images


def _read_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, budget: int, cap: int
) -> bytes:
    """One member's bytes, never inflating more than it declares or the budget allows."""
    method = BOUNDED_METHODS.get(info.compress_type)
    if method is None:
        raise PermanentError(
            f"reference {where} is compressed with zip method {info.compress_type}; "
            "only stored and deflate members are read"
        )
    if info.file_size > budget:
        raise PermanentError(f"reference zip {where}: the members unpack to more than {cap} bytes")
    try:
        with archive.open(info) as member:
            # zipfile stops at the declared size and checks the CRC there, so one
            # byte more than declared is as far as a lying member can make us read.
            content = member.read(info.file_size + 1)
    except zipfile.BadZipFile as exc:
        raise PermanentError(f"reference {where} does not match what it declares: {exc}") from exc
    if len(content) != info.file_size:
        raise PermanentError(
            f"reference {where} declares {info.file_size} bytes but holds "
            f"{'more' if len(content) > info.file_size else len(content)}"
        )
    return content


def _manifest_items(url: str, data: bytes) -> list[str]:
    try:
        manifest = json.loads(data)
    except RecursionError as exc:
        raise PermanentError(f"reference manifest {url} is nested too deeply") from exc
    except ValueError as exc:
        raise PermanentError(f"reference manifest {url} is not valid JSON: {exc}") from exc
    items = manifest.get("images") if isinstance(manifest, dict) else manifest
    if not isinstance(items, list) or not all(isinstance(u, str) for u in items):
        raise PermanentError(f"reference manifest {url} must list image URLs")
    return list(items)
