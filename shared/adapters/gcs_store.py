"""ObjectStore on Cloud Storage."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, BinaryIO

import google.auth
from google.api_core import exceptions as gexc
from google.auth.transport.requests import Request
from google.cloud import storage  # type: ignore[attr-defined]
from google.oauth2 import service_account

from shared.adapters.signed_urls import SignedUrlCache
from shared.domain.errors import NotFound, PermanentError
from shared.services.ports import FoundObject

# One request of a streaming upload (a multiple of 256 KiB, as resumable uploads
# need): what the writer holds in memory before it sends.
STREAM_CHUNK_BYTES = 8 * 1024 * 1024
# Joining a zip's parts copies nothing Cloud Storage holds twice, but takes longer
# than a plain call for large parts.
COMPOSE_TIMEOUT_S = 120.0


class GcsObjectStore:
    def __init__(
        self,
        client: storage.Client,
        signing_credentials_file: str = "",
        signed_url_reuse_s: float = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        # Hits on one object share a signed URL for a while (see SignedUrlCache).
        self._signed_urls = SignedUrlCache(self._sign, signed_url_reuse_s, clock=clock)
        # Locally a generated key signs; in production signing goes through IAM
        # signBlob with the runtime service account (needs Token Creator on itself).
        self._signer = (
            service_account.Credentials.from_service_account_file(signing_credentials_file)
            if signing_credentials_file
            else None
        )

    def find(self, bucket: str, prefix: str) -> FoundObject | None:
        for blob in self._client.list_blobs(bucket, prefix=prefix, max_results=1):
            return FoundObject(str(blob.name), dict(blob.metadata or {}))
        return None

    def create(
        self,
        bucket: str,
        name: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> bool:
        blob = self._client.bucket(bucket).blob(name)
        blob.metadata = dict(metadata)
        try:
            blob.upload_from_string(data, content_type=content_type, if_generation_match=0)
        except gexc.PreconditionFailed:
            return False
        return True

    def read(self, bucket: str, name: str, max_bytes: int) -> bytes:
        blob = self._client.bucket(bucket).get_blob(name)
        if blob is None:
            raise NotFound(f"gs://{bucket}/{name} does not exist")
        if blob.size is not None and blob.size > max_bytes:
            raise PermanentError(f"gs://{bucket}/{name} is {blob.size} bytes; limit {max_bytes}")
        data: bytes = blob.download_as_bytes()
        return data

    def read_into(self, bucket: str, name: str, out: BinaryIO) -> None:
        # The download is streamed into ``out`` in small pieces as it arrives.
        try:
            self._client.bucket(bucket).blob(name).download_to_file(out)
        except gexc.NotFound as exc:
            raise NotFound(f"gs://{bucket}/{name} does not exist") from exc

    def write_stream(
        self,
        bucket: str,
        name: str,
        content_type: str,
        metadata: Mapping[str, str],
        write: Callable[[BinaryIO], None],
    ) -> int | None:
        blob = self._client.bucket(bucket).blob(name)
        if blob.exists():
            # Cheaper than writing it all again to be refused at the end; and
            # fake-gcs-server (1.54) does not enforce the precondition below on
            # resumable uploads, as Cloud Storage does.
            return None
        blob.metadata = dict(metadata)
        try:
            # ignore_flush: zipfile flushes its output, which a resumable upload
            # cannot do before it is closed.
            with blob.open(
                "wb",
                chunk_size=STREAM_CHUNK_BYTES,
                ignore_flush=True,
                content_type=content_type,
                if_generation_match=0,
            ) as raw:
                counted = CountingWriter(raw)
                write(counted)  # type: ignore[arg-type]
        except gexc.PreconditionFailed:
            return None
        return counted.count

    def compose(
        self,
        bucket: str,
        sources: Sequence[str],
        name: str,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> int | None:
        target = self._client.bucket(bucket).blob(name)
        if target.exists():
            # fake-gcs-server (1.54) does not enforce the precondition below on
            # compose, as Cloud Storage does.
            return None
        target.content_type = content_type
        target.metadata = dict(metadata)
        parts = [self._client.bucket(bucket).blob(source) for source in sources]
        try:
            # Create-only, so a retried call (the client retries it, given the
            # precondition) cannot join the parts twice.
            target.compose(parts, if_generation_match=0, timeout=COMPOSE_TIMEOUT_S)
        except gexc.PreconditionFailed:
            return None
        except gexc.NotFound as exc:
            raise NotFound(f"a part of gs://{bucket}/{name} is gone: {exc}") from exc
        return int(target.size) if target.size is not None else None

    def signed_url(self, bucket: str, name: str, ttl_s: int) -> str:
        return self._signed_urls.get(bucket, name, ttl_s)

    def _sign(self, bucket: str, name: str, ttl_s: int) -> str:
        blob = self._client.bucket(bucket).blob(name)
        kwargs: dict[str, Any]
        if self._signer is not None:
            kwargs = {"credentials": self._signer}
        else:
            credentials, _ = google.auth.default()
            credentials.refresh(Request())
            kwargs = {
                "service_account_email": getattr(credentials, "service_account_email", None),
                "access_token": credentials.token,
            }
        url: str = blob.generate_signed_url(
            version="v4",
            expiration=timedelta(seconds=ttl_s),
            method="GET",
            api_access_endpoint=self._client.api_endpoint,
            **kwargs,
        )
        return url


class CountingWriter:
    """A write-only stream that counts what passes through it (no seek: zipfile
    then writes sizes after each member, as it must on an upload)."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self.count = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self.count += len(data)
        return len(data)

    def tell(self) -> int:
        return self.count

    def flush(self) -> None:
        """Nothing to flush before the upload is closed."""
