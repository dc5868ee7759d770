"""The team's review of a job's images: approve or reject each image (a version of a
variant), and one final pick per scene; what a delivery may hand over.

A decision names the version it is about, so a re-roll or promotion that finishes
later never inherits it; only the final pick follows a promotion of itself (the
same image, larger).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from shared.domain.job import (
    Decision,
    FinalPick,
    ImageSlot,
    Job,
    Review,
    VariantState,
    Version,
)

__all__ = ["Decision", "FinalPick", "Review"]
# What an export hands over: every kept image, the approved ones (a final pick is
# approved), or each scene's final pick only.
Selection = Literal["all", "approved", "final"]
SELECTIONS: tuple[Selection, ...] = ("all", "approved", "final")


class ReviewRefused(ValueError):
    """A decision that cannot apply: the reason, in words."""


def reviewable(job: Job, n: int, version: int | None) -> tuple[int, ImageSlot]:
    """The image a decision is about: ``version`` of variant ``n`` (None: the version
    the sheet shows now). ReviewRefused unless that image exists and is finished."""
    if str(n) not in job.variants:
        raise ReviewRefused(f"job {job.job_id} has no variant {n}")
    variant = job.variant(n)
    number, slot = variant.current() if version is None else (version, None)
    if slot is None:
        try:
            slot = variant.slot(number)
        except KeyError:
            raise ReviewRefused(f"variant {n} has no version {number}") from None
    if slot.state != VariantState.DONE or slot.object_name is None:
        raise ReviewRefused(
            f"version {number} of variant {n} has no finished image to review ({slot.state.value})"
        )
    return number, slot


def decide(
    job: Job, n: int, version: int | None, decision: Decision | None, by: str, now: datetime
) -> tuple[Job | None, int]:
    """Record (or, with None, clear) the decision on one image; the version it
    applied to. Rejecting the final pick clears the pick."""
    number, slot = reviewable(job, n, version)
    review = Review(decision=decision, by=by, at=now) if decision is not None else None
    if _same(slot.review, review):
        return None, number
    slot.review = review
    final = job.final
    if (
        decision != "approved"
        and final is not None
        and (final.variant, final.version)
        == (
            n,
            number,
        )
    ):
        job.final = None
    job.updated_at = now
    return job, number


def pick_final(
    job: Job, n: int | None, version: int | None, by: str, now: datetime
) -> tuple[Job | None, tuple[int, int] | None]:
    """Make version ``version`` of variant ``n`` the scene's final pick (approving it);
    ``n`` None clears the pick. Returns the pick as (variant, version)."""
    if n is None:
        if job.final is None:
            return None, None
        job.final = None
        job.updated_at = now
        return job, None
    number, slot = reviewable(job, n, version)
    if job.final is not None and (job.final.variant, job.final.version) == (n, number):
        return None, (n, number)
    job.final = FinalPick(variant=n, version=number, by=by, at=now)
    if slot.review is None or slot.review.decision != "approved":
        slot.review = Review(decision="approved", by=by, at=now)
    job.updated_at = now
    return job, (n, number)


def carry_pick(job: Job, n: int, version: int, now: datetime) -> None:
    """A promotion finished: if it promoted the final pick, the pick (and its
    approval) moves to the larger image."""
    made = job.variant(n).slot(version)
    final = job.final
    if not isinstance(made, Version) or made.promotes is None or final is None:
        return
    if (final.variant, final.version) != (n, made.promotes):
        return
    job.final = FinalPick(variant=n, version=version, by=final.by, at=now)
    made.review = Review(decision="approved", by=final.by, at=now)


def selected(job: Job, selection: Selection) -> list[tuple[int, int]]:
    """The (variant, version) images of the job a delivery of ``selection`` hands
    over: every kept one, the approved ones, or the final pick. Rejected and
    unreviewed images are never in ``approved`` or ``final``."""
    if selection == "final":
        final = job.final
        if final is None:
            return []
        try:
            slot = job.slot(final.variant, final.version)
        except KeyError:
            return []
        return [(final.variant, final.version)] if slot.kept else []
    chosen = []
    for key in sorted(job.variants, key=int):
        for number, slot in job.variants[key].slots():
            if not slot.kept:
                continue
            if selection == "approved" and not _approved(slot):
                continue
            chosen.append((int(key), number))
    return chosen


def _approved(slot: ImageSlot) -> bool:
    return slot.review is not None and slot.review.decision == "approved"


def _same(a: Review | None, b: Review | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.decision == b.decision
