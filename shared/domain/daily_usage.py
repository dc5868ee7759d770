"""A caller's usage of one UTC day, as pure transitions: reservations made before
anything is recorded, corrected image by image once each image ended.

Every change names a key, and a key counts once: a reservation (a batch, a
re-roll) is made once and given back at most once; an image's settlement (its
estimate corrected to what it cost, or given back for an image never made) is
applied once, except that an image given back and then found made after all
(its holder had stalled; the job never recorded the give-back) is corrected
once more, to made. So a retry of anything, after any crash, changes nothing twice.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TypeVar

from pydantic import BaseModel, Field

R = TypeVar("R")


class Reservation(BaseModel):
    images: int
    cost: Decimal
    released: bool = False


class Correction(BaseModel):
    """An image's settlement as applied: ``images`` -1 for one given back, 0 for one
    made (its cost the difference between what it cost and its estimate)."""

    images: int
    cost: Decimal


class DailyUsage(BaseModel):
    """What a caller has committed on one UTC day."""

    caller: str
    day: str
    images: int = 0
    cost: Decimal = Decimal(0)
    # Reservations by key (a batch, a re-roll): made once, given back at most once.
    reservations: dict[str, Reservation] = Field(default_factory=dict)
    # Which images' estimates were settled, and how (job/n, job/n/vk; job/n/made once
    # a given-back image turned out made). True: settled, amount not kept (older
    # records).
    settled: dict[str, Correction | bool] = Field(default_factory=dict)


Step = tuple[DailyUsage | None, R]


def reserve(
    usage: DailyUsage,
    key: str,
    images: int,
    cost: Decimal,
    image_cap: int,
    cost_cap: Decimal,
) -> Step[tuple[bool, DailyUsage]]:
    """Add ``images`` at ``cost`` unless a cap would be passed; once per ``key`` (a
    key reserved already answers yes and adds nothing). Returns (ok, usage before)."""
    before = usage.model_copy(deep=True)
    held = usage.reservations.get(key)
    if held is not None:
        return None, (not held.released, before)
    if usage.images + images > image_cap or usage.cost + cost > cost_cap:
        return None, (False, before)
    usage.reservations[key] = Reservation(images=images, cost=cost)
    usage.images += images
    usage.cost += cost
    return usage, (True, before)


def release(usage: DailyUsage, key: str) -> Step[bool]:
    """Give reservation ``key`` back, if it was made and not given back yet."""
    held = usage.reservations.get(key)
    if held is None or held.released:
        return None, False
    held.released = True
    _add(usage, -held.images, -held.cost)
    return usage, True


def settle(usage: DailyUsage, key: str, images: int, cost: Decimal) -> Step[bool]:
    """Correct the usage by ``images``/``cost`` (often negative), once per ``key``.

    A key given back (-1) and then settled as made is corrected by the difference:
    the image was made after all, and the job that would have asked for the
    recharge never recorded the give-back. A made image is never given back later:
    a settlement computed from an older read of the job changes nothing."""
    delta = correction(usage.settled.get(key), images, cost)
    if delta is None:
        return None, False
    usage.settled[key] = Correction(images=images, cost=cost)
    _add(usage, delta.images, delta.cost)
    return usage, True


def correction(done: Correction | bool | None, images: int, cost: Decimal) -> Correction | None:
    """What settling a key as ``images``/``cost`` changes in the day's totals, given
    how it was settled before (``done``); None when it changes nothing."""
    if done is not None and (isinstance(done, bool) or done.images >= 0 or images < 0):
        return None
    before = done if isinstance(done, Correction) else Correction(images=0, cost=Decimal(0))
    return Correction(images=images - before.images, cost=cost - before.cost)


def _add(usage: DailyUsage, images: int, cost: Decimal) -> None:
    # Never below zero: a usage record removed early (its TTL) starts again at zero.
    usage.images = max(usage.images + images, 0)
    usage.cost = max(usage.cost + cost, Decimal(0))
