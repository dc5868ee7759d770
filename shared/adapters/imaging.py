"""Thumbnails with Pillow, for untrusted image bytes.

The cost of a thumbnail is almost all in decoding the source (a PNG cannot be
decoded at a lower resolution), so everything after the decode is kept to a
fraction of it: one integer ``reduce()`` (a box filter, as libvips' shrink),
a bicubic resize only for the remaining factor below 2, and mode conversions
and EXIF rotation on the small image rather than the large one.
"""

from __future__ import annotations

import io
import threading

from PIL import ExifTags, Image, UnidentifiedImageError

from shared.domain.errors import PermanentError
from shared.services.ports import ThumbFormat, Thumbnailer, ThumbnailSpec

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")

# EXIF orientation -> the transpose that shows the image upright.
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    Image.DecompressionBombError,
)


def make_thumbnail(data: bytes, spec: ThumbnailSpec) -> bytes:
    """A JPEG (or WebP) whose longest side is at most ``spec.longest_side``.

    Only PNG, JPEG and WebP decoders ever see the bytes; the pixel limit is
    checked on the header, before anything is decoded. Raises PermanentError
    for bytes that are no such image, are truncated or exceed the limit.
    """
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as source:
            width, height = source.size
            # Per call, not through the global Image.MAX_IMAGE_PIXELS: setting
            # that from concurrent requests would race. Pillow's own (higher)
            # global check still runs inside open() as a backstop.
            if width * height > spec.max_pixels:
                raise PermanentError(f"image is {width}x{height}; limit {spec.max_pixels} pixels")
            target = fit(width, height, spec.longest_side)
            # JPEG: let the decoder scale by 1/2, 1/4 or 1/8 on the DCT (no-op for others).
            source.draft(None, target)
            source.load()
            orientation = source.getexif().get(ExifTags.Base.Orientation, 1)
            small = _shrink(_decodable(source), target)
            # Rotating the thumbnail is cheaper than rotating the source, and
            # the longest side is the same either way.
            transpose = _ORIENTATION.get(orientation)
            if transpose is not None:
                small = small.transpose(transpose)
            return _encode(small, spec, source.info.get("icc_profile"))
    except _DECODE_ERRORS as exc:
        raise PermanentError(f"image could not be decoded: {exc}") from exc


def fit(width: int, height: int, side: int) -> tuple[int, int]:
    """The size within ``side`` x ``side`` keeping the aspect ratio; never enlarged."""
    if width <= side and height <= side:
        return width, height
    if width >= height:
        return side, max(round(height * side / width), 1)
    return max(round(width * side / height), 1), side


def _decodable(image: Image.Image) -> Image.Image:
    """A mode that ``reduce()`` and ``resize()`` average correctly."""
    if image.mode in ("P", "PA", "L", "RGB") and (
        image.mode == "PA" or "transparency" in image.info
    ):
        # A transparent palette entry or colour key becomes real alpha.
        return image.convert("RGBA")
    if image.mode == "P":
        return image.convert("RGB")  # palette indices cannot be averaged
    if image.mode == "1":
        return image.convert("L")
    if image.mode in _SIXTEEN_BIT:
        # 16-bit grey: Pillow's convert("L") clips (everything above 255 turns
        # white); keep 32-bit ints for the reduction and scale at the end.
        return image if image.mode == "I" else image.convert("I")
    return image


def _shrink(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Integer box reduction first, bicubic only for the factor (< 2) that remains."""
    factor = min(image.width // target[0], image.height // target[1])
    if factor >= 2:
        image = image.reduce(factor)
    if image.size != target:
        image = image.resize(target, Image.Resampling.BICUBIC)
    return image


def _encode(image: Image.Image, spec: ThumbnailSpec, icc: bytes | None) -> bytes:
    source_mode = image.mode
    image = _output_mode(image, spec.format)
    options: dict[str, object] = {"quality": spec.quality}
    # Colours stay right only while the profile still describes the pixels.
    if icc and _family(source_mode) == _family(image.mode):
        options["icc_profile"] = icc
    out = io.BytesIO()
    # At 256 px, WebP's method 2 is half the time of the default 4 for the same
    # bytes, and JPEG's optimize pass costs 3 % of a decode to save 4 % of 16 KB.
    if spec.format == "webp":
        image.save(out, format="WEBP", method=2, **options)
    else:
        image.save(out, format="JPEG", **options)
    return out.getvalue()


def _output_mode(image: Image.Image, fmt: ThumbFormat) -> Image.Image:
    """JPEG: RGB or grey, transparency flattened onto white. WebP keeps alpha."""
    if image.mode == "I":
        image = image.point(lambda value: value * (1 / 256)).convert("L")
    if image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    if fmt == "webp":
        return (
            image
            if image.mode in ("RGB", "RGBA")
            else image.convert("RGBA" if "A" in image.mode else "RGB")
        )
    if image.mode in ("RGBA", "LA"):
        flat_mode = "L" if image.mode == "LA" else "RGB"
        background = Image.new(flat_mode, image.size, 255 if flat_mode == "L" else (255,) * 3)
        background.paste(image.convert(flat_mode), mask=image.getchannel("A"))
        return background
    return image if image.mode in ("RGB", "L") else image.convert("RGB")


def _family(mode: str) -> str:
    return "grey" if mode in ("L", "LA", "I", "1") else "rgb" if mode.startswith("RGB") else mode


class DecodeSlots:
    """At most ``slots`` thumbnails decoded at once in this instance.

    The function takes several requests at a time (so sheet writes can be
    coalesced), but decoding is CPU-bound and its memory grows with the pixel
    limit: the others wait here instead of multiplying peak memory.
    """

    def __init__(self, thumbnailer: Thumbnailer, slots: int) -> None:
        self._thumbnailer = thumbnailer
        self._slots = threading.BoundedSemaphore(slots)

    def __call__(self, data: bytes, spec: ThumbnailSpec) -> bytes:
        with self._slots:
            return self._thumbnailer(data, spec)
