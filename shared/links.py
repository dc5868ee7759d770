"""Durable asset links: an HMAC capability instead of a signed URL in the sheet.

``=IMAGE()`` cannot send headers, so the signature in the link is what grants
access; the HTTP function checks it and redirects to a short-lived signed URL.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote

from shared.models import ASSET_SIZES, AssetSize


class LinkSigner:
    """Makes and checks ``/assets/{job_id}/{variant}?size=...&sig=...`` links."""

    def __init__(self, key: str, base_url: str) -> None:
        self._key = key.encode()
        self._base = base_url.rstrip("/")

    def signature(self, job_id: str, variant: int, size: AssetSize) -> str:
        message = f"{job_id}/{variant}/{size}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    def link(self, job_id: str, variant: int, size: AssetSize) -> str:
        sig = self.signature(job_id, variant, size)
        return f"{self._base}/assets/{quote(job_id)}/{variant}?size={size}&sig={sig}"

    def verify(self, job_id: str, variant: int, size: str, sig: str) -> bool:
        if size not in ASSET_SIZES:
            return False
        expected = self.signature(job_id, variant, size)  # type: ignore[arg-type,unused-ignore]
        # Bytes, because compare_digest refuses non-ASCII str from an untrusted URL.
        return hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace"))
