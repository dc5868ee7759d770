"""Pure state transitions of a job and its variants.

Every transition takes the current ``Job`` and returns ``(updated job, value)``,
with ``None`` for the job when nothing changes. The job ledger
(``shared/services/ledger.py``) is the only caller that stores the result: it
runs a transition on the stored job (perhaps more than once, under
compare-and-set), and works out itself whether the change finished the job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TypeVar

from shared.models import TERMINAL_VARIANT_STATES, Job, JobState, Variant, VariantState

R = TypeVar("R")
Step = tuple[Job | None, R]


@dataclass(frozen=True)
class Spent:
    """What one generation of a variant cost."""

    model: str
    cost_usd: str
    usage: Mapping[str, int] = field(default_factory=dict)


class VariantClaim(StrEnum):
    """Outcome of trying to claim a variant before paying for it."""

    CLAIMED = "claimed"
    FINISHED = "finished"  # generated (or failed) already: never pay again
    HELD = "held"  # another live delivery holds the lease


@dataclass(frozen=True)
class ClaimResult:
    outcome: VariantClaim
    expires: datetime | None = None  # the lease's end: ours when claimed, the holder's when held
    attempt: int = 0  # which claim of the variant this is (when claimed)


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


def _restate(job: Job, now: datetime) -> Job:
    """Recompute the job state after a variant changed; stamp the end once."""
    was_terminal = job.terminal
    job.state = derive_state(job)
    job.updated_at = now
    if job.terminal and not was_terminal:
        job.finished_at = now
        failed = [v for v in job.variants.values() if v.state == VariantState.FAILED]
        job.error = "; ".join(f"variant {v.n}: {v.error}" for v in failed) or None
    return job


def _unclaim(variant: Variant) -> None:
    variant.claim_id = None
    variant.claim_expires = None


def _record_spent(variant: Variant, spent: Spent | None) -> bool:
    """Store what the image cost unless it is known already; True if stored."""
    if spent is None or variant.cost_usd is not None:
        return False
    variant.model, variant.cost_usd = spent.model, spent.cost_usd
    variant.usage = dict(spent.usage)
    return True


def start(job: Job, now: datetime) -> Step[bool]:
    """Mark a queued job as generating; the value says whether it was queued."""
    if job.state != JobState.QUEUED:
        return None, False
    job.started_at = now
    job.state = JobState.GENERATING
    job.updated_at = now
    return job, True


def claim(job: Job, n: int, claim_id: str, now: datetime, lease: timedelta) -> Step[ClaimResult]:
    """Take the lease on variant ``n`` unless it is finished or held by a live claim."""
    variant = job.variant(n)
    if variant.state in (VariantState.UPLOADED, *TERMINAL_VARIANT_STATES):
        return None, ClaimResult(VariantClaim.FINISHED)
    if (
        variant.state == VariantState.GENERATING
        and variant.claim_id != claim_id
        and variant.claim_expires is not None
        and variant.claim_expires > now
    ):
        return None, ClaimResult(VariantClaim.HELD, variant.claim_expires)
    variant.state = VariantState.GENERATING
    variant.claim_id = claim_id
    variant.claim_expires = now + lease
    variant.attempts += 1
    job.updated_at = now
    if job.started_at is None:
        job.started_at = now
    job.state = derive_state(job)
    return job, ClaimResult(VariantClaim.CLAIMED, variant.claim_expires, variant.attempts)


def release(job: Job, n: int, claim_id: str, error: str, now: datetime) -> Step[None]:
    """Give the lease back after a transient failure, so a redelivery can retry."""
    variant = job.variant(n)
    if variant.state != VariantState.GENERATING or variant.claim_id != claim_id:
        return None, None
    variant.state = VariantState.PENDING
    _unclaim(variant)
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
) -> Step[None]:
    """Record that the image object exists (whoever wrote it) and what it cost.

    The finalize notification may be handled first (say, after a crash between
    upload and this record): then the variant is already done, and only the
    cost is added, if it is still missing.
    """
    variant = job.variant(n)
    if variant.state in (VariantState.UPLOADED, *TERMINAL_VARIANT_STATES):
        # DONE or FAILED (say, its thumbnail could not be made) is final.
        if not _record_spent(variant, spent):
            return None, None
        job.updated_at = now
        return job, None
    variant.state = VariantState.UPLOADED
    variant.object_name = object_name
    variant.content_type = content_type
    _record_spent(variant, spent)
    variant.error = None
    _unclaim(variant)
    variant.generated_at = now
    job.state = derive_state(job)
    job.updated_at = now
    return job, None


def variant_failed(
    job: Job,
    n: int,
    reason: str,
    now: datetime,
    claim_id: str | None = None,
    spent: Spent | None = None,
) -> Step[None]:
    """A permanent failure of variant ``n``.

    With ``claim_id`` (the generator's failure) it applies only while that claim
    holds, so it can never overwrite an image another delivery produced. An
    image that exists but failed later (its thumbnail) still cost ``spent``.
    """
    variant = job.variant(n)
    if variant.state in TERMINAL_VARIANT_STATES:
        return None, None
    if claim_id is not None and variant.claim_id != claim_id:
        return None, None
    variant.state = VariantState.FAILED
    variant.error = reason
    _record_spent(variant, spent)
    _unclaim(variant)
    return _restate(job, now), None


def thumbnail_done(
    job: Job,
    n: int,
    object_name: str,
    thumb_name: str,
    now: datetime,
    spent: Spent | None = None,
) -> Step[None]:
    """Variant ``n`` has its thumbnail; ``spent`` fills in a cost not recorded yet."""
    variant = job.variant(n)
    if variant.state == VariantState.DONE:
        return None, None
    variant.state = VariantState.DONE
    variant.object_name = variant.object_name or object_name
    variant.thumb_name = thumb_name
    _record_spent(variant, spent)
    variant.error = None
    _unclaim(variant)
    variant.done_at = now
    return _restate(job, now), None


def fail_job(job: Job, reason: str, now: datetime) -> Step[None]:
    """Fail every unfinished variant (unpublishable, too old or dead-lettered job)."""
    if job.terminal:
        return None, None
    changed = False
    for variant in job.variants.values():
        if variant.state not in (VariantState.UPLOADED, *TERMINAL_VARIANT_STATES):
            variant.state = VariantState.FAILED
            variant.error = reason
            _unclaim(variant)
            changed = True
    # Uploaded variants still get their thumbnails; those end the job.
    return (_restate(job, now) if changed else None), None


@dataclass(frozen=True)
class Progress:
    """Where a job stands: counts for machines, words for the sheet."""

    state: JobState
    done: int
    failed: int
    total: int
    status: str


def progress(job: Job) -> Progress:
    """The counts and the sheet's ``status_img`` text for the job's current state.

    The text always starts with the state's name, so a reader of the sheet can
    tell a final state from its first word.
    """
    total = job.variant_count
    done = sum(1 for v in job.variants.values() if v.state == VariantState.DONE)
    failed = sum(1 for v in job.variants.values() if v.state == VariantState.FAILED)
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
    return Progress(state=job.state, done=done, failed=failed, total=total, status=text)
