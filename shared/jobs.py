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
from decimal import Decimal
from enum import StrEnum
from typing import TypeVar

from shared.models import (
    TERMINAL_VARIANT_STATES,
    ImageSlot,
    Job,
    JobState,
    VariantState,
    Version,
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
    """The job state that its variants (their first versions) imply."""
    states = [v.state for v in job.variants.values()]
    if all(s in TERMINAL_VARIANT_STATES for s in states):
        if job.cancelled_at is not None:
            return JobState.CANCELLED
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


def _settle(job: Job, version: int, now: datetime) -> Job:
    """After an image ended: the job state follows its first versions only (a later
    version never reopens or ends a job)."""
    if version == 1:
        return _restate(job, now)
    job.updated_at = now
    return job


def _unclaim(variant: ImageSlot) -> None:
    variant.claim_id = None
    variant.claim_expires = None


def _record_spent(variant: ImageSlot, spent: Spent | None) -> bool:
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


CANCELLED_UNMADE = "cancelled before its Gemini call"


def _give_back(variant: ImageSlot) -> bool:
    """The image goes back to waiting for a call, or, once a cancel reached it, is
    cancelled unmade; True when it was cancelled (an end)."""
    _unclaim(variant)
    if variant.cancel_requested:
        variant.state = VariantState.CANCELLED
        variant.error = CANCELLED_UNMADE
        return True
    variant.state = VariantState.PENDING
    return False


def _count_failure(variant: ImageSlot, error: str, budget: int) -> bool:
    """One more real failure; True when the image ended (its budget used up: failed;
    or a cancel reached it: cancelled)."""
    variant.failures += 1
    variant.error = error
    if variant.failures < budget:
        return _give_back(variant)
    _unclaim(variant)
    variant.state = VariantState.FAILED
    variant.error = f"gave up after {variant.failures} failed attempts; the last: {error}"
    return True


def claim(
    job: Job,
    n: int,
    claim_id: str,
    now: datetime,
    lease: timedelta,
    failure_budget: int,
    version: int = 1,
) -> Step[ClaimResult]:
    """Take the lease on variant ``n`` (version ``version``) unless it is finished or
    held by a live claim.

    A claim whose lease ran out belonged to an instance that stopped mid-call:
    taking it over counts as a real failure of the image.
    """
    variant = job.slot(n, version)
    if variant.state in (VariantState.UPLOADED, *TERMINAL_VARIANT_STATES):
        return None, ClaimResult(VariantClaim.FINISHED)
    held_by_other = variant.state == VariantState.GENERATING and variant.claim_id != claim_id
    if held_by_other and variant.claim_expires is not None and variant.claim_expires > now:
        return None, ClaimResult(VariantClaim.HELD, variant.claim_expires)
    if held_by_other and _count_failure(variant, HOLDER_STOPPED, failure_budget):
        return _settle(job, version, now), ClaimResult(VariantClaim.FINISHED)
    renewal = variant.state == VariantState.GENERATING and variant.claim_id == claim_id
    variant.state = VariantState.GENERATING
    variant.claim_id = claim_id
    variant.claim_expires = now + lease
    if not renewal:
        variant.attempts += 1
        variant.error = None  # this attempt's outcome is what counts from now on
    job.waiting = None
    job.updated_at = now
    if version == 1:
        if job.started_at is None:
            job.started_at = now
        job.state = derive_state(job)
    return job, ClaimResult(VariantClaim.CLAIMED, variant.claim_expires, variant.attempts)


def release(job: Job, n: int, claim_id: str, now: datetime, version: int = 1) -> Step[None]:
    """Give the lease back unused (a wait, not a failure), so a redelivery can retry;
    an image that a cancel reached is cancelled instead."""
    variant = job.slot(n, version)
    if variant.state != VariantState.GENERATING or variant.claim_id != claim_id:
        return None, None
    if _give_back(variant):
        return _settle(job, version, now), None
    job.updated_at = now
    return job, None


def attempt_failed(
    job: Job,
    n: int,
    claim_id: str,
    error: str,
    now: datetime,
    failure_budget: int,
    version: int = 1,
) -> Step[bool]:
    """A real failure of the attempt that holds the claim; the value says whether the
    image ended (it used up its failure budget, or a cancel reached it)."""
    variant = job.slot(n, version)
    if variant.state != VariantState.GENERATING or variant.claim_id != claim_id:
        return None, False
    if _count_failure(variant, error, failure_budget):
        return _settle(job, version, now), True
    job.updated_at = now
    return job, False


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
    version: int = 1,
) -> Step[None]:
    """Record that the image object exists (whoever wrote it) and what it cost.

    The finalize notification may be handled first (say, after a crash between
    upload and this record): then the variant is already done, and only the
    cost is added, if it is still missing.
    """
    variant = job.slot(n, version)
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
    if version == 1:
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
    version: int = 1,
) -> Step[None]:
    """A permanent failure of variant ``n`` (version ``version``).

    With ``claim_id`` (the generator's failure) it applies only while that claim
    holds, so it can never overwrite an image another delivery produced. An
    image that exists but failed later (its thumbnail) still cost ``spent``.
    """
    variant = job.slot(n, version)
    if variant.state in TERMINAL_VARIANT_STATES:
        return None, None
    if claim_id is not None and variant.claim_id != claim_id:
        return None, None
    variant.state = VariantState.FAILED
    variant.error = reason
    _record_spent(variant, spent)
    _unclaim(variant)
    return _settle(job, version, now), None


