"""Cancel: what has not started never reaches Gemini; what runs finishes and is kept."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TypeVar

from shared.domain.job import TERMINAL_VARIANT_STATES, ImageSlot, Job, VariantState
from shared.domain.lifecycle import CANCELLED_UNMADE, restate

R = TypeVar("R")
Step = tuple[Job | None, R]


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"  # nothing of it runs any more
    CANCELLING = "cancelling"  # ends when the images whose calls are running are made
    ALREADY_CANCELLED = "already_cancelled"
    ALREADY_FINISHED = "already_finished"


@dataclass(frozen=True)
class Cancelled:
    """What a cancel did to one job."""

    outcome: CancelOutcome
    stopped: int  # images this cancel stopped before their Gemini call
    running: int  # images whose call (or Gemini batch) may be running: made ones are kept
    kept: int  # variants with an image


def _open_slots(job: Job) -> list[ImageSlot]:
    return [
        slot
        for variant in job.variants.values()
        for _, slot in variant.slots()
        if slot.state not in TERMINAL_VARIANT_STATES
    ]


def _kept(job: Job) -> int:
    return sum(1 for v in job.variants.values() if v.kept)


def cancel(job: Job, by: str, now: datetime) -> Step[Cancelled]:
    """Stop what has not started: images waiting for their call (pending, also while
    the job waits for the quota, and economy variants not yet in a Gemini batch)
    are cancelled (never made, their budget given back when the ledger settles
    them); images whose call may be running, and economy variants in a Gemini batch,
    finish and are kept, or are cancelled if they come back unmade. The job ends
    ``cancelled`` when the last of them ends; later versions asked for before the
    cancel are cancelled alike."""
    reached = [slot for slot in _open_slots(job) if not slot.cancel_requested]
    if not reached:
        running = len(_open_slots(job))
        if job.cancelled_at is not None:
            outcome = CancelOutcome.ALREADY_CANCELLED
        else:
            outcome = CancelOutcome.ALREADY_FINISHED
        return None, Cancelled(outcome, 0, running, _kept(job))
    stopped = 0
    for slot in reached:
        slot.cancel_requested = True
        if slot.state == VariantState.PENDING:
            slot.state = VariantState.CANCELLED
            slot.error = CANCELLED_UNMADE
            stopped += 1
    if job.cancelled_at is None and not job.terminal:
        job.cancelled_at, job.cancelled_by = now, by
        job.waiting = None  # nothing waits for the quota any more
    job = restate(job, now)
    running = len(_open_slots(job))
    outcome = CancelOutcome.CANCELLING if running else CancelOutcome.CANCELLED
    return job, Cancelled(outcome, stopped, running, _kept(job))
