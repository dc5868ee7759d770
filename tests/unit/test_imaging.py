"""Thumbnails of untrusted image bytes (shared/adapters/imaging.py) and format sniffing."""

from __future__ import annotations

import io
import random
import struct
import threading
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image, ImageCms

from shared.adapters.imaging import DecodeSlots, fit, make_thumbnail
from shared.domain.errors import PermanentError
from shared.services.ports import ThumbnailSpec
from tests.fakes import jpeg_bytes, png_bytes

SPEC = ThumbnailSpec()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def thumb(data: bytes, **spec: Any) -> Image.Image:
    return decode(make_thumbnail(data, ThumbnailSpec(**spec)))


def encode(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def noisy_png(size: tuple[int, int]) -> bytes:
    """A PNG that compresses badly, so cutting it loses pixel data."""
    rng = random.Random(42)
    return encode(Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3)))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def raw_png(width: int, height: int, depth: int, color_type: int, rows: bytes | None) -> bytes:
    """A PNG built by hand; ``rows`` None gives a header without pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    idat = png_chunk(b"IDAT", zlib.compress(rows, 9)) if rows is not None else b""
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + idat + png_chunk(b"IEND", b"")


def close(pixel: Any, expected: tuple[int, ...], tolerance: int = 12) -> bool:
    values = pixel if isinstance(pixel, tuple) else (pixel,)
    return len(values) == len(expected) and all(
        abs(a - b) <= tolerance for a, b in zip(values, expected, strict=True)
    )


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1024, 512), (256, 128)),
        ((300, 900), (85, 256)),
        ((256, 256), (256, 256)),
        ((1024, 1024), (256, 256)),
        ((1344, 768), (256, 146)),  # Gemini's 16:9 "1K": a non-integer factor
        ((4000, 10), (256, 1)),
    ],
)
def test_longest_side_at_most_256(size: tuple[int, int], expected: tuple[int, int]) -> None:
    small = thumb(png_bytes(size))
    assert (small.format, small.mode, small.size) == ("JPEG", "RGB", expected)


def test_small_image_is_not_enlarged() -> None:
    assert thumb(png_bytes((100, 40))).size == (100, 40)


def test_other_longest_side_and_big_jpeg_through_draft() -> None:
    assert thumb(jpeg_bytes((2000, 1000)), longest_side=64).size == (64, 32)
    big = thumb(jpeg_bytes((4000, 3000), color=(30, 200, 30)))
    assert big.size == (256, 192)
    assert close(big.getpixel((128, 96)), (30, 200, 30))


def test_fit_keeps_aspect_and_never_enlarges() -> None:
    assert fit(1000, 500, 256) == (256, 128)
    assert fit(500, 1000, 256) == (128, 256)
    assert fit(200, 100, 256) == (200, 100)


def test_colours_survive_the_reduction() -> None:
    image = Image.new("RGB", (1024, 1024), (255, 0, 0))
    image.paste((0, 0, 255), (512, 0, 1024, 1024))
    small = thumb(encode(image))
    assert close(small.getpixel((10, 128)), (255, 0, 0))
    assert close(small.getpixel((245, 128)), (0, 0, 255))


# --------------------------------------------------------------------------- orientation

# Orientation -> how the stored pixels relate to the upright picture.
STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def upright() -> Image.Image:
    """600x300, white, with a red block in the top-left corner."""
    image = Image.new("RGB", (600, 300), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 150, 100))
    return image


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_is_applied(fmt: str, orientation: int) -> None:
    method = STORED[orientation]
    stored = upright() if method is None else upright().transpose(method)
    exif = Image.Exif()
    exif[0x0112] = orientation
    small = thumb(encode(stored, fmt, exif=exif, quality=95))
    assert small.size == (256, 128)
    assert close(small.getpixel((10, 10)), (255, 0, 0), 40), "the red corner is top-left"
    assert close(small.getpixel((245, 118)), (255, 255, 255), 40)
    assert not small.getexif(), "no EXIF (nor its orientation) in the thumbnail"


# --------------------------------------------------------------------------- modes


def test_rgba_becomes_rgb_jpeg_on_white() -> None:
    data = png_bytes((400, 200), color=(255, 0, 0, 0), mode="RGBA")  # fully transparent red
    small = thumb(data)
    assert (small.format, small.mode, small.size) == ("JPEG", "RGB", (256, 128))
    assert close(small.getpixel((128, 64)), (255, 255, 255))


def test_half_transparent_edge_is_blended_not_dark() -> None:
    image = Image.new("RGBA", (1024, 1024), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (0, 0, 512, 1024))
    small = thumb(encode(image))
    assert close(small.getpixel((10, 128)), (0, 0, 255))
    # Premultiplied averaging: transparent black must not darken the white side.
    assert close(small.getpixel((200, 128)), (255, 255, 255))


def test_rgba_keeps_alpha_as_webp() -> None:
    data = png_bytes((400, 200), color=(255, 0, 0, 0), mode="RGBA")
    small = thumb(data, format="webp")
    assert (small.format, small.mode, small.size) == ("WEBP", "RGBA", (256, 128))
    alpha = small.getpixel((128, 64))
    assert isinstance(alpha, tuple) and alpha[3] == 0


def test_palette_with_transparency_becomes_rgb_jpeg_on_white() -> None:
    image = Image.new("P", (300, 300), 0)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    image.paste(1, (150, 0, 300, 300))  # right half blue, left half index 0
    small = thumb(encode(image, transparency=0))
    assert (small.format, small.mode, small.size) == ("JPEG", "RGB", (256, 256))
    assert close(small.getpixel((30, 128)), (255, 255, 255))  # transparent black became white
    assert close(small.getpixel((220, 128)), (0, 0, 255))


def test_palette_without_transparency_keeps_its_colours() -> None:
    image = Image.new("P", (512, 512), 1)
    image.putpalette([0, 0, 0, 20, 180, 60] + [0] * (256 * 3 - 6))
    small = thumb(encode(image))
    assert (small.mode, small.size) == ("RGB", (256, 256))
    assert close(small.getpixel((128, 128)), (20, 180, 60))


def test_colour_key_transparency_becomes_white() -> None:
    image = Image.new("RGB", (512, 512), (0, 0, 0))
    image.paste((200, 0, 0), (0, 0, 256, 512))
    small = thumb(encode(image, transparency=(0, 0, 0)))
    assert close(small.getpixel((20, 128)), (200, 0, 0))
    assert close(small.getpixel((236, 128)), (255, 255, 255))


def test_grey_stays_grey() -> None:
    small = thumb(png_bytes((512, 512), color=90, mode="L"))
    assert (small.mode, small.size) == ("L", (256, 256))
    assert close(small.getpixel((128, 128)), (90,))


def test_grey_with_alpha_is_flattened_onto_white() -> None:
    image = Image.new("LA", (512, 512), (0, 255))
    image.paste((0, 0), (256, 0, 512, 512))  # right half transparent
    small = thumb(encode(image))
    assert small.mode == "L"
    assert close(small.getpixel((20, 128)), (0,))
    assert close(small.getpixel((236, 128)), (255,))


def test_one_bit_image() -> None:
    small = thumb(png_bytes((512, 512), color=1, mode="1"))
    assert small.mode == "L"
    assert close(small.getpixel((128, 128)), (255,))


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    # 40000 of 65535 is 156 of 255; a plain convert("L") would clip it to 255.
    rows = b"".join(b"\x00" + struct.pack(">H", 40000) * 512 for _ in range(512))
    data = raw_png(512, 512, 16, 0, rows)
    assert decode(data).mode == "I;16"
    small = thumb(data)
    assert small.mode == "L"
    assert close(small.getpixel((128, 128)), (156,), 3)


def test_sixteen_bit_colour_with_alpha() -> None:
    pixel = struct.pack(">HHHH", 60000, 1000, 30000, 65535)
    rows = b"".join(b"\x00" + pixel * 300 for _ in range(300))
    small = thumb(raw_png(300, 300, 16, 6, rows))
    assert (small.mode, small.size) == ("RGB", (256, 256))
    assert close(small.getpixel((128, 128)), (233, 4, 117))


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (512, 512), (0, 255, 255, 0)), "JPEG", quality=95)
    assert decode(data).mode == "CMYK"
    small = thumb(data)
    assert (small.mode, small.size) == ("RGB", (256, 256))
    assert close(small.getpixel((128, 128)), (255, 0, 0))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_image_gives_its_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (600, 300), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True)
    assert getattr(decode(data), "n_frames", 1) == 3
    small = thumb(data)
    assert (small.format, small.size, getattr(small, "n_frames", 1)) == ("JPEG", (256, 128), 1)
    assert close(small.getpixel((128, 64)), (255, 0, 0))


def test_icc_profile_is_kept_for_rgb() -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    small = thumb(encode(Image.new("RGB", (512, 512), (1, 2, 3)), icc_profile=profile))
    assert small.info.get("icc_profile") == profile


# --------------------------------------------------------------------------- output


def test_webp_output() -> None:
    small = thumb(png_bytes((512, 256)), format="webp")
    assert (small.format, small.size) == ("WEBP", (256, 128))
    assert ThumbnailSpec(format="webp").content_type == "image/webp"
    assert ThumbnailSpec().content_type == "image/jpeg"


def test_quality_is_applied() -> None:
    data = noisy_png((512, 512))
    low = make_thumbnail(data, ThumbnailSpec(quality=20))
    high = make_thumbnail(data, ThumbnailSpec(quality=95))
    assert len(low) < len(high) / 2


# --------------------------------------------------------------------------- untrusted bytes


@pytest.mark.parametrize("data", [b"", b"hello world", b"\x89PNG\r\n\x1a\n garbage", b"%PDF-1.7"])
def test_non_image_bytes_raise_permanent_error(data: bytes) -> None:
    with pytest.raises(PermanentError, match="could not be decoded"):
        make_thumbnail(data, SPEC)


@pytest.mark.parametrize(
    "data",
    [
        noisy_png((200, 200)),
        encode(Image.frombytes("RGB", (200, 200), random.Random(1).randbytes(120_000)), "JPEG"),
        encode(Image.frombytes("RGB", (200, 200), random.Random(2).randbytes(120_000)), "WEBP"),
    ],
    ids=["png", "jpeg", "webp"],
)
def test_truncated_bytes_raise_permanent_error(data: bytes) -> None:
    make_thumbnail(data, SPEC)  # the whole file is fine
    with pytest.raises(PermanentError, match="could not be decoded"):
        make_thumbnail(data[: len(data) // 2], SPEC)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "ICO", "PPM"])
def test_formats_outside_allowlist_are_refused(fmt: str) -> None:
    data = encode(Image.new("RGB", (20, 20), (1, 2, 3)), fmt)
    with pytest.raises(PermanentError, match="could not be decoded"):
        make_thumbnail(data, SPEC)


def test_too_many_pixels_refused_before_decoding() -> None:
    with pytest.raises(PermanentError, match="limit 50000000 pixels"):
        make_thumbnail(raw_png(10_000, 6_000, 8, 2, None), SPEC)


def test_compressed_bomb_is_refused() -> None:
    # 8000x8000 grey zeros: a 64 Mpx image in a few kilobytes.
    rows = zlib.compress(b"\x00" * (8001 * 8000), 9)
    data = b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8000, 8000, 8, 0, 0, 0, 0)),
            png_chunk(b"IDAT", rows),
            png_chunk(b"IEND", b""),
        ]
    )
    assert len(data) < 200_000
    with pytest.raises(PermanentError, match="8000x8000; limit 50000000 pixels"):
        make_thumbnail(data, SPEC)


def test_beyond_pillows_own_limit_is_refused_too() -> None:
    data = raw_png(20_000, 10_000, 8, 2, None)  # 200 Mpx: Pillow's DecompressionBombError
    with pytest.raises(PermanentError):
        make_thumbnail(data, ThumbnailSpec(max_pixels=400_000_000))


def test_pixel_limit_is_per_call_and_leaves_the_global_alone() -> None:
    before = Image.MAX_IMAGE_PIXELS
    data = png_bytes((2000, 1000))  # 2 Mpx
    outcomes: dict[str, list[str]] = {"strict": [], "lenient": []}
    start = threading.Barrier(2)

    def run(name: str, limit: int) -> None:
        start.wait(timeout=5)
        for _ in range(20):
            try:
                make_thumbnail(data, ThumbnailSpec(max_pixels=limit))
                outcomes[name].append("ok")
            except PermanentError:
                outcomes[name].append("refused")

    threads = [
        threading.Thread(target=run, args=("strict", 1_000_000)),
        threading.Thread(target=run, args=("lenient", 3_000_000)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert outcomes == {"strict": ["refused"] * 20, "lenient": ["ok"] * 20}
    assert before == Image.MAX_IMAGE_PIXELS


# --------------------------------------------------------------------------- decode slots


def test_decode_slots_bound_concurrent_decodes() -> None:
    # A third concurrent decode would complete the barrier; two slots never let it.
    barrier = threading.Barrier(3, timeout=0.3)
    reached: list[bool] = []
    lock = threading.Lock()

    def inner(data: bytes, spec: ThumbnailSpec) -> bytes:
        try:
            barrier.wait()
            broken = False
        except threading.BrokenBarrierError:
            broken = True
        with lock:
            reached.append(not broken)
        return data

    bounded: Callable[[bytes, ThumbnailSpec], bytes] = DecodeSlots(inner, 2)
    threads = [threading.Thread(target=bounded, args=(b"x", SPEC)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert reached == [False, False, False]


# --------------------------------------------------------------------------- fuzz


def _seeds() -> list[bytes]:
    image = Image.new("RGB", (300, 200), (10, 120, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "camera"
    frames = [Image.new("RGB", (50, 40), c) for c in [(255, 0, 0), (0, 0, 255)]]
    return [
        encode(image, "JPEG", exif=exif),
        encode(image, "JPEG", progressive=True),
        encode(image, "PNG", exif=exif),
        encode(image, "WEBP", exif=exif),
        encode(Image.new("P", (64, 64)), "PNG", transparency=0),
        encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
    ]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_mangled_bytes_give_a_thumbnail_or_a_permanent_error_never_a_crash() -> None:
    rng = random.Random(5)
    seeds = _seeds()
    outcomes = {"thumbnail": 0, "refused": 0}
    for _ in range(400):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(max(len(data), 1))
            kind = rng.random()
            if kind < 0.6 and data:
                data[at] = rng.randrange(256)
            elif kind < 0.8:
                del data[at : at + rng.randint(1, 64)]
            else:
                data[at:at] = rng.randbytes(rng.randint(1, 32))
        try:
            make_thumbnail(bytes(data), SPEC)
            outcomes["thumbnail"] += 1
        except PermanentError:
            outcomes["refused"] += 1
    assert outcomes["thumbnail"] > 0 and outcomes["refused"] > 0
