"""Pure state transitions of a job and its variants.

Every function takes the current ``Job`` (read inside a store transaction) and
returns the updated job, or ``None`` when nothing changes, plus a result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from shared.models import (
    TERMINAL_VARIANT_STATES,
    Job,
    JobState,
    VariantState,
)


@dataclass(frozen=True)
class Spent:
    """What one generation of a variant cost."""

    model: str
    cost_usd: str
    usage: Mapping[str, int] = field(default_factory=dict)


class Claim(StrEnum):
    """Outcome of trying to claim a variant before paying for it."""

    CLAIMED = "claimed"
    FINISHED = "finished"  # generated (or failed) already: never pay again
    HELD = "held"  # another live delivery holds the lease


def derive_state(job: Job) -> JobState:
    """The job state that its variants imply."""
    states = [v.state for v in job.variants.values()]
    if all(s in TERMINAL_VARIANT_STATES for s in states):
        if all(s == VariantState.DONE for s in states):
            return JobState.COMPLETED
        if all(s == VariantState.FAILED for s in states):
            return JobState.FAILED
        return JobState.PARTIAL
    if job.started_at is None and all(s == VariantState.PENDING for s in states):
        return JobState.QUEUED
    return JobState.GENERATING


def _settle(job: Job, now: datetime) -> bool:
    """Recompute the job state; True when this change made the job terminal."""
    was_terminal = job.terminal
    job.state = derive_state(job)
    job.updated_at = now
    if job.terminal and not was_terminal:
        job.finished_at = now
        failed = [v for v in job.variants.values() if v.state == VariantState.FAILED]
        job.error = "; ".join(f"variant {v.n}: {v.error}" for v in failed) or None
        return True
    return False


def start(job: Job, now: datetime) -> tuple[Job | None, bool]:
    """Mark a queued job as generating; the bool says whether it was queued."""
    if job.state != JobState.QUEUED:
        return None, False
    job.started_at = now
    job.state = JobState.GENERATING
    job.updated_at = now
    return job, True


def claim(
    job: Job, n: int, claim_id: str, now: datetime, lease: timedelta
) -> tuple[Job | None, tuple[Claim, datetime | None]]:
    """Take the lease on variant ``n`` unless it is finished or held by a live claim."""
    variant = job.variant(n)
    if variant.state in (VariantState.UPLOADED, *TERMINAL_VARIANT_STATES):
        return None, (Claim.FINISHED, None)
    if (
        variant.state == VariantState.GENERATING
        and variant.claim_id != claim_id
        and variant.claim_expires is not None
        and variant.claim_expires > now
    ):
        return None, (Claim.HELD, variant.claim_expires)
    variant.state = VariantState.GENERATING
    variant.claim_id = claim_id
    variant.claim_expires = now + lease
    variant.attempts += 1
    job.updated_at = now
    if job.started_at is None:
        job.started_at = now
    job.state = derive_state(job)
    return job, (Claim.CLAIMED, variant.claim_expires)


def release(job: Job, n: int, claim_id: str, error: str, now: datetime) -> tuple[Job | None, None]:
    """Give the lease back after a transient failure, so a redelivery can retry."""
    variant = job.variant(n)
    if variant.state != VariantState.GENERATING or variant.claim_id != claim_id:
        return None, None
    variant.state = VariantState.PENDING
    variant.claim_id = None
    variant.claim_expires = None
    variant.error = error
    job.updated_at = now
    return job, None


def uploaded(
    job: Job,
    n: int,
    object_name: str,
    content_type: str,
    now: datetime,
    spent: Spent | None = None,
) -> tuple[Job | None, None]:
    """Record that the image object exists (whoever wrote it) and what it cost."""
    variant = job.variant(n)
    # DONE or FAILED (say, its thumbnail could not be made) is final.
    if variant.state in (VariantState.UPLOADED, *TERMINAL_VARIANT_STATES):
        return None, None
    variant.state = VariantState.UPLOADED
    variant.object_name = object_name
    variant.content_type = content_type
    if spent is not None:
        variant.model, variant.cost_usd = spent.model, spent.cost_usd
        variant.usage = dict(spent.usage)
    variant.error = None
    variant.claim_id = None
    variant.claim_expires = None
    variant.generated_at = now
    job.state = derive_state(job)
    job.updated_at = now
    return job, None


def variant_failed(
    job: Job, n: int, reason: str, now: datetime, claim_id: str | None = None
) -> tuple[Job | None, bool]:
    """A permanent failure of variant ``n``; the bool says the job just finished.

    With ``claim_id`` (the generator's failure) it applies only while that claim
    holds, so it can never overwrite an image another delivery produced.
    """
    variant = job.variant(n)
    if variant.state in TERMINAL_VARIANT_STATES:
        return None, False
    if claim_id is not None and variant.claim_id != claim_id:
        return None, False
    variant.state = VariantState.FAILED
    variant.error = reason
    variant.claim_id = None
    variant.claim_expires = None
    return job, _settle(job, now)


def thumbnail_done(
    job: Job, n: int, object_name: str, thumb_name: str, now: datetime
) -> tuple[Job | None, bool]:
    """Variant ``n`` has its thumbnail; the bool is True exactly once per job."""
    variant = job.variant(n)
    if variant.state == VariantState.DONE:
        return None, False
    variant.state = VariantState.DONE
    variant.object_name = variant.object_name or object_name
    variant.thumb_name = thumb_name
    variant.error = None
    variant.claim_id = None
    variant.claim_expires = None
    variant.done_at = now
    return job, _settle(job, now)


def fail_job(job: Job, reason: str, now: datetime) -> tuple[Job | None, bool]:
    """Fail every unfinished variant (unpublishable or dead-lettered job)."""
    if job.terminal:
        return None, False
    for variant in job.variants.values():
        if variant.state not in (VariantState.UPLOADED, *TERMINAL_VARIANT_STATES):
            variant.state = VariantState.FAILED
            variant.error = reason
            variant.claim_id = None
            variant.claim_expires = None
    return job, _settle(job, now)


@dataclass(frozen=True)
class Progress:
    """What the sheet shows for a job."""

    status: str
    done: int
    total: int


def progress(job: Job) -> Progress:
    """The sheet's ``status_img`` text for the job's current state."""
    total = job.variant_count
    done = sum(1 for v in job.variants.values() if v.state == VariantState.DONE)
    if job.state == JobState.COMPLETED:
        text = "completed"
    elif job.state == JobState.FAILED:
        text = f"failed: {job.error or 'unknown error'}"
    elif job.state == JobState.PARTIAL:
        text = f"partial ({done}/{total}): {job.error or ''}".rstrip(": ")
    elif job.state == JobState.QUEUED:
        text = "queued"
    else:
        text = f"generating ({done}/{total})"
    return Progress(status=text, done=done, total=total)
