"""Generation: every variant of a job made and paid for exactly once.

Raise (``TransientError``) means retry, return means done: permanent failures
are recorded on the job and the message is acknowledged.

Never paying twice rests on four things: a variant is claimed (a lease in the
job store) before Gemini is called; a variant whose object exists or whose
claim is live is skipped; uploads are create-only; the holder renews its lease
while it works (``shared/services/heartbeat.py``), so only a holder that stopped
is ever taken over, and the one that takes over looks for the stopped holder's
image before it pays for another. Every write a holder makes about its claim
(release, failure) names the claim and is refused once the claim moved on; an
image that exists is recorded whoever stored it. A call starts only while the
delivery has ``gemini_budget_s`` left, so no call outlives its delivery (see the
time arithmetic in ``shared/config/settings.py``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Protocol

from shared.config.settings import Settings
from shared.contracts.messages import JobMessage
from shared.contracts.objects import ObjectNames, recorded_spent
from shared.domain import briefs, lifecycle, pricing
from shared.domain.catalog import ModelEntry
from shared.domain.errors import (
    ModelGone,
    NotAnImage,
    NotFound,
    NotReady,
    PermanentError,
    QuotaExceeded,
    TransientError,
)
from shared.domain.ids import new_id, utcnow
from shared.domain.job import (
    TERMINAL_VARIANT_STATES,
    ImageSlot,
    Job,
    VariantState,
    Version,
    WaitReason,
    money,
)
from shared.domain.lifecycle import ClaimResult, Spent, VariantClaim
from shared.domain.quota import Limit, Slot, next_quota_day
from shared.services.heartbeat import Heartbeat, ThreadHeartbeat
from shared.services.job_references import JobReferences
from shared.services.ledger import Applied, JobEntry, JobLedger
from shared.services.ports import (
    FoundObject,
    ImageGenerator,
    ImageProbe,
    ObjectStore,
    QuotaGate,
    ReferenceImage,
    ReferenceLoader,
)
from shared.services.stored_images import object_names, store_image

log = logging.getLogger(__name__)

# How often a delivery looks again at a variant another live delivery holds.
HELD_POLL_S = 2.0
# A refusal without RetryInfo pauses the model's calls this long; any refusal at least
# the minimum, plus up to QUOTA_JITTER_S (a fifth of the pause at most) of spread.
DEFAULT_QUOTA_PAUSE_S = 30.0
MIN_QUOTA_PAUSE_S = 2.0
QUOTA_JITTER_S = 5.0
# Refusals one variant takes within one delivery before handing the message back.
MAX_REFUSALS_PER_DELIVERY = 3
# How long a refusal for the project's spending cap closes the model's calls.
SPEND_CAP_PAUSE_S = 600.0
# In-process waits for a closed gate longer than this show on the job's row.
WAIT_SHOWN_S = 10.0
# A delivery takes a call slot only this close to it, and asks again when the next
# one comes this close: a slot taken is the fleet's until it is used, so an
# instance that dies loses the pace at most this long, not every slot its
# waiting deliveries had taken minutes ahead.
SLOT_HOLD_S = 2.0
# Waiters wake a little apart, so that they do not all ask for the same slot at once.
SLOT_JITTER_S = 0.25

Context = dict[str, object]


@dataclass(frozen=True)
class _Run:
    """One delivery's work on one job: its first images, or one later version."""

    job: Job
    entry: JobEntry
    model: ModelEntry | None  # the job's model in the catalog (None: no longer listed)
    references: list[ReferenceImage]
    claim_id: str
    deadline: float  # time.monotonic() by which the delivery must have answered
    aspect_ratio: str | None
    image_size: str | None
    prompt: str
    version: int = 1
    seed: int | None = None  # None: the variant's number (version 1)
    # The model the call uses: the job's, or a promotion's target (a draft's final).
    model_name: str = ""


class TurnLock(Protocol):
    """What the turn needs of a lock (``threading.Lock`` in production)."""

    def acquire(self) -> bool: ...

    def release(self) -> None: ...


