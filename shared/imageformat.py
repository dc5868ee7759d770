"""Recognise image formats by their first bytes, without decoding."""

from __future__ import annotations

# The file name extension of each image type we store, and back.
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
MIME_TYPES = {extension: mime for mime, extension in EXTENSIONS.items()}


def sniff(data: bytes) -> str | None:
    """The MIME type of PNG, JPEG or WebP bytes, else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None
