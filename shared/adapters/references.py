"""ReferenceLoader: one image, a zip of images or a JSON manifest of image URLs.

``gs://<images bucket>/...`` is read from our own bucket with our credentials;
``https://`` goes through the SSRF guard (``shared.netguard``). Every image is
decoded by Pillow under a format allowlist and a pixel limit before Gemini sees
it, and a pack holds at most ``max_images`` of them.

A pack used by many scenes is fetched once per instance: answers are cached by
URL with their validators (ETag, Last-Modified), reused as they are for
``fresh_s`` seconds, then revalidated with a conditional request (``gs://``
objects, read through a port without validators, are read again instead); the
cache is bounded in bytes and drops the least recently used first.
"""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from shared.errors import NotFound, PermanentError
from shared.imagecheck import NotAnImage, image_mime
from shared.netguard import SafeFetcher, Validators
from shared.ports import ObjectStore, ReferenceImage

# A zip may hold other files; we look at this many members at most.
MAX_ZIP_MEMBERS = 64
# What reading one corrupt, encrypted or exotic zip member raises.
_BROKEN_MEMBER = (zipfile.BadZipFile, RuntimeError, NotImplementedError, zlib.error, EOFError)


@dataclass(frozen=True)
class PackLimits:
    max_bytes: int  # one image (and one fetched file, times max_images for a zip)
    max_images: int
    max_pixels: int
    timeout_s: float  # one fetch, redirects included
    cache_bytes: int
    fresh_s: float


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
        self._url_locks: dict[str, threading.Lock] = {}

    def load(self, url: str) -> list[ReferenceImage]:
        if self._limits.max_images == 0:
            return []
        top = self._entry(url, manifest_allowed=True)
        images = list(top.images)
        for item in (top.items or [])[: self._limits.max_images]:
            images += self._entry(item, manifest_allowed=False).images
        if not images:
            raise PermanentError(f"reference pack {url} holds no PNG, JPEG or WebP image")
        return images[: self._limits.max_images]

    # ------------------------------------------------------------------ cache
    def _entry(self, url: str, manifest_allowed: bool) -> _Entry:
        with self._lock:
            url_lock = self._url_locks.setdefault(url, threading.Lock())
        with url_lock:
            with self._lock:
                cached = self._cache.get(url)
                if cached is not None:
                    self._cache.move_to_end(url)
            if cached is not None and self._clock() - cached.checked_at < self._limits.fresh_s:
                entry = cached
            else:
                entry = self._refresh(url, cached)
        if entry.items is not None and not manifest_allowed:
            raise PermanentError(f"reference {url} is a manifest inside a manifest")
        return entry

    def _refresh(self, url: str, cached: _Entry | None) -> _Entry:
        if url.startswith(f"gs://{self._bucket}/"):
            name = url[len(f"gs://{self._bucket}/") :]
            try:
                data = self._objects.read(self._bucket, name, self._fetch_cap())
            except NotFound as exc:
                raise PermanentError(f"reference {url} does not exist") from exc
            entry = self._parse(url, data)
            entry.checked_at = self._clock()
        elif url.startswith("gs://"):
            raise PermanentError(f"reference {url}: only gs://{self._bucket}/ can be read")
        else:
            fetched = self._fetcher.get(
                url,
                self._fetch_cap(),
                self._limits.timeout_s,
                cached.validators if cached is not None else None,
            )
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

    def _fetch_cap(self) -> int:
        return self._limits.max_bytes * max(1, self._limits.max_images)

    # ------------------------------------------------------------------ content
    def _parse(self, url: str, data: bytes) -> _Entry:
        if data.startswith(b"PK\x03\x04"):
            images = self._from_zip(url, data)
            return _Entry(images, None, Validators(), sum(len(i.data) for i in images), 0.0)
        if data.lstrip()[:1] in (b"{", b"["):
            items = _manifest_items(url, data)
            return _Entry([], items, Validators(), sum(len(i) for i in items), 0.0)
        return _Entry([self._image(url, data)], None, Validators(), len(data), 0.0)

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
        images: list[ReferenceImage] = []
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = sorted(archive.infolist(), key=lambda i: i.filename)
                for info in members[:MAX_ZIP_MEMBERS]:
                    if info.is_dir() or info.filename.startswith("__MACOSX/"):
                        continue
                    # The declared size bounds what read() inflates (zip bombs).
                    if info.file_size > self._limits.max_bytes:
                        continue
                    try:
                        content = archive.read(info)
                        images.append(self._image(f"{url}!{info.filename}", content))
                    except (PermanentError, *_BROKEN_MEMBER):
                        # Packs may carry a readme, or a member we cannot inflate.
                        continue
                    if len(images) >= self._limits.max_images:
                        break
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            raise PermanentError(f"reference pack {url} is a broken zip: {exc}") from exc
        if not images:
            raise PermanentError(f"reference zip {url} holds no usable PNG, JPEG or WebP image")
        return images


def _manifest_items(url: str, data: bytes) -> list[str]:
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise PermanentError(f"reference manifest {url} is not valid JSON") from exc
    items = manifest.get("images") if isinstance(manifest, dict) else manifest
    if not isinstance(items, list) or not all(isinstance(u, str) for u in items):
        raise PermanentError(f"reference manifest {url} must list image URLs")
    return list(items)
