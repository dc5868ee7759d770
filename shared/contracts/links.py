"""Durable asset links: an HMAC capability instead of a signed URL in the sheet.

``=IMAGE()`` cannot send headers, so the signature in the link is what grants
access; the HTTP function checks it and redirects to a short-lived signed URL.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote

from shared.domain.job import ASSET_SIZES, AssetSize


class LinkSigner:
    """Makes and checks ``/assets/{job_id}/{variant}?size=...[&version=k]&sig=...``
    links, and ``/exports/{batch_id}/{export_id}?sig=...`` links to a batch's zip.

    Version 1 is signed as before versions existed, so older sheet links stay valid.
    """

    def __init__(self, key: str, base_url: str) -> None:
        self._key = key.encode()
        self._base = base_url.rstrip("/")

    def _sign(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()[:32]

    def signature(self, job_id: str, variant: int, size: AssetSize, version: int = 1) -> str:
        tail = f"{size}" if version == 1 else f"v{version}/{size}"
        return self._sign(f"{job_id}/{variant}/{tail}")

    def link(self, job_id: str, variant: int, size: AssetSize, version: int = 1) -> str:
        sig = self.signature(job_id, variant, size, version)
        extra = "" if version == 1 else f"&version={version}"
        return f"{self._base}/assets/{quote(job_id)}/{variant}?size={size}{extra}&sig={sig}"

    def verify(self, job_id: str, variant: int, size: str, sig: str, version: int = 1) -> bool:
        if size not in ASSET_SIZES:
            return False
        expected = self.signature(job_id, variant, size, version)  # type: ignore[arg-type,unused-ignore]
        return _same(expected, sig)

    def export_link(self, batch_id: str, export_id: str) -> str:
        sig = self._sign(f"export/{batch_id}/{export_id}")
        return f"{self._base}/exports/{quote(batch_id)}/{quote(export_id)}?sig={sig}"

    def verify_export(self, batch_id: str, export_id: str, sig: str) -> bool:
        return _same(self._sign(f"export/{batch_id}/{export_id}"), sig)


def _same(expected: str, sig: str) -> bool:
    # Bytes, because compare_digest refuses non-ASCII str from an untrusted URL.
    return hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace"))


def sheet_url(spreadsheet_id: str, worksheet_id: int | None = None) -> str:
    """Where a team opens its sheet (at the batch's tab when known)."""
    url = f"https://docs.google.com/spreadsheets/d/{quote(spreadsheet_id, safe='')}/edit"
    return f"{url}#gid={worksheet_id}" if worksheet_id is not None else url
