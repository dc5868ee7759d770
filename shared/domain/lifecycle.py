"""Pure state transitions of a job and its variants in the live lane.

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
from enum import StrEnum
from typing import TypeVar

from shared.domain import reviews
from shared.domain.job import (
    TERMINAL_JOB_STATES,
    TERMINAL_VARIANT_STATES,
    ImageSlot,
    Job,
    JobState,
    VariantState,
    Waiting,
    WaitReason,
)

R = TypeVar("R")
Step = tuple[Job | None, R]

# What a claim that ran out says about its holder: a live holder renews its lease
# while it works, so only an instance that stopped (killed, crashed, stalled) lets
# it expire.
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
    # Taken over from a holder that stopped, which used up the failure budget: the new
    # holder records the dead one's image if it exists, and otherwise fails the
    # variant; it never pays for another call.
    last_chance: bool = False


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


def restate(job: Job, now: datetime) -> Job:
    """Recompute the job state after a variant changed; stamp the end once."""
    was_terminal = job.terminal
    derived = derive_state(job)
    # A job ends once: an image of a variant given up on that lands after all (its
    # holder had stalled past its lease) finishes within the ended job.
    if not was_terminal or derived in TERMINAL_JOB_STATES:
        job.state = derived
    job.updated_at = now
    if job.terminal and not was_terminal:
        job.finished_at = now
        job.waiting = None
    if job.terminal:
        # Also after the job ended: an image of a variant given up on may still land.
        failed = [v for v in job.variants.values() if v.state == VariantState.FAILED]
        job.error = "; ".join(f"variant {v.n}: {v.error}" for v in failed) or None
    return job


def _image_ended(job: Job, version: int, now: datetime) -> Job:
    """After an image ended: the job state follows its first versions only (a later
    version never reopens or ends a job)."""
    if version == 1:
        return restate(job, now)
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


def give_back(variant: ImageSlot) -> bool:
    """The image goes back to waiting for a call, or, once a cancel reached it, is
    cancelled unmade; True when it was cancelled (an end)."""
    _unclaim(variant)
    if variant.cancel_requested:
        variant.state = VariantState.CANCELLED
        variant.error = CANCELLED_UNMADE
        return True
    variant.state = VariantState.PENDING
    return False


def count_failure(variant: ImageSlot, error: str, budget: int) -> bool:
    """One more real failure; True when the image ended (its budget used up: failed;
    or a cancel reached it: cancelled)."""
    variant.failures += 1
    variant.error = error
    if variant.failures < budget:
        return give_back(variant)
    _unclaim(variant)
    variant.state = VariantState.FAILED
    variant.error = gave_up(variant.failures, error)
    return True


def gave_up(failures: int, last: str) -> str:
    """Why an image failed for good after its failure budget was used up."""
    return f"gave up after {failures} failed attempts; the last: {last}"


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

    A claim whose lease ran out belonged to an instance that stopped: taking it over
    counts as a real failure of the image. The slot is never ended here, because
    the stopped holder may have stored its image: the new holder looks first
    (``ClaimResult.last_chance`` when the failure budget is used up).
    """
    variant = job.slot(n, version)
    # A variant in a Gemini batch is the economy collector's: never generated here.
    if variant.state in (VariantState.UPLOADED, VariantState.BATCHED, *TERMINAL_VARIANT_STATES):
        return None, ClaimResult(VariantClaim.FINISHED)
    held_by_other = variant.state == VariantState.GENERATING and variant.claim_id != claim_id
    if held_by_other and variant.claim_expires is not None and variant.claim_expires > now:
        return None, ClaimResult(VariantClaim.HELD, variant.claim_expires)
    if held_by_other:
        variant.failures += 1
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
    last_chance = variant.failures >= failure_budget
    return job, ClaimResult(
        VariantClaim.CLAIMED, variant.claim_expires, variant.attempts, last_chance
    )


def renew(
    job: Job, n: int, claim_id: str, now: datetime, lease: timedelta, version: int = 1
) -> Step[bool]:
    """Move our lease's end on while we work; False when the claim is no longer ours
    (it ran out and another holder took the variant, or the variant ended). A lease
    that ran out but that nobody took is still ours: renewing it is safe."""
    variant = job.slot(n, version)
    if variant.state != VariantState.GENERATING or variant.claim_id != claim_id:
        return None, False
    variant.claim_expires = now + lease
    return job, True


def release(job: Job, n: int, claim_id: str, now: datetime, version: int = 1) -> Step[None]:
    """Give the lease back unused (a wait, not a failure), so a redelivery can retry;
    an image that a cancel reached is cancelled instead."""
    variant = job.slot(n, version)
    if variant.state != VariantState.GENERATING or variant.claim_id != claim_id:
        return None, None
    if give_back(variant):
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
    if count_failure(variant, error, failure_budget):
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
        ended = count_failure(slot, error, failure_budget) or ended
    if not counted:
        return None, False
    if ended and any(version == 1 for _, version in images):
        return restate(job, now), True
    job.updated_at = now
    return job, ended


