"""Generation: every variant of a job made and paid for exactly once.

Raise (``TransientError``) means retry, return means done: permanent failures
are recorded on the job and the message is acknowledged.

Never paying twice rests on three things: a variant is claimed (a lease in the
job store) before Gemini is called; a variant whose object exists or whose
claim is live is skipped; uploads are create-only. The lease covers the longest
Gemini call (``Settings.variant_lease_s``) and a call starts only while the
delivery has ``gemini_budget_s`` left, so no call outlives its claim or its
delivery (see the time arithmetic in ``shared/settings.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property

from shared import jobs as transitions
from shared.errors import PermanentError, TransientError
from shared.ids import new_id, utcnow
from shared.jobs import ClaimResult, Spent, VariantClaim
from shared.models import Job, JobMessage
from shared.objects import ObjectNames, image_metadata, recorded_spent
from shared.ports import ImageGenerator, ObjectStore, ReferenceImage, ReferenceLoader
from shared.services.ledger import JobEntry, JobLedger
from shared.settings import Settings

log = logging.getLogger(__name__)

# How often a delivery looks again at a variant another live delivery holds.
HELD_POLL_S = 2.0

Context = dict[str, object]


@dataclass(frozen=True)
class _Run:
    """One delivery's work on one job."""

    job: Job
    entry: JobEntry
    references: list[ReferenceImage]
    claim_id: str
    deadline: float  # time.monotonic() by which the delivery must have answered
    aspect_ratio: str | None
    image_size: str | None


