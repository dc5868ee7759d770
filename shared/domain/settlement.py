"""Budget settlement: each image's reservation corrected once, to what it cost or
to nothing for an image never made."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TypeVar

from shared.domain.job import ImageSlot, Job, VariantState, Version

R = TypeVar("R")
Step = tuple[Job | None, R]


@dataclass(frozen=True)
class Settlement:
    """How one image's budget reservation (one image at its estimate, on the day
    and for the caller it was reserved) must be corrected, once."""

    n: int
    version: int
    key: str  # the image in the day's usage record: job/n, or job/n/vk for later versions
    caller: str
    day: str
    images: int
    cost: Decimal


def settlement_key(job_id: str, n: int, version: int = 1) -> str:
    return f"{job_id}/{n}" if version == 1 else f"{job_id}/{n}/v{version}"


def _reservation(job: Job, slot: ImageSlot) -> tuple[str, str, Decimal] | None:
    """Whose budget reserved the image, on which day, at what estimate."""
    if isinstance(slot, Version):
        return slot.caller, slot.budget_day, Decimal(slot.price_per_image)
    if job.budget_day is None:
        return None
    return job.caller, job.budget_day, Decimal(job.price_per_image)


def settlements(job: Job) -> list[Settlement]:
    """The images (every version) whose reservation can be corrected now: by what the
    image actually cost, or, for an image that ended without being made (failed, or
    cancelled unmade), all of it. None twice: a settled image is skipped, except an
    image given back that was made after all (its holder had stalled past its
    lease): it is charged what it cost, once, under its own key."""
    due = []
    for key in sorted(job.variants, key=int):
        variant = job.variants[key]
        for number, slot in variant.slots():
            reserved = _reservation(job, slot)
            if reserved is None:
                continue
            caller, day, estimate = reserved
            image = settlement_key(job.job_id, variant.n, number)
            if slot.settled:
                if slot.settled_unmade and not slot.recharged and slot.cost_usd is not None:
                    cost = Decimal(slot.cost_usd)
                    due.append(Settlement(variant.n, number, f"{image}/made", caller, day, 1, cost))
                continue
            if slot.cost_usd is not None:
                images, cost = 0, Decimal(slot.cost_usd) - estimate
            elif slot.state in (VariantState.FAILED, VariantState.CANCELLED):
                images, cost = -1, -estimate
            else:
                continue
            due.append(Settlement(variant.n, number, image, caller, day, images, cost))
    return due


def mark_settled(job: Job, done: Sequence[Settlement], now: datetime) -> Step[None]:
    """These settlements were applied to the budget."""
    changed = False
    for item in done:
        slot = job.slot(item.n, item.version)
        if item.key.endswith("/made"):
            if not slot.recharged:
                slot.recharged = changed = True
        elif not slot.settled:
            slot.settled = changed = True
            slot.settled_unmade = item.images < 0
    if not changed:
        return None, None
    job.updated_at = now
    return job, None
