"""Pure state transitions of a job and its variants.

Every transition takes the current ``Job`` and returns ``(updated job, value)``,
with ``None`` for the job when nothing changes. The job ledger
(``shared/services/ledger.py``) is the only caller that stores the result: it
runs a transition on the stored job (perhaps more than once, under
compare-and-set), and works out itself whether the change finished the job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import TypeVar

from shared.models import (
    TERMINAL_VARIANT_STATES,
    GeminiBatchRef,
    Job,
    JobState,
    Variant,
    VariantState,
    Waiting,
    WaitReason,
)

R = TypeVar("R")
Step = tuple[Job | None, R]

# What a claim that ran out says about its holder: the lease covers the whole
# Gemini budget, so only an instance that stopped (killed, crashed) lets it expire.
HOLDER_STOPPED = "the instance stopped during the Gemini call"
# A new wait replaces the recorded one only when it moves its end by more than
# this, so that a row reading "resumes about 14:05" is not rewritten every second.
WAIT_GRANULARITY = timedelta(seconds=60)


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
        job.waiting = None
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


def _count_failure(variant: Variant, error: str, budget: int) -> bool:
    """One more real failure; True when it used up the budget (the variant failed)."""
    variant.failures += 1
    variant.error = error
    _unclaim(variant)
    if variant.failures < budget:
        variant.state = VariantState.PENDING
        return False
    variant.state = VariantState.FAILED
    variant.error = f"gave up after {variant.failures} failed attempts; the last: {error}"
    return True


def claim(
    job: Job, n: int, claim_id: str, now: datetime, lease: timedelta, failure_budget: int
) -> Step[ClaimResult]:
    """Take the lease on variant ``n`` unless it is finished or held by a live claim.

    A claim whose lease ran out belonged to an instance that stopped mid-call:
    taking it over counts as a real failure of the variant.
    """
    variant = job.variant(n)
    # A variant in a Gemini batch is the economy collector's: never generated here.
    if variant.state in (VariantState.UPLOADED, VariantState.BATCHED, *TERMINAL_VARIANT_STATES):
        return None, ClaimResult(VariantClaim.FINISHED)
    held_by_other = variant.state == VariantState.GENERATING and variant.claim_id != claim_id
    if held_by_other and variant.claim_expires is not None and variant.claim_expires > now:
        return None, ClaimResult(VariantClaim.HELD, variant.claim_expires)
    if held_by_other and _count_failure(variant, HOLDER_STOPPED, failure_budget):
        return _restate(job, now), ClaimResult(VariantClaim.FINISHED)
    renewal = variant.state == VariantState.GENERATING and variant.claim_id == claim_id
    variant.state = VariantState.GENERATING
    variant.claim_id = claim_id
    variant.claim_expires = now + lease
    if not renewal:
        variant.attempts += 1
        variant.error = None  # this attempt's outcome is what counts from now on
    job.waiting = None
    job.updated_at = now
    if job.started_at is None:
        job.started_at = now
    job.state = derive_state(job)
    return job, ClaimResult(VariantClaim.CLAIMED, variant.claim_expires, variant.attempts)


def release(job: Job, n: int, claim_id: str, now: datetime) -> Step[None]:
    """Give the lease back unused (a wait, not a failure), so a redelivery can retry."""
    variant = job.variant(n)
    if variant.state != VariantState.GENERATING or variant.claim_id != claim_id:
        return None, None
    variant.state = VariantState.PENDING
    _unclaim(variant)
    job.updated_at = now
    return job, None


def attempt_failed(
    job: Job, n: int, claim_id: str, error: str, now: datetime, failure_budget: int
) -> Step[bool]:
    """A real failure of the attempt that holds the claim; the value says whether it
    used up the variant's failure budget (then the variant failed for good)."""
    variant = job.variant(n)
    if variant.state != VariantState.GENERATING or variant.claim_id != claim_id:
        return None, False
    if _count_failure(variant, error, failure_budget):
        return _restate(job, now), True
    job.updated_at = now
    return job, False


# ------------------------------------------------------------------ economy lane


def batch_claim(job: Job, n: int, record: str, now: datetime) -> Step[bool]:
    """Take pending variant ``n`` into our economy batch ``record`` (before the
    Gemini batch exists, so no variant is ever submitted twice)."""
    variant = job.variant(n)
    if variant.state != VariantState.PENDING or job.terminal:
        return None, False
    variant.state = VariantState.BATCHED
    variant.gemini_batch = record
    variant.attempts += 1
    if not any(ref.record == record for ref in job.gemini_batches):
        job.gemini_batches.append(GeminiBatchRef(record=record))
    if job.started_at is None:
        job.started_at = now
    job.state = derive_state(job)
    job.updated_at = now
    return job, True


