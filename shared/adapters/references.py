"""ReferenceLoader: one image, a zip of images or a JSON manifest of image URLs.

``gs://`` URLs are read from our own bucket; ``https://`` URLs are fetched only
from public addresses, without following redirects, with size and time caps.
"""

from __future__ import annotations

import io
import ipaddress
import json
import socket
import threading
import zipfile
from urllib.parse import urlsplit

import requests

from shared.errors import PermanentError, TransientError
from shared.imageformat import sniff
from shared.ports import ObjectStore, ReferenceImage

FETCH_TIMEOUT_S = 20.0


class PackReferenceLoader:
    def __init__(self, objects: ObjectStore, bucket: str, max_bytes: int, max_images: int) -> None:
        self._objects = objects
        self._bucket = bucket
        self._max_bytes = max_bytes
        self._max_images = max_images
        # A pack used by many scenes is fetched once per instance.
        self._cache: dict[str, list[ReferenceImage]] = {}
        self._lock = threading.Lock()

    def load(self, url: str) -> list[ReferenceImage]:
        with self._lock:
            if url in self._cache:
                return self._cache[url]
        images = self._unpack(url, self._fetch(url), depth=0)[: self._max_images]
        if not images:
            raise PermanentError(f"reference pack {url} holds no PNG, JPEG or WebP image")
        with self._lock:
            self._cache[url] = images
        return images

    def _unpack(self, url: str, data: bytes, depth: int) -> list[ReferenceImage]:
        mime = sniff(data)
        if mime is not None:
            return [ReferenceImage(data=data, mime_type=mime)]
        if data.startswith(b"PK\x03\x04"):
            return self._from_zip(url, data)
        if depth == 0 and data.lstrip()[:1] in (b"{", b"["):
            return self._from_manifest(url, data)
        raise PermanentError(f"reference pack {url} is not an image, a zip or a JSON manifest")

    def _from_zip(self, url: str, data: bytes) -> list[ReferenceImage]:
        images: list[ReferenceImage] = []
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for info in sorted(archive.infolist(), key=lambda i: i.filename):
                    if info.is_dir() or info.file_size > self._max_bytes:
                        continue
                    content = archive.read(info)
                    mime = sniff(content)
                    if mime is not None:
                        images.append(ReferenceImage(data=content, mime_type=mime))
                    if len(images) >= self._max_images:
                        break
        except zipfile.BadZipFile as exc:
            raise PermanentError(f"reference pack {url} is a broken zip: {exc}") from exc
        return images

    def _from_manifest(self, url: str, data: bytes) -> list[ReferenceImage]:
        try:
            manifest = json.loads(data)
        except ValueError as exc:
            raise PermanentError(f"reference manifest {url} is not valid JSON") from exc
        urls = manifest.get("images") if isinstance(manifest, dict) else manifest
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise PermanentError(f"reference manifest {url} must list image URLs")
        images: list[ReferenceImage] = []
        for item in urls[: self._max_images]:
            images += self._unpack(item, self._fetch(item), depth=1)
        return images

    def _fetch(self, url: str) -> bytes:
        if url.startswith(f"gs://{self._bucket}/"):
            name = url[len(f"gs://{self._bucket}/") :]
            return self._objects.read(self._bucket, name, self._max_bytes)
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise PermanentError(f"reference URL {url} must be https:// or gs://{self._bucket}/")
        _require_public(parts.hostname, parts.port or 443)
        try:
            with requests.get(
                url, timeout=FETCH_TIMEOUT_S, allow_redirects=False, stream=True
            ) as answer:
                if answer.is_redirect:
                    raise PermanentError(f"reference URL {url} redirects; give the final URL")
                if answer.status_code >= 500 or answer.status_code == 429:
                    raise TransientError(f"reference URL {url} answered {answer.status_code}")
                if answer.status_code != 200:
                    raise PermanentError(f"reference URL {url} answered {answer.status_code}")
                body = bytearray()
                for chunk in answer.iter_content(64 * 1024):
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise PermanentError(f"reference URL {url} exceeds {self._max_bytes} bytes")
                return bytes(body)
        except requests.RequestException as exc:
            raise TransientError(f"reference URL {url} could not be fetched: {exc}") from exc


def _require_public(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise PermanentError(f"reference host {host} does not resolve") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise PermanentError(f"reference host {host} resolves to non-public {address}")