@dataclass(frozen=True)
class Generation:
    settings: Settings
    ledger: JobLedger
    objects: ObjectStore
    generator: ImageGenerator
    references: ReferenceLoader
    clock: Callable[[], datetime] = utcnow
    sleep: Callable[[float], None] = field(default=time.sleep)

    @cached_property
    def names(self) -> ObjectNames:
        return ObjectNames(self.settings.images_prefix, self.settings.thumbnails_prefix)

    def handle(self, message: JobMessage, published_at: datetime | None = None) -> None:
        """Generate the job's missing variants. Raises TransientError to be retried.

        The ledger writes the row ("generating", then the outcome) while the
        variants are made, and before the delivery ends.
        """
        deadline = time.monotonic() + self.settings.delivery_deadline_s
        context: Context = {"job_id": message.job_id, "batch_id": message.batch_id}
        job = self.ledger.get(message.job_id)
        if job is None:
            log.error("job not found; message dropped", extra=context)
            return
        context["scene_id"] = job.scene_id
        with self.ledger.entry(job) as entry:
            if job.terminal:
                log.info("job already finished; redelivery ignored", extra=context)
                return
            age = (self.clock() - published_at).total_seconds() if published_at else 0.0
            if age > self.settings.max_event_age_s:
                # Retrying forever helps nobody: record why and acknowledge.
                limit = self.settings.max_event_age_s
                reason = f"dropped: the job waited {int(age)} s, over the {limit} s limit"
                self._fail_job(entry, reason, context)
                return
            if entry.apply(lambda j: transitions.start(j, self.clock())).value:
                log.info(
                    "job started", extra={**context, "state": "generating", "event": "job_started"}
                )
            self._generate(entry, job, deadline, context)

    def _generate(self, entry: JobEntry, job: Job, deadline: float, context: Context) -> None:
        """References, then every variant; raises TransientError to be retried."""
        try:
            references = (
                self.references.load(job.ref_pack_public_url) if job.ref_pack_public_url else []
            )
        except PermanentError as exc:
            self._fail_job(entry, f"reference pack: {exc}", context)
            return
        run = _Run(
            job=job,
            entry=entry,
            references=references,
            claim_id=new_id("clm"),
            deadline=deadline,
            aspect_ratio=job.aspect_ratio or self.settings.gemini_aspect_ratio or None,
            image_size=job.image_size or self.settings.gemini_image_size or None,
        )
        numbers = range(1, job.variant_count + 1)
        workers = max(1, min(self.settings.generate_concurrency, job.variant_count))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            outcomes = list(pool.map(lambda n: self._variant(run, n), numbers))
        retry = [str(o) for o in outcomes if o is not None]
        if retry:
            raise TransientError("; ".join(retry))

    # ------------------------------------------------------------------ one variant
    def _variant(self, run: _Run, n: int) -> TransientError | None:
        """Make variant ``n`` unless it is done or held; a returned error means retry."""
        job = run.job
        context: Context = {
            "job_id": job.job_id,
            "batch_id": job.batch_id,
            "scene_id": job.scene_id,
            "variant": n,
        }
        try:
            claimed = self._claim(run, n, context)
        except TransientError as exc:
            return exc
        if claimed is None:
            return None
        context["attempt"] = claimed.attempt
        lease_left = self._seconds_until(claimed.expires) if claimed.expires else 0.0
        existing = self.objects.find(self.settings.images_bucket, self.names.image_stem(job, n))
        if existing is not None:
            # Generated by a delivery that died before recording it: never pay
            # again, and take what it cost from what that delivery wrote.
            parsed = self.names.parse_image(existing.name)
            mime = (parsed.mime_type if parsed else None) or ""
            spent = recorded_spent(existing.metadata) or Spent(job.model, job.price_per_image)
            self._record_upload(run, n, existing.name, mime, spent, context)
            return None
        budget = self.settings.gemini_budget_s
        if time.monotonic() + budget > run.deadline or lease_left < budget:
            return self._release(run, n, "no time left in this delivery for a Gemini call", context)
        begin = time.monotonic()
        try:
            image = self.generator.generate(
                job.model,
                job.prompt,
                run.references,
                seed=n,
                aspect_ratio=run.aspect_ratio,
                image_size=run.image_size,
            )
        except PermanentError as exc:
            self._variant_failed(run, n, str(exc), {**context, "duration_ms": _ms_since(begin)})
            return None
        except TransientError as exc:
            context["duration_ms"] = _ms_since(begin)
            self._release(run, n, str(exc), context)
            return exc
        name = self.names.image(job, n, image.mime_type)
        spent = Spent(job.model, job.price_per_image, dict(image.usage))
        created = self.objects.create(
            self.settings.images_bucket,
            name,
            image.data,
            image.mime_type,
            image_metadata(job, n, spent),
        )
        context["duration_ms"] = _ms_since(begin)
        if not created:
            # Only a claim that outlived its lease gets here: we paid, the first image stays.
            log.warning(
                "object existed already; kept the first",
                extra={**context, "object": name, "event": "duplicate_generation"},
            )
        self._record_upload(run, n, name, image.mime_type, spent, context)
        return None

    def _claim(self, run: _Run, n: int, context: Context) -> ClaimResult | None:
        """Take the variant's lease, waiting a bounded time for a live holder.

        Returns the claim, or None when the variant is finished.
        """
        lease = timedelta(seconds=self.settings.variant_lease_s)
        # Waiting must leave this delivery the time for its own Gemini call.
        wait_s = min(
            self.settings.claim_wait_s,
            run.deadline - time.monotonic() - self.settings.gemini_budget_s,
        )
        give_up = time.monotonic() + max(0.0, wait_s)
        while True:
            claim = run.entry.apply(
                lambda j: transitions.claim(j, n, run.claim_id, self.clock(), lease)
            ).value
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
                return claim
            if claim.outcome == VariantClaim.FINISHED:
                log.info(
                    "variant already finished; skipped",
                    extra={**context, "event": "variant_skipped"},
                )
                return None
            # Another delivery holds it. If that one dies, its lease runs out and
            # we take over; if our wait runs out first, we are retried.
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                raise TransientError(
                    f"variant {n} is held by another delivery until {claim.expires}"
                )
            wait = HELD_POLL_S
            if claim.expires is not None:
                wait = min(wait, max(0.05, self._seconds_until(claim.expires)))
            self.sleep(min(wait, remaining))

    def _release(self, run: _Run, n: int, reason: str, context: Context) -> TransientError:
        """Give the claim back so a redelivery can make the variant."""
        run.entry.apply(lambda j: transitions.release(j, n, run.claim_id, reason, self.clock()))
        log.warning(
            "variant will be retried",
            extra={**context, "state": "pending", "error": reason, "event": "variant_released"},
        )
        return TransientError(reason)

    def _variant_failed(self, run: _Run, n: int, reason: str, context: Context) -> None:
        run.entry.apply(
            lambda j: transitions.variant_failed(j, n, reason, self.clock(), run.claim_id)
        )
        log.warning(
            "variant failed",
            extra={**context, "state": "failed", "error": reason, "event": "variant_failed"},
        )

    def _record_upload(
        self, run: _Run, n: int, name: str, content_type: str, spent: Spent, context: Context
    ) -> None:
        recorded = run.entry.apply(
            lambda j: transitions.uploaded(j, n, name, content_type, self.clock(), spent)
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
        failed = entry.apply(lambda j: transitions.fail_job(j, reason, self.clock()))
        if failed.changed and not failed.finished:
            # Uploaded variants still get their thumbnails; those end the job.
            log.warning(
                "unfinished variants failed",
                extra={**context, "error": reason, "event": "variants_failed"},
            )

    def _seconds_until(self, moment: datetime) -> float:
        return (moment - self.clock()).total_seconds()


def _ms_since(begin: float) -> int:
    return int((time.monotonic() - begin) * 1000)