def batch_update(
    job: Job, record: str, now: datetime, name: str | None = None, state: str | None = None
) -> Step[None]:
    """What Gemini says of the batch (its name, its state), for /status and the row."""
    ref = next((r for r in job.gemini_batches if r.record == record), None)
    if ref is None or (
        (name is None or ref.name == name) and (state is None or ref.state == state)
    ):
        return None, None
    if name is not None:
        ref.name = name
    if state is not None:
        ref.state = state  # type: ignore[assignment]
    job.updated_at = now
    return job, None


def batch_returned(
    job: Job, n: int, record: str, now: datetime, reason: str | None = None
) -> Step[None]:
    """Variant ``n`` left batch ``record`` unmade: back to pending for the live lane,
    or, with a ``reason``, failed."""
    variant = job.variant(n)
    if variant.state != VariantState.BATCHED or variant.gemini_batch != record:
        return None, None
    if reason is not None:
        variant.state = VariantState.FAILED
        variant.error = reason
        return _restate(job, now), None
    variant.state = VariantState.PENDING
    job.updated_at = now
    return job, None


def wait(job: Job, reason: WaitReason, until: datetime, now: datetime) -> Step[None]:
    """The job cannot progress until about ``until`` (say, the Gemini quota)."""
    if job.terminal:
        return None, None
    current = job.waiting
    if (
        current is not None
        and current.reason == reason
        and abs((current.until - until).total_seconds()) <= WAIT_GRANULARITY.total_seconds()
    ):
        return None, None
    since = current.since if current is not None and current.reason == reason else now
    job.waiting = Waiting(reason=reason, until=until, since=since)
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


def settlement(job: Job, n: int) -> tuple[int, Decimal] | None:
    """How variant ``n``'s budget reservation (one image at the job's estimate)
    must be corrected, once that is known: by what the image actually cost, or,
    for a variant that failed without an image, all of it. None: not yet, or done."""
    variant = job.variant(n)
    if variant.settled or job.budget_day is None:
        return None
    estimate = Decimal(job.price_per_image)
    if variant.cost_usd is not None:
        return 0, Decimal(variant.cost_usd) - estimate
    if variant.state == VariantState.FAILED:
        return -1, -estimate
    return None


def mark_settled(job: Job, numbers: Sequence[int], now: datetime) -> Step[None]:
    """The budget of these variants was settled."""
    pending = [n for n in numbers if not job.variant(n).settled]
    if not pending:
        return None, None
    for n in pending:
        job.variant(n).settled = True
    job.updated_at = now
    return job, None


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

    The text always starts with a word that says where the job is (queued,
    generating, waiting, paused, economy, completed, partial, failed), so a reader of the
    sheet can tell a final state from its first word.
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
    elif waiting_shown(job) and job.waiting is not None:
        text = waiting_text(job.waiting, done, total)
    elif job.lane == "economy" and (words := economy_text(job, done, total)):
        text = words
    elif job.state == JobState.QUEUED:
        text = "queued"
    else:
        text = f"generating ({done}/{total})"
    return Progress(state=job.state, done=done, failed=failed, total=total, status=text)


def last_cause(job: Job) -> str:
    """What kept the job from finishing, in words, for a job that is given up on.

    The wait it is in; else the last real error of an unfinished variant (each
    attempt starts with a clean slate, so it is never an earlier delivery's);
    else a claim whose holder never came back.
    """
    if job.waiting is not None:
        if job.waiting.reason == "daily_quota":
            return "it was paused: the daily Gemini quota was used up"
        return "it was waiting for the Gemini quota"
    finished = (VariantState.UPLOADED, *TERMINAL_VARIANT_STATES)
    unfinished = [v for v in job.variants.values() if v.state not in finished]
    errors = [v.error for v in unfinished if v.error]
    if errors:
        return errors[-1]
    if any(v.state == VariantState.GENERATING for v in unfinished):
        return HOLDER_STOPPED + " (or was still in it)"
    return "no delivery reached a Gemini call (instances busy or failing before it)"


def economy_text(job: Job, done: int, total: int) -> str | None:
    """Where an economy job is, until its images come back; then progress as any job's."""
    variants = job.variants.values()
    if any(v.state == VariantState.BATCHED for v in variants):
        states = {r.state for r in job.gemini_batches}
        where = "Gemini batch running" if "running" in states else "waiting for the Gemini batch"
        return f"economy: {where} ({done}/{total})"
    if job.state == JobState.QUEUED:
        return "economy: queued for a Gemini batch"
    return None


def waiting_shown(job: Job) -> bool:
    """A job waits only while none of its variants is being made."""
    return (
        job.waiting is not None
        and not job.terminal
        and not any(v.state == VariantState.GENERATING for v in job.variants.values())
    )


def waiting_text(waiting: Waiting, done: int, total: int) -> str:
    if waiting.reason == "daily_quota":
        return (
            f"paused ({done}/{total}): daily Gemini quota reached, resumes after midnight Pacific"
        )
    # Rounded up: "about" should not promise a minute too early.
    resume = (waiting.until + timedelta(seconds=59)).strftime("%H:%M")
    return f"waiting ({done}/{total}) for the Gemini quota, resumes about {resume} UTC"
