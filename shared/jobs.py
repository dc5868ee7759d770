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


def _image_ended(job: Job, version: int, now: datetime) -> Job:
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
CANCELLED_IN_BATCH = "cancelled; its Gemini batch did not make it"


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
    # A variant in a Gemini batch is the economy collector's: never generated here.
    if variant.state in (VariantState.UPLOADED, VariantState.BATCHED, *TERMINAL_VARIANT_STATES):
        return None, ClaimResult(VariantClaim.FINISHED)
    held_by_other = variant.state == VariantState.GENERATING and variant.claim_id != claim_id
    if held_by_other and variant.claim_expires is not None and variant.claim_expires > now:
        return None, ClaimResult(VariantClaim.HELD, variant.claim_expires)
    if held_by_other and _count_failure(variant, HOLDER_STOPPED, failure_budget):
        return _image_ended(job, version, now), ClaimResult(VariantClaim.FINISHED)
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
        return _image_ended(job, version, now), None
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
        return _image_ended(job, version, now), True
    job.updated_at = now
    return job, False


def references_failed(
    job: Job, images: Sequence[tuple[int, int]], error: str, now: datetime, failure_budget: int
) -> Step[bool]:
    """The job's references could not be read (a slow or failing server): a real
    failure, before any claim, counted on each of ``images`` ((variant, version)
    pairs) still waiting for a call. The value says whether one of them ended."""
    counted = ended = False
    for n, version in images:
        slot = job.slot(n, version)
        if slot.state != VariantState.PENDING:
            continue
        counted = True
        ended = _count_failure(slot, error, failure_budget) or ended
    if not counted:
        return None, False
    if ended and any(version == 1 for _, version in images):
        return _restate(job, now), True
    job.updated_at = now
    return job, ended


# ------------------------------------------------------------------ economy lane


def batch_claim(job: Job, n: int, record: str, now: datetime) -> Step[bool]:
    """Take pending variant ``n`` into our economy batch ``record`` (before the
    Gemini batch exists, so no variant is ever submitted twice)."""
    variant = job.variant(n)
    if variant.state != VariantState.PENDING or job.terminal or job.cancelled_at is not None:
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
    or, with a ``reason``, failed; once a cancel reached it, cancelled (it was never
    made, so its reserved budget goes back)."""
    variant = job.variant(n)
    if variant.state != VariantState.BATCHED or variant.gemini_batch != record:
        return None, None
    if variant.cancel_requested:
        variant.state = VariantState.CANCELLED
        variant.error = CANCELLED_IN_BATCH + (f" ({reason})" if reason else "")
        return _restate(job, now), None
    if reason is not None:
        variant.state = VariantState.FAILED
        variant.error = reason
        return _restate(job, now), None
    variant.state = VariantState.PENDING
    job.updated_at = now
    return job, None


def batch_dropped(
    job: Job,
    n: int,
    record: str,
    now: datetime,
    error: str | None = None,
    failure_budget: int = 1,
) -> Step[bool]:
    """Variant ``n`` left batch ``record`` before Gemini saw it, back to pending for
    a later batch: its references are not ready yet, or (with ``error``) could not
    be read, a real failure that is counted. The value says whether it ended."""
    variant = job.variant(n)
    if variant.state != VariantState.BATCHED or variant.gemini_batch != record:
        return None, False
    variant.gemini_batch = None
    ended = _count_failure(variant, error, failure_budget) if error else _give_back(variant)
    if not any(v.gemini_batch == record for v in job.variants.values()):
        job.gemini_batches = [ref for ref in job.gemini_batches if ref.record != record]
    if ended:
        return _restate(job, now), True
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
    return _image_ended(job, version, now), None


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
    return _image_ended(job, version, now), None


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


# ---------------------------------------------------------------------- budget settlement


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
    cancelled unmade), all of it. None twice: a settled image is skipped."""
    due = []
    for key in sorted(job.variants, key=int):
        variant = job.variants[key]
        for number, slot in variant.slots():
            reserved = None if slot.settled else _reservation(job, slot)
            if reserved is None:
                continue
            caller, day, estimate = reserved
            if slot.cost_usd is not None:
                images, cost = 0, Decimal(slot.cost_usd) - estimate
            elif slot.state in (VariantState.FAILED, VariantState.CANCELLED):
                images, cost = -1, -estimate
            else:
                continue
            image = settlement_key(job.job_id, variant.n, number)
            due.append(Settlement(variant.n, number, image, caller, day, images, cost))
    return due


def mark_settled(job: Job, images: Sequence[tuple[int, int]], now: datetime) -> Step[None]:
    """The budget of these images (variant, version) was settled."""
    pending = [job.slot(n, k) for n, k in images if not job.slot(n, k).settled]
    if not pending:
        return None, None
    for slot in pending:
        slot.settled = True
    job.updated_at = now
    return job, None


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
    generating, waiting, paused, economy, cancelling, completed, partial, failed,
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
    elif job.lane == "economy" and (words := economy_text(job, done, total)):
        text = words
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