def thumbnail_done(
    job: Job,
    n: int,
    object_name: str,
    thumb_name: str,
    now: datetime,
    spent: Spent | None = None,
    version: int = 1,
) -> Step[None]:
    """Variant ``n`` (version ``version``) has its thumbnail; ``spent`` fills in a
    cost not recorded yet."""
    variant = job.slot(n, version)
    if variant.state == VariantState.DONE:
        return None, None
    variant.state = VariantState.DONE
    variant.object_name = variant.object_name or object_name
    variant.thumb_name = thumb_name
    _record_spent(variant, spent)
    variant.error = None
    _unclaim(variant)
    variant.done_at = now
    return _settle(job, version, now), None


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


# ---------------------------------------------------------------------- cancel


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
    running: int  # images whose call may be running: they finish and are kept
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
    """Stop what has not started: images waiting for their call are cancelled (never
    made, their budget given back by the ledger); images whose call may be running
    finish and are kept. The job ends ``cancelled`` when the last of them ends;
    later versions asked for before the cancel are cancelled alike."""
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
    job = _restate(job, now)
    running = len(_open_slots(job))
    outcome = CancelOutcome.CANCELLING if running else CancelOutcome.CANCELLED
    return job, Cancelled(outcome, stopped, running, _kept(job))


# ---------------------------------------------------------------------- later versions

# Versions one variant may have (they live in the job's document).
MAX_VERSIONS = 50


@dataclass(frozen=True)
class VersionRequest:
    """A re-roll (no instruction) or an edit of one variant, as asked for."""

    instruction: str | None
    seed: int
    caller: str
    budget_day: str
    price_per_image: str


@dataclass(frozen=True)
class VersionAdded:
    version: int | None  # the new version's number, or None with the reason
    refusal: str | None = None


def add_version(job: Job, n: int, request: VersionRequest, now: datetime) -> Step[VersionAdded]:
    """Add the next version of variant ``n``: a new image, the earlier ones kept."""
    variant = job.variant(n)
    if variant.state not in TERMINAL_VARIANT_STATES:
        return None, VersionAdded(None, f"variant {n} is still being made; try when it is done")
    if len(variant.versions) + 1 >= MAX_VERSIONS:
        return None, VersionAdded(None, f"variant {n} has {MAX_VERSIONS} versions already")
    source_version, source = variant.current()
    if request.instruction and (source.state != VariantState.DONE or not source.object_name):
        return None, VersionAdded(None, f"variant {n} has no image to edit")
    number = max((v.version for v in variant.versions), default=1) + 1
    variant.versions.append(
        Version(
            version=number,
            instruction=request.instruction,
            seed=request.seed,
            source_object=source.object_name if request.instruction else None,
            source_version=source_version if request.instruction else None,
            requested_at=now,
            caller=request.caller,
            budget_day=request.budget_day,
            price_per_image=request.price_per_image,
        )
    )
    job.updated_at = now
    return job, VersionAdded(number)


def version_notes(job: Job) -> list[str]:
    """What the sheet says about later versions: one being made, or the newest failed
    (the image before it stays shown)."""
    notes = []
    for key in sorted(job.variants, key=int):
        variant = job.variants[key]
        if not variant.versions:
            continue
        latest = variant.versions[-1]
        word = "edit" if latest.kind == "edit" else "re-roll"
        if latest.state in (VariantState.PENDING, VariantState.GENERATING, VariantState.UPLOADED):
            notes.append(f"variant {variant.n}: {word} (v{latest.version}) being made")
        elif latest.state == VariantState.FAILED:
            notes.append(f"variant {variant.n}: {word} (v{latest.version}) failed: {latest.error}")
    return notes


# ---------------------------------------------------------------------- refunds


@dataclass(frozen=True)
class Refund:
    """The budget reserved for one image that was cancelled unmade."""

    key: str  # one image: job/variant[/version]
    caller: str
    day: str
    cost: Decimal


def refund_key(job_id: str, n: int, version: int = 1) -> str:
    return f"{job_id}/{n}" if version == 1 else f"{job_id}/{n}/v{version}"


def refunds_due(job: Job) -> list[Refund]:
    """Cancelled images whose reserved budget has not been given back yet."""
    due = []
    for variant in job.variants.values():
        for number, slot in variant.slots():
            if slot.state != VariantState.CANCELLED or slot.refunded:
                continue
            key = refund_key(job.job_id, variant.n, number)
            if isinstance(slot, Version):
                due.append(Refund(key, slot.caller, slot.budget_day, Decimal(slot.price_per_image)))
            else:
                due.append(Refund(key, job.caller, job.reserved_day, Decimal(job.price_per_image)))
    return due


def refunded(job: Job, keys: frozenset[str]) -> Step[None]:
    """Record that these images' budget was given back (``refunds_due`` keys)."""
    changed = False
    for variant in job.variants.values():
        for number, slot in variant.slots():
            if refund_key(job.job_id, variant.n, number) in keys and not slot.refunded:
                slot.refunded = True
                changed = True
    return (job if changed else None), None


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
    generating, waiting, paused, cancelling, completed, partial, failed,
    cancelled), so a reader of the sheet can tell a final state from its first
    word; notes on later versions (re-rolls, edits) follow after a semicolon.
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
    elif job.state == JobState.CANCELLED:
        text = f"cancelled ({done}/{total} kept)"
    elif job.cancelled_at is not None:
        text = f"cancelling ({done}/{total})"
    elif waiting_shown(job) and job.waiting is not None:
        text = waiting_text(job.waiting, done, total)
    elif job.state == JobState.QUEUED:
        text = "queued"
    else:
        text = f"generating ({done}/{total})"
    notes = version_notes(job)
    if notes:
        text = "; ".join([text, *notes])
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