class _Turn:
    """This instance's turn at the fleet's call slots, held by one variant at a time
    from its unclaimed wait until it has a slot (or gives up): its other deliveries
    wait on the lock, not on the gate, so that neither the gate's document nor the
    job documents are asked by every waiting delivery at once."""

    def __init__(self, lock: TurnLock) -> None:
        self._lock = lock
        self._held = False

    def take(self) -> None:
        if not self._held:
            self._lock.acquire()
            self._held = True

    def give(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()


class _NotNear(TransientError):
    """Another instance took the slot this variant was claimed for: it gives the
    claim back and waits for the next one unclaimed."""


@dataclass(frozen=True)
class Generation:
    settings: Settings
    ledger: JobLedger
    objects: ObjectStore
    generator: ImageGenerator
    references: ReferenceLoader
    quota: QuotaGate
    # Checks that an anchored image, or the image an edit starts from, is one.
    probe: ImageProbe
    clock: Callable[[], datetime] = utcnow
    sleep: Callable[[float], None] = field(default=time.sleep)
    monotonic: Callable[[], float] = field(default=time.monotonic)
    heartbeat: Heartbeat = field(default_factory=ThreadHeartbeat)
    # One per instance: its deliveries take turns at the fleet's call slots.
    turns: TurnLock = field(default_factory=threading.Lock, repr=False, compare=False)

    @cached_property
    def names(self) -> ObjectNames:
        return object_names(self.settings)

    @cached_property
    def job_references(self) -> JobReferences:
        return JobReferences(
            self.settings, self.ledger.store, self.objects, self.references, self.probe
        )

    def handle(self, message: JobMessage, published_at: datetime | None = None) -> None:
        """Generate the job's missing variants. Raises TransientError to be retried.

        The ledger writes the row ("generating", then the outcome) while the
        variants are made, and before the delivery ends.
        """
        deadline = self.monotonic() + self.settings.delivery_deadline_s
        context: Context = {"job_id": message.job_id, "batch_id": message.batch_id}
        job = self.ledger.get(message.job_id)
        if job is None:
            log.error("job not found; message dropped", extra=context)
            return
        context["scene_id"] = job.scene_id
        if message.variant is not None and message.version is not None:
            self._later_version(job, message.variant, message.version, deadline, context)
            return
        with self.ledger.entry(job) as entry:
            if job.terminal:
                log.info("job already finished; redelivery ignored", extra=context)
                return
            if job.cancelled_at is not None:
                # Nothing new is made; a claim whose holder stopped is taken over, so
                # that its image, if it stored one, is kept and the rest ends cancelled.
                log.info("job cancelled; nothing more to make", extra=context)
                self._each_variant(self._run(job, entry, [], deadline, job.prompt), job)
                return
            # A live job's wait counts from its creation, whichever message brings it
            # (the sweeper's, a cancel's): the limit is on its wait in all. An economy
            # job here was handed to the live lane (its Gemini batch expired): from then.
            since = job.created_at if job.lane == "live" else published_at
            age = (self.clock() - since).total_seconds() if since else 0.0
            if age > self.settings.max_event_age_s:
                # Retrying forever helps nobody: record why and acknowledge.
                limit = self.settings.max_event_age_s
                reason = (
                    f"dropped: the job waited {int(age)} s, over the {limit} s limit; "
                    f"{lifecycle.last_cause(job)}"
                )
                # An image another delivery is making right now is left to it.
                expired = entry.apply(lambda j: lifecycle.expire(j, reason, self.clock()))
                if expired.value:
                    log.warning(
                        "images too old failed",
                        extra={**context, "error": reason, "event": "variants_failed"},
                    )
                return
            if entry.apply(lambda j: lifecycle.start(j, self.clock())).value:
                log.info(
                    "job started", extra={**context, "state": "generating", "event": "job_started"}
                )
            self._generate(entry, job, deadline, context)

    def _generate(self, entry: JobEntry, job: Job, deadline: float, context: Context) -> None:
        """References, then every variant; raises TransientError to be retried."""
        try:
            references = self._references(job, context)
        except PermanentError as exc:
            self._fail_job(entry, str(exc), context)
            return
        except NotReady:
            raise
        except TransientError as exc:
            images = [(n, 1) for n in range(1, job.variant_count + 1)]
            if not self._references_failed(entry, images, exc, context).job.terminal:
                raise
            return
        self._each_variant(self._run(job, entry, references, deadline, job.prompt), job)

    def _each_variant(self, run: _Run, job: Job) -> None:
        """Every variant of the job, up to GENERATE_CONCURRENCY at once; raises
        TransientError to be retried when one of them must wait."""
        numbers = range(1, job.variant_count + 1)
        workers = max(1, min(self.settings.generate_concurrency, job.variant_count))
        if workers == 1:
            outcomes = [self._variant(run, n) for n in numbers]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                outcomes = list(pool.map(lambda n: self._variant(run, n), numbers))
        retry = [str(o) for o in outcomes if o is not None]
        if retry:
            raise TransientError("; ".join(retry))

    def _run(
        self,
        job: Job,
        entry: JobEntry,
        references: list[ReferenceImage],
        deadline: float,
        prompt: str,
        version: Version | None = None,
    ) -> _Run:
        model = (version.target_model if version is not None else None) or job.model
        size_asked = (version.image_size if version is not None else None) or job.image_size
        ratio, size = self.settings.shape_for(model, job.aspect_ratio, size_asked)
        return _Run(
            job=job,
            entry=entry,
            model_name=model,
            model=self.settings.catalog.entry(model),
            references=references,
            claim_id=new_id("clm"),
            deadline=deadline,
            aspect_ratio=ratio,
            image_size=size,
            # Named references are told apart in words before the prompt.
            prompt=briefs.labelled(prompt, [r.label for r in references]),
            version=version.version if version is not None else 1,
            seed=version.seed if version is not None else None,
        )

    def _references(self, job: Job, context: Context) -> list[ReferenceImage]:
        """The batch's style references, then the item's own pack, up to the model's
        limit. Raises PermanentError (the job fails with it), NotReady (an anchored
        image still being made: the message is retried) or TransientError (a pack
        not read in time: counted, then retried)."""
        return self.job_references.load(job, context)

    def _references_failed(
        self, entry: JobEntry, images: list[tuple[int, int]], error: Exception, context: Context
    ) -> Applied[bool]:
        """References not read (a slow or failing server) are a real failure of the
        delivery: counted on the images still waiting for a call, which fail once
        their budget is used up, so a hostile pack cannot be retried for hours."""
        reason = str(error)
        budget = self.settings.gemini_failure_budget
        applied = entry.apply(
            lambda j: lifecycle.references_failed(j, images, reason, self.clock(), budget)
        )
        log.warning(
            "references not read",
            extra={**context, "error": reason, "event": "attempt_failed"},
        )
        return applied

    # ------------------------------------------------------------------ later versions
    def _later_version(
        self, job: Job, n: int, number: int, deadline: float, context: Context
    ) -> None:
        """Make version ``number`` of variant ``n`` (a re-roll or an edit) once; the
        job's state is not touched. Raises TransientError to be retried."""
        context.update({"variant": n, "version": number})
        variant = job.variants.get(str(n))
        versions = variant.versions if variant is not None else []
        version = next((v for v in versions if v.version == number), None)
        if version is None:
            log.error("no such version; message dropped", extra=context)
            return
        with self.ledger.entry(job) as entry:
            if version.state in (VariantState.UPLOADED, *TERMINAL_VARIANT_STATES):
                log.info("version already made; redelivery ignored", extra=context)
                return
            age = (self.clock() - version.requested_at).total_seconds()
            if age > self.settings.max_event_age_s:
                limit = self.settings.max_event_age_s
                self._version_failed(
                    entry, n, number, f"dropped: it waited {int(age)} s, over the {limit} s limit"
                )
                return
            try:
                references = (
                    []  # cancelled: nothing new is made, no reference is read
                    if version.cancel_requested
                    else [self._edit_source(version)]
                    if version.instruction
                    else self._references(job, context)
                )
            except PermanentError as exc:
                self._version_failed(entry, n, number, str(exc))
                return
            except NotReady:
                raise
            except TransientError as exc:
                if not self._references_failed(entry, [(n, number)], exc, context).value:
                    raise
                return
            prompt = version.instruction or job.prompt
            run = self._run(job, entry, references, deadline, prompt, version)
            outcome = self._variant(run, n)
        if outcome is not None:
            raise outcome

    def _edit_source(self, version: Version) -> ReferenceImage:
        """The image an edit starts from, read again and checked like any reference."""
        name = version.source_object or ""
        try:
            data = self.objects.read(
                self.settings.images_bucket, name, self.settings.reference_max_bytes
            )
            return ReferenceImage(
                data=data, mime_type=self.probe(data, self.settings.image_max_pixels)
            )
        except NotFound as exc:
            raise PermanentError(f"the image to edit ({name}) is gone") from exc
        except NotAnImage as exc:
            raise PermanentError(f"the image to edit is not usable: {exc}") from exc

    def _version_failed(self, entry: JobEntry, n: int, number: int, reason: str) -> None:
        entry.apply(lambda j: lifecycle.variant_failed(j, n, reason, self.clock(), version=number))
        log.warning(
            "version failed",
            extra={"job_id": entry.job_id, "variant": n, "version": number, "error": reason},
        )

    # ------------------------------------------------------------------ one variant
    def _variant(self, run: _Run, n: int) -> TransientError | None:
        """Make variant ``n`` unless it is done or held; a returned error means retry.

        Only a real failure of the attempt counts toward the variant's failure
        budget; waiting (for the quota, a claim, time in this delivery) hands the
        message back to Pub/Sub without bringing the job closer to failure.
        """
        job = run.job
        context: Context = {
            "job_id": job.job_id,
            "batch_id": job.batch_id,
            "scene_id": job.scene_id,
            "variant": n,
        }
        if run.version != 1:
            context["version"] = run.version
        turn = _Turn(self.turns)
        while True:
            outcome = self._one_claim(run, n, context, turn)
            if not isinstance(outcome, _NotNear):
                return outcome

    def _one_claim(self, run: _Run, n: int, context: Context, turn: _Turn) -> TransientError | None:
        """Wait (unclaimed) for a call slot near enough, claim, attempt; _NotNear when
        the slot went elsewhere meanwhile."""
        refusals = 0
        while True:
            # Unclaimed while the slot is far: an instance that dies while its
            # deliveries wait holds no variant its redeliveries must wait out.
            turn.take()
            claimed = None
            try:
                waited = self._near_slot(run, context)
                if waited is None:
                    claimed = self._claim(run, n, context, on_wait=turn.give)
            except BaseException as exc:
                turn.give()
                if isinstance(exc, TransientError):
                    return exc
                raise
            if claimed is None:
                turn.give()
                return waited  # None: the variant is finished
            result, slot = claimed
            context["attempt"] = result.attempt
            try:
                with self.heartbeat.keep(lambda: self._renew(run, n), self.settings.claim_renew_s):
                    return self._attempt(run, n, result, slot, context, turn)
            except _NotNear as exc:
                return exc
            except QuotaExceeded as exc:
                refusals += 1
                until, limit = self._quota_refused(run, n, exc, context)
                if refusals >= MAX_REFUSALS_PER_DELIVERY:
                    self._waiting(run, limit, until, self.clock())
                    return exc
            except (TransientError, PermanentError) as exc:
                # Out of the attempt after the claim (an upload or a store that failed):
                # the claim is never left held, so a redelivery need not wait it out.
                return self._attempt_broke(run, n, exc, context)
            finally:
                turn.give()

    def _renew(self, run: _Run, n: int) -> bool:
        lease = timedelta(seconds=self.settings.claim_lease_s)
        return run.entry.apply(
            lambda j: lifecycle.renew(j, n, run.claim_id, self.clock(), lease, run.version)
        ).value

    def _attempt(
        self,
        run: _Run,
        n: int,
        claimed: ClaimResult,
        slot: ImageSlot,
        context: Context,
        turn: _Turn,
    ) -> TransientError | None:
        """One attempt under our claim; raises QuotaExceeded (the claim released)."""
        job = run.job
        stem = self.names.image_stem(job, n, run.version)
        existing = self.objects.find(self.settings.images_bucket, stem)
        if existing is not None:
            # Stored by a delivery that died (or stalled) before recording it: never
            # pay again, and take what it cost from what that delivery wrote.
            self._record_found(run, n, existing, context)
            return None
        if slot.cancel_requested:
            # A cancel reached it while a holder had it: it ends cancelled, unmade.
            self._release(run, n, "cancelled before its Gemini call", context)
            return None
        if claimed.last_chance:
            # Its holders stopped once too often, and the last left no image.
            reason = lifecycle.gave_up(slot.failures, lifecycle.HOLDER_STOPPED)
            self._variant_failed(run, n, reason, context)
            return None
        budget = self.settings.gemini_budget_s
        if self.monotonic() + budget > run.deadline:
            return self._release(run, n, "no time left in this delivery for a Gemini call", context)
        # The fleet's pace and gate, also for a variant taken over from a stopped holder.
        waited = self._call_slot(run, n, context)
        turn.give()
        if isinstance(waited, _NotNear):
            self._release(run, n, str(waited), context)
            raise waited
        if waited is not None:
            self._release(run, n, str(waited), context)
            return waited
        # The lease must be ours, for a whole lease more, when the call starts: a claim
        # write or a wait that took longer than the lease may have let another
        # delivery take the variant (then it makes the image, and this one is done),
        # and the heartbeat's first beat is a third of a lease away.
        if not self._renew(run, n):
            log.info("variant taken over before its Gemini call", extra=context)
            return None
        begin = self.monotonic()
        try:
            image = self.generator.generate(
                run.model_name,
                run.prompt,
                run.references,
                seed=run.seed if run.seed is not None else n,
                aspect_ratio=run.aspect_ratio,
                image_size=run.image_size,
                thinking_level=(
                    run.model.thinking_level(self.settings.gemini_thinking_level)
                    if run.model
                    else None
                ),
            )
        except ModelGone as exc:
            context["duration_ms"] = self._ms_since(begin)
            self._variant_failed(run, n, self._model_gone(run.model_name, exc), context)
            return None
        except PermanentError as exc:
            context["duration_ms"] = self._ms_since(begin)
            self._variant_failed(run, n, str(exc), context)
            return None
        except QuotaExceeded:
            context["duration_ms"] = self._ms_since(begin)
            self._release(run, n, "Gemini refused the call for quota", context)
            raise
        except TransientError as exc:
            context["duration_ms"] = self._ms_since(begin)
            return self._attempt_failed(run, n, exc, context)
        spent = self._spent(run, n, image.usage)
        name, created = store_image(
            self.objects, self.settings.images_bucket, self.names, job, n, image, spent, run.version
        )
        context["duration_ms"] = self._ms_since(begin)
        if not created:
            # Only a holder that stalled past its lease gets here: another stored the
            # image first. It stays; so does what it cost (ours was paid, unrecorded).
            log.warning(
                "object existed already; kept the first",
                extra={**context, "object": name, "event": "duplicate_generation"},
            )
            found = self.objects.find(self.settings.images_bucket, stem)
            if found is not None:
                self._record_found(run, n, found, context)
                return None
        self._record_upload(run, n, name, image.mime_type, spent, context)
        return None

    def _record_found(self, run: _Run, n: int, found: FoundObject, context: Context) -> None:
        parsed = self.names.parse_image(found.name)
        mime = (parsed.mime_type if parsed else None) or ""
        spent = recorded_spent(found.metadata) or Spent(run.model_name, self._price(run, n))
        self._record_upload(run, n, found.name, mime, spent, context)

    def _attempt_broke(
        self, run: _Run, n: int, error: TransientError | PermanentError, context: Context
    ) -> TransientError | None:
        """An attempt that failed after its claim: counted (a permanent error ends the
        variant), the claim given back either way, the message retried."""
        try:
            if isinstance(error, PermanentError):
                self._variant_failed(run, n, str(error), context)
                return None
            return self._attempt_failed(run, n, error, context)
        except Exception:  # the store itself failing: the lease runs out by itself
            log.warning("claim not given back", extra=context, exc_info=True)
            return TransientError(str(error))

    # ------------------------------------------------------------------ quota
    def _call_slot(self, run: _Run, n: int, context: Context) -> TransientError | None:
        """Wait here for the fleet's next call slot of the model, or hand the
        message back (None: a call may start now)."""
        # The wait must leave this delivery the time for its Gemini call.
        room = run.deadline - self.monotonic() - self.settings.gemini_budget_s
        max_wait = max(0.0, min(self.settings.quota_wait_s, room))
        now = self.clock()
        give_up = now + timedelta(seconds=max_wait)
        shown = False
        while True:
            left = max(0.0, (give_up - now).total_seconds())
            slot = self.quota.reserve(run.model_name, now, min(SLOT_HOLD_S, left))
            if slot.at is not None:
                break
            reopens = slot.reopens or now
            if reopens > give_up:
                return self._hand_back(run, slot, context, now)
            if slot.closed_for is None:
                # Taken by another instance while this one claimed: wait for the next
                # one unclaimed.
                return _NotNear(f"the next call slot is at {reopens.isoformat()}")
            # The gate closed after this variant was claimed (a refusal elsewhere):
            # the pause is everyone's; it is waited out here, as one attempt.
            ahead = (reopens - now).total_seconds()
            if not shown and ahead > WAIT_SHOWN_S:
                self._waiting(run, slot.closed_for, reopens, now)
                shown = True
            self.sleep(max(0.05, ahead - SLOT_HOLD_S))
            now = self.clock()
        delay = (slot.at - now).total_seconds()
        if delay > 0:
            self.sleep(delay)
        return None

    def _near_slot(self, run: _Run, context: Context) -> TransientError | None:
        """Wait, unclaimed and holding this instance's turn, until the fleet's next
        call slot of the model is within SLOT_HOLD_S, or hand the message back when
        it is further than this delivery may wait (None: near)."""
        room = run.deadline - self.monotonic() - self.settings.gemini_budget_s
        max_wait = max(0.0, min(self.settings.quota_wait_s, room))
        now = self.clock()
        give_up = now + timedelta(seconds=max_wait)
        shown = False
        while True:
            slot = self.quota.peek(run.model_name, now)
            reopens = slot.reopens or now
            if reopens > give_up:
                return self._hand_back(run, slot, context, now)
            ahead = (reopens - now).total_seconds()
            if ahead <= SLOT_HOLD_S:
                return None
            if not shown and slot.closed_for is not None and ahead > WAIT_SHOWN_S:
                self._waiting(run, slot.closed_for, reopens, now)
                shown = True
            self.sleep(ahead - SLOT_HOLD_S + random.uniform(0, SLOT_JITTER_S))
            now = self.clock()

    def _hand_back(self, run: _Run, slot: Slot, context: Context, now: datetime) -> TransientError:
        reopens = slot.reopens or now
        self._waiting(run, slot.closed_for, reopens, now)
        log.info(
            "variant waits for the Gemini quota; message handed back",
            extra={**context, "state": "waiting", "event": "variant_waiting"},
        )
        return TransientError(f"waiting for the Gemini quota until {reopens.isoformat()}")

    def _waiting(self, run: _Run, limit: Limit | None, until: datetime, now: datetime) -> None:
        """Show on the job (and its row) that it waits for the quota, and until when."""
        reasons: dict[Limit | None, WaitReason] = {
            Limit.DAY: "daily_quota",
            Limit.SPEND: "spend_cap",
        }
        reason = reasons.get(limit, "quota")
        run.entry.apply(lambda j: lifecycle.wait(j, reason, until, self.clock()))

    def _quota_refused(
        self, run: _Run, n: int, refusal: QuotaExceeded, context: Context
    ) -> tuple[datetime, Limit]:
        """Close the fleet's gate until the quota has room again; until when, and why."""
        now = self.clock()
        if refusal.per_day:
            until, limit = next_quota_day(now), Limit.DAY
        elif refusal.spend_cap:
            # Google's spend-based limits run over a rolling 10 minutes; a billing-tier
            # cap passes only when someone raises it. Either way, trying again every
            # few seconds only spends refused calls: one look every SPEND_CAP_PAUSE_S.
            delay = SPEND_CAP_PAUSE_S + random.uniform(0, QUOTA_JITTER_S)
            until, limit = now + timedelta(seconds=delay), Limit.SPEND
        else:
            delay = max(refusal.retry_after_s or DEFAULT_QUOTA_PAUSE_S, MIN_QUOTA_PAUSE_S)
            # Spread the fleet's return a little, so it does not bounce off the quota at once.
            delay += random.uniform(0, min(QUOTA_JITTER_S, delay / 5))
            until, limit = now + timedelta(seconds=delay), Limit.MINUTE
        self.quota.close(run.model_name, until, limit)
        log.warning(
            "Gemini refused the call for quota; calls paused",
            extra={
                **context,
                "state": "waiting",
                "error": str(refusal),
                "event": "quota_refused",
                "until": until.isoformat(),
                "limit": limit.value,
            },
        )
        return until, limit

    def _claim(
        self,
        run: _Run,
        n: int,
        context: Context,
        on_wait: Callable[[], None] = lambda: None,
    ) -> tuple[ClaimResult, ImageSlot] | None:
        """Take the variant's lease, waiting a bounded time for a live holder.

        Returns the claim and the image as it stands under it, or None when the
        variant is finished.
        """
        lease = timedelta(seconds=self.settings.claim_lease_s)
        budget = self.settings.gemini_failure_budget
        # Waiting must leave this delivery the time for its own Gemini call.
        wait_s = min(
            self.settings.claim_wait_s,
            run.deadline - self.monotonic() - self.settings.gemini_budget_s,
        )
        give_up = self.monotonic() + max(0.0, wait_s)
        while True:
            applied = run.entry.apply(
                lambda j: lifecycle.claim(
                    j, n, run.claim_id, self.clock(), lease, budget, run.version
                )
            )
            claim = applied.value
            if claim.outcome == VariantClaim.CLAIMED:
                log.info(
                    "variant claimed",
                    extra={
                        **context,
                        "attempt": claim.attempt,
                        "state": "generating",
                        "event": "variant_claimed",
                    },
                )
                return claim, applied.job.slot(n, run.version)
            if claim.outcome == VariantClaim.FINISHED:
                log.info(
                    "variant already finished; skipped",
                    extra={**context, "event": "variant_skipped"},
                )
                return None
            # Another delivery holds it. If that one stops, its lease runs out and
            # we take over; if our wait runs out first, we are retried.
            remaining = give_up - self.monotonic()
            if remaining <= 0:
                raise TransientError(
                    f"variant {n} is held by another delivery until {claim.expires}"
                )
            wait = HELD_POLL_S
            if claim.expires is not None:
                wait = min(wait, max(0.05, self._seconds_until(claim.expires)))
            on_wait()  # nobody else of this instance waits behind a held variant
            self.sleep(min(wait, remaining))

    def _release(self, run: _Run, n: int, reason: str, context: Context) -> TransientError:
        """Give the claim back unused (a wait): a redelivery makes the variant."""
        run.entry.apply(lambda j: lifecycle.release(j, n, run.claim_id, self.clock(), run.version))
        log.info(
            "variant handed back",
            extra={**context, "state": "pending", "error": reason, "event": "variant_released"},
        )
        return TransientError(reason)

    def _attempt_failed(
        self, run: _Run, n: int, error: TransientError, context: Context
    ) -> TransientError | None:
        """A real failure: counted; the variant fails once its budget is used up."""
        budget = self.settings.gemini_failure_budget
        reason = str(error)
        failed = run.entry.apply(
            lambda j: lifecycle.attempt_failed(
                j, n, run.claim_id, reason, self.clock(), budget, run.version
            )
        )
        if failed.value:
            log.warning(
                "variant failed",
                extra={
                    **context,
                    "state": "failed",
                    "error": failed.job.slot(n, run.version).error,
                    "event": "variant_failed",
                },
            )
            return None
        log.warning(
            "variant will be retried",
            extra={**context, "state": "pending", "error": reason, "event": "attempt_failed"},
        )
        return error

    def _variant_failed(self, run: _Run, n: int, reason: str, context: Context) -> None:
        run.entry.apply(
            lambda j: lifecycle.variant_failed(
                j, n, reason, self.clock(), run.claim_id, version=run.version
            )
        )
        log.warning(
            "variant failed",
            extra={**context, "state": "failed", "error": reason, "event": "variant_failed"},
        )

    def _record_upload(
        self, run: _Run, n: int, name: str, content_type: str, spent: Spent, context: Context
    ) -> None:
        recorded = run.entry.apply(
            lambda j: lifecycle.uploaded(j, n, name, content_type, self.clock(), spent, run.version)
        )
        if not recorded.changed:
            # The thumbnail path recorded the image (and its cost) first.
            return
        log.info(
            "variant uploaded",
            extra={
                **context,
                "state": "uploaded",
                "event": "variant_uploaded",
                "object": name,
                "model": spent.model,
                "cost_usd": spent.cost_usd,
                "tokens": spent.usage.get("total_tokens"),
            },
        )

    # ------------------------------------------------------------------ whole job
    def _fail_job(self, entry: JobEntry, reason: str, context: Context) -> None:
        failed = entry.apply(lambda j: lifecycle.fail_job(j, reason, self.clock()))
        if failed.changed and not failed.finished:
            # Uploaded variants still get their thumbnails; those end the job.
            log.warning(
                "unfinished variants failed",
                extra={**context, "error": reason, "event": "variants_failed"},
            )

    def _spent(self, run: _Run, n: int, usage: Mapping[str, int]) -> Spent:
        """What the image cost: its tokens at the catalog's prices, else the
        catalog's price per image (the estimate, if the model left the catalog)."""
        if run.model is None:
            return Spent(run.model_name, self._price(run, n), dict(usage))
        cost = pricing.actual_cost(run.model, "live", run.image_size, usage)
        return Spent(run.model_name, money(cost), dict(usage))

    def _price(self, run: _Run, n: int) -> str:
        """What the image was estimated at (and reserved) when it was asked for."""
        slot = run.job.slot(n, run.version)
        return slot.price_per_image if isinstance(slot, Version) else run.job.price_per_image

    def _model_gone(self, model: str, error: ModelGone) -> str:
        """Why the image will never be made, and what to do: a job finishes on the model
        it was estimated with, so one Google stopped serving fails with the way on."""
        entry = self.settings.catalog.entry(model)
        instead = (entry.replacement if entry else None) or self.settings.gemini_model
        if instead == model:
            return f"{model} is not served any more ({error})"
        return (
            f"{model} is not served any more (Google shut it down); send the row again "
            f"to make it with {instead}"
        )

    def _ms_since(self, begin: float) -> int:
        return int((self.monotonic() - begin) * 1000)

    def _seconds_until(self, moment: datetime) -> float:
        return (moment - self.clock()).total_seconds()