def republished(job: Job, now: datetime) -> Step[None]:
    """The sweeper published the job again (no delivery had started it)."""
    if job.state != JobState.QUEUED:
        return None, None
    job.republished_at = now
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
    version: int = 1,
) -> Step[None]:
    """Record that the image object exists (whoever wrote it) and what it cost.

    An object that exists is a fact, whoever holds the claim now: a holder that
    lost its lease (stalled past it) and stored its image after all is recorded
    truthfully, even over a variant that was given up on meanwhile (failed or
    cancelled unmade): the image is kept and charged once (the settlement of an
    image given back is corrected, see ``shared.domain.settlement``). The finalize
    notification may be handled first (say, after a crash between upload and this
    record): then the variant is already done, and only the cost is added, if it
    is still missing.
    """
    variant = job.slot(n, version)
    if variant.state in (VariantState.UPLOADED, VariantState.DONE) or (
        variant.object_name is not None and variant.state == VariantState.FAILED
    ):
        # Made already; a later failure (say, of its thumbnail) stays final.
        if not _record_spent(variant, spent):
            return None, None
        job.updated_at = now
        return job, None
    revived = variant.state in TERMINAL_VARIANT_STATES
    variant.state = VariantState.UPLOADED
    variant.object_name = object_name
    variant.content_type = content_type
    _record_spent(variant, spent)
    variant.error = None
    _unclaim(variant)
    variant.generated_at = now
    if version == 1:
        # A revived variant moves a finished job's state (failed -> partial ...), but
        # the job ended once and stays ended (its finish is not logged again).
        job.state = derive_state(job) if not revived or not job.terminal else job.state
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
    object_name: str | None = None,
) -> Step[None]:
    """A permanent failure of variant ``n`` (version ``version``).

    With ``claim_id`` (the generator's failure) it applies only while that claim
    holds, so it can never overwrite an image another delivery produced. An
    image that exists but failed later (its thumbnail) still cost ``spent`` and
    names its ``object_name``.
    """
    variant = job.slot(n, version)
    if variant.state in TERMINAL_VARIANT_STATES:
        return None, None
    if claim_id is not None and variant.claim_id != claim_id:
        return None, None
    variant.state = VariantState.FAILED
    variant.error = reason
    # A failure of an image that exists (its thumbnail could not be made) names it:
    # it was made and paid, and its upload record must not revive it.
    variant.object_name = variant.object_name or object_name
    _record_spent(variant, spent)
    _unclaim(variant)
    return _image_ended(job, version, now), None


def gave_up_on(job: Job, n: int, reason: str, now: datetime, version: int = 1) -> Step[None]:
    """Pub/Sub gave up on the message that makes this image: it fails unless it was
    made meanwhile (an uploaded image still gets its thumbnail and row)."""
    if job.slot(n, version).state == VariantState.UPLOADED:
        return None, None
    return variant_failed(job, n, reason, now, version=version)


def thumbnail_gave_up(
    job: Job,
    n: int,
    reason: str,
    now: datetime,
    object_name: str,
    spent: Spent | None = None,
    version: int = 1,
) -> Step[None]:
    """Pub/Sub gave up on the notification of the image ``object_name``: the image
    fails, named and with its cost, since it was made and paid. One ended unmade
    before it was recorded (given up on while its stopped holder had stored it)
    fails the same way, so that it is charged once and not failed for free."""
    variant = job.slot(n, version)
    unmade = (VariantState.FAILED, VariantState.CANCELLED)
    if variant.state not in unmade or variant.object_name is not None:
        return variant_failed(
            job, n, reason, now, spent=spent, version=version, object_name=object_name
        )
    variant.state = VariantState.FAILED
    variant.error = reason
    variant.object_name = object_name
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
    # Handled before the upload record (a crash between the two): the image was made
    # by now, and status, anchors and exports date it.
    variant.generated_at = variant.generated_at or now
    variant.done_at = now
    if version > 1:
        reviews.carry_pick(job, n, version, now)
    return _image_ended(job, version, now), None


def expire(job: Job, reason: str, now: datetime) -> Step[int]:
    """A job past its age limit: fail every unfinished image that nobody is making
    (waiting for its call, or held by a claim that ran out); one whose holder is at
    work now is left to it. The value is how many images it failed."""
    if job.terminal:
        return None, 0
    expired = 0
    for variant in job.variants.values():
        held = (
            variant.state == VariantState.GENERATING
            and variant.claim_expires is not None
            and variant.claim_expires > now
        )
        if variant.state in (VariantState.PENDING, VariantState.GENERATING) and not held:
            variant.state = VariantState.FAILED
            variant.error = reason
            _unclaim(variant)
            expired += 1
    return (restate(job, now) if expired else None), expired


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
    return (restate(job, now) if changed else None), None


def last_cause(job: Job) -> str:
    """What kept the job from finishing, in words, for a job that is given up on.

    The wait it is in; else the last real error of an unfinished variant (each
    attempt starts with a clean slate, so it is never an earlier delivery's);
    else a claim whose holder never came back.
    """
    if job.waiting is not None:
        if job.waiting.reason == "spend_cap":
            return "it was paused: the project's Gemini spending cap was reached"
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
