"""What an image will cost (the estimate a batch reserves) and what it did cost.

An estimate is the catalog's price per image at the item's size and lane, plus
the input tokens the call will send: the prompt (about four characters a
token) and the reference images (a fixed count per image in the catalog; how
many images a zip or manifest pack holds is only known when it is fetched, so
a pack is estimated at the most that will be sent). The actual cost comes from
the answer's token counts and the catalog's token prices, or, when the answer
reports none, from the catalog's price per image.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import urlsplit

from shared.domain.anchors import is_anchor
from shared.domain.catalog import MILLION, Lane, ModelEntry, token_cost

PROMPT_CHARS_PER_TOKEN = 4
SINGLE_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Dollar amounts are kept to a hundredth of a cent: an image costs cents.
CENT_FRACTION = Decimal("0.0001")


@dataclass(frozen=True)
class Estimate:
    """One image of an item: its price and what of it is an estimate."""

    per_image: Decimal
    image_price: Decimal
    input_tokens: int
    references: int
    references_known: bool  # False: a pack, estimated at the most that will be sent


def references_in(url: str | None, most: int) -> tuple[int, bool]:
    """How many reference images a pack URL (or a style anchor: one image) will
    send: (count, known exactly)."""
    if not url:
        return 0, True
    if is_anchor(url) or urlsplit(url).path.lower().endswith(SINGLE_IMAGE_SUFFIXES):
        return min(1, most), True
    return most, False


def references_of(urls: Iterable[str | None], most: int) -> tuple[int, bool]:
    """How many reference images a call sends for all of ``urls`` (the batch's style
    references, then the item's pack), at most ``most``: (count, known exactly)."""
    total, known = 0, True
    for url in urls:
        count, exact = references_in(url, most)
        total, known = total + count, known and exact
    return min(total, most), known


def estimate(
    entry: ModelEntry,
    lane: Lane,
    size: str | None,
    prompt: str,
    references: int,
    references_known: bool = True,
) -> Estimate:
    prompt_tokens = max(1, -(-len(prompt) // PROMPT_CHARS_PER_TOKEN))
    input_tokens = prompt_tokens + references * entry.input_tokens_per_reference_image
    image_price = entry.image_price(lane, size)
    input_price = entry.token_prices_per_million[lane].input * input_tokens / MILLION
    return Estimate(
        per_image=cents(image_price + input_price),
        image_price=image_price,
        input_tokens=input_tokens,
        references=references,
        references_known=references_known,
    )


def actual_cost(
    entry: ModelEntry, lane: Lane, size: str | None, usage: Mapping[str, int]
) -> Decimal:
    """What one generated image cost: from its tokens, else the catalog's price."""
    reported = token_cost(entry.token_prices_per_million[lane], usage)
    return cents(reported if reported is not None else entry.image_price(lane, size))


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT_FRACTION, rounding=ROUND_HALF_UP)


def cheapest(
    models: Mapping[str, ModelEntry],
    lane: Lane,
    aspect_ratio: str | None,
    references: int,
) -> tuple[str, str]:
    """The model and size a draft is made at: the lowest price per image in ``lane``
    among models Google serves and does not retire (generally available or in
    preview) that take the aspect ratio and the references; ties go to the name
    first in order. ValueError if none does."""
    offers = [
        (price, name, size)
        for name, entry in models.items()
        if entry.status in ("ga", "preview")
        and (aspect_ratio is None or aspect_ratio in entry.aspect_ratios)
        and references <= entry.max_reference_images
        for size, price in entry.price_per_image[lane].items()
    ]
    if not offers:
        raise ValueError("no model of the catalog takes this job's shape and references")
    _, name, size = min(offers)
    return name, size
