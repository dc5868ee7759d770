"""The image types we store: their file name extensions and back."""

from __future__ import annotations

# The file name extension of each image type we store, and back.
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
MIME_TYPES = {extension: mime for mime, extension in EXTENSIONS.items()}
