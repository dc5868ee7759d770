"""Thumbnails of untrusted image bytes (shared/imaging.py) and format sniffing."""

from __future__ import annotations

import io
import random
import struct
import zlib

import pytest
from PIL import Image

from shared.errors import PermanentError
from shared.imageformat import sniff
from shared.imaging import make_thumbnail
from tests.fakes import jpeg_bytes, png_bytes


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def noisy_png(size: tuple[int, int]) -> bytes:
    """A PNG that compresses badly, so cutting it loses pixel data."""
    rng = random.Random(42)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims the given size (no real pixel data)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("size", "expected"),
    [((1024, 512), (256, 128)), ((300, 900), (85, 256)), ((256, 256), (256, 256))],
)
def test_longest_side_at_most_256(size: tuple[int, int], expected: tuple[int, int]) -> None:
    thumb = decode(make_thumbnail(png_bytes(size), 256))
    assert thumb.format == "JPEG"
    assert thumb.mode == "RGB"
    assert thumb.size == expected


def test_small_image_is_not_enlarged() -> None:
    assert decode(make_thumbnail(png_bytes((100, 40)), 256)).size == (100, 40)


def test_other_longest_side() -> None:
    assert decode(make_thumbnail(jpeg_bytes((2000, 1000)), 64)).size == (64, 32)


def test_rgba_becomes_rgb_jpeg_on_white() -> None:
    data = png_bytes((400, 200), color=(255, 0, 0, 0), mode="RGBA")  # fully transparent red
    thumb = decode(make_thumbnail(data, 256))
    assert (thumb.format, thumb.mode, thumb.size) == ("JPEG", "RGB", (256, 128))
    r, g, b = thumb.getpixel((128, 64))  # type: ignore[misc]
    assert min(r, g, b) > 240


def test_palette_with_transparency_becomes_rgb_jpeg_on_white() -> None:
    image = Image.new("P", (300, 300), 0)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    image.paste(1, (150, 0, 300, 300))  # right half blue, left half index 0
    out = io.BytesIO()
    image.save(out, format="PNG", transparency=0)
    thumb = decode(make_thumbnail(out.getvalue(), 256))
    assert (thumb.format, thumb.mode, thumb.size) == ("JPEG", "RGB", (256, 256))
    left = thumb.getpixel((30, 128))
    right = thumb.getpixel((220, 128))
    assert isinstance(left, tuple)
    assert isinstance(right, tuple)
    assert min(left) > 240  # transparent black became white, not black
    assert right[2] > 200 and right[0] < 60


def test_exif_rotated_jpeg_comes_out_rotated() -> None:
    image = Image.new("RGB", (600, 300), (10, 120, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif)
    thumb = decode(make_thumbnail(out.getvalue(), 256))
    assert thumb.size == (128, 256)


@pytest.mark.parametrize("data", [b"", b"hello world", b"\x89PNG\r\n\x1a\n garbage", b"%PDF-1.7"])
def test_non_image_bytes_raise_permanent_error(data: bytes) -> None:
    with pytest.raises(PermanentError, match="could not be decoded"):
        make_thumbnail(data, 256)


def test_truncated_png_raises_permanent_error() -> None:
    data = noisy_png((200, 200))
    make_thumbnail(data, 256)  # the whole file is fine
    with pytest.raises(PermanentError, match="could not be decoded"):
        make_thumbnail(data[: len(data) // 2], 256)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_formats_outside_allowlist_are_refused(fmt: str) -> None:
    out = io.BytesIO()
    Image.new("RGB", (20, 20), (1, 2, 3)).save(out, format=fmt)
    with pytest.raises(PermanentError, match="could not be decoded"):
        make_thumbnail(out.getvalue(), 256)


def test_webp_is_accepted() -> None:
    out = io.BytesIO()
    Image.new("RGB", (512, 256), (1, 2, 3)).save(out, format="WEBP")
    assert decode(make_thumbnail(out.getvalue(), 256)).size == (256, 128)


def test_too_many_pixels_refused_before_decoding() -> None:
    with pytest.raises(PermanentError, match="limit 50000000 pixels"):
        make_thumbnail(png_header_only(10_000, 6_000), 256)


# --------------------------------------------------------------------------- sniff


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (png_bytes(), "image/png"),
        (jpeg_bytes(), "image/jpeg"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"RIFF\x00\x00\x00\x00WAVE", None),
        (b"GIF89a", None),
        (b"", None),
    ],
)
def test_sniff(data: bytes, mime: str | None) -> None:
    assert sniff(data) == mime
