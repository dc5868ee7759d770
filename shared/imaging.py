"""Thumbnails with Pillow, for untrusted image bytes."""

from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import PermanentError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_PIXELS = 50_000_000


def make_thumbnail(data: bytes, longest_side: int, quality: int = 85) -> bytes:
    """A JPEG whose longest side is at most ``longest_side`` pixels.

    Raises PermanentError for bytes that are not a PNG, JPEG or WebP image,
    are truncated, or exceed the pixel limit.
    """
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            if image.width * image.height > MAX_PIXELS:
                raise PermanentError(
                    f"image is {image.width}x{image.height}; limit {MAX_PIXELS} pixels"
                )
            # draft() lets the JPEG decoder skip most of the work for big reductions.
            image.draft("RGB", (longest_side, longest_side))
            oriented = ImageOps.exif_transpose(image)
            oriented.thumbnail((longest_side, longest_side), reducing_gap=2.0)
            rgb = _to_rgb(oriented)
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as exc:
        raise PermanentError(f"image could not be decoded: {exc}") from exc
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten alpha onto white: JPEG has no transparency."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
