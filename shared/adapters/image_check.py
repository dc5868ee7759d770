"""Decide whether untrusted bytes are an image we accept, by decoding them with Pillow.

Magic bytes alone let a truncated or forged file through; decoding under a
format allowlist and a pixel limit does not, and it never runs a decoder we did
not choose (``Image.open(formats=...)``).
"""

from __future__ import annotations

import io

from PIL import Image

from shared.domain.errors import NotAnImage

# Pillow format name -> the MIME type we store and send.
ACCEPTED = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def image_mime(data: bytes, max_pixels: int) -> str:
    """The MIME type of a decodable PNG, JPEG or WebP of at most ``max_pixels``
    (the ``ImageProbe`` port); ``NotAnImage`` says why not."""
    try:
        # open() reads only the header, so the size is checked before any decoding.
        with Image.open(io.BytesIO(data), formats=list(ACCEPTED)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise NotAnImage(f"{width}x{height} pixels exceed the limit of {max_pixels}")
            found = str(image.format)
            # verify() checks the file's structure (PNG chunk checksums, a missing
            # end); it leaves the image unusable, so decoding needs a second open.
            image.verify()
        with Image.open(io.BytesIO(data), formats=[found]) as image:
            image.load()
    except NotAnImage:
        raise
    except Image.DecompressionBombError as exc:
        raise NotAnImage(f"too many pixels: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Pillow reports unknown, truncated and corrupt data through these.
        raise NotAnImage("not a decodable PNG, JPEG or WebP image") from exc
    return ACCEPTED[found]
