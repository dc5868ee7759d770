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

from shared import jobs as transitions
from shared.errors import PermanentError, TransientError
from shared.ids import new_id, utcnow
from shared.imageformat import EXTENSIONS
from shared.jobs import Claim, Spent
from shared.models import Job, JobMessage
from shared.ports import ImageGenerator, JobStore, ObjectStore, ReferenceImage, ReferenceLoader
from shared.services.completion import log_job_finished
from shared.services.sheet_sync import SheetSync
from shared.settings import Settings

log = logging.getLogger(__name__)

# How often a delivery looks again at a variant another live delivery holds.
HELD_POLL_S = 2.0

Context = dict[str, object]
MIME_BY_EXTENSION = {extension: mime for mime, extension in EXTENSIONS.items()}


@dataclass(frozen=True)
class _Run:
    """One delivery's work on one job."""

    job: Job
    references: list[ReferenceImage]
    claim_id: str
    deadline: float  # time.monotonic() by which the delivery must have answered
    aspect_ratio: str | None
    image_size: str | None


@dataclass(frozen=True)
class Generation:
    settings: Settings
    store: JobStore
    objects: ObjectStore
    generator: ImageGenerator
    references: ReferenceLoader
    sheet: SheetSync
    clock: Callable[[], datetime] = utcnow
    sleep: Callable[[float], None] = field(default=time.sleep)

    def handle(self, message: JobMessage, published_at: datetime | None = None) -> None:
        """Generate the job's missing variants. Raises TransientError to be retried."""
        deadline = time.monotonic() + self.settings.delivery_deadline_s
        job = self.store.get_job(message.job_id)
        context: Context = {"job_id": message.job_id, "batch_id": message.batch_id}
        if job is None:
            log.error("job not found; message dropped", extra=context)
            return
        context["scene_id"] = job.scene_id
        if job.terminal:
            log.info("job already finished; redelivery ignored", extra=context)
            return
        age = (self.clock() - published_at).total_seconds() if published_at else 0.0
        if age > self.settings.max_event_age_s:
            # Retrying forever helps nobody: record why and acknowledge.
            limit = self.settings.max_event_age_s
            reason = f"dropped: the job waited {int(age)} s, over the {limit} s limit"
            self._fail_job(job, reason, context)
            return
        started = self.store.update_job(job.job_id, lambda j: transitions.start(j, self.clock()))
        if started:
            log.info(
                "job started", extra={**context, "state": "generating", "event": "job_started"}
            )
        # The row turns to "generating" while the variants are made: the sheet
        # write (coalesced and rate-limited) stays off the path of the Gemini calls.
        with ThreadPoolExecutor(max_workers=1) as side:
            shown = side.submit(self.sheet.sync, job.job_id)
            try:
                self._generate(job, deadline, context)
            finally:
                if shown.exception() is not None:
                    # The sync at the end of the delivery writes the row anyway.
                    log.warning(
                        "sheet row not updated at start: %s",
                        shown.exception(),
                        extra=context,
                    )

    def _generate(self, job: Job, deadline: float, context: Context) -> None:
        """References, then every variant; raises TransientError to be retried."""
        try:
            references = (
                self.references.load(job.ref_pack_public_url) if job.ref_pack_public_url else []
            )
        except PermanentError as exc:
            self._fail_job(job, f"reference pack: {exc}", context)
            return
        run = _Run(
            job=job,
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
        self.sheet.sync(job.job_id)
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
        context["attempt"], expires = claimed
        prefix = f"{self.settings.images_prefix}{job.scene_id}/{job.job_id}/var_{n}."
        existing = self.objects.find(self.settings.images_bucket, prefix)
        if existing is not None:
            # Generated by a delivery that died before recording it: never pay again.
            mime = MIME_BY_EXTENSION.get(existing.rsplit(".", 1)[-1], "")
            spent = Spent(job.model, job.price_per_image)
            self._record_upload(job, n, existing, mime, spent, context)
            return None
        budget = self.settings.gemini_budget_s
        if time.monotonic() + budget > run.deadline or self._seconds_until(expires) < budget:
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
        name = prefix + EXTENSIONS[image.mime_type]
        spent = Spent(job.model, job.price_per_image, dict(image.usage))
        metadata = {
            "job_id": job.job_id,
            "scene_id": job.scene_id,
            "batch_id": job.batch_id,
            "variant": str(n),
            "model": job.model,
            "cost_usd": spent.cost_usd,
            **{key: str(value) for key, value in image.usage.items()},
        }
        created = self.objects.create(
            self.settings.images_bucket, name, image.data, image.mime_type, metadata
        )
        context["duration_ms"] = _ms_since(begin)
        if not created:
            # Only a claim that outlived its lease gets here: we paid, the first image stays.
            log.warning(
                "object existed already; kept the first",
                extra={**context, "object": name, "event": "duplicate_generation"},
            )
        self._record_upload(job, n, name, image.mime_type, spent, context)
        return None

    def _claim(self, run: _Run, n: int, context: Context) -> tuple[int, datetime] | None:
        """Take the variant's lease, waiting a bounded time for a live holder.

        Returns (attempt number, lease expiry), or None when the variant is finished.
        """
        lease = timedelta(seconds=self.settings.variant_lease_s)
        # Waiting must leave this delivery the time for its own Gemini call.
        wait_s = min(
            self.settings.claim_wait_s,
            run.deadline - time.monotonic() - self.settings.gemini_budget_s,
        )
        give_up = time.monotonic() + max(0.0, wait_s)
        attempt: list[int] = []

        def take(job: Job) -> tuple[Job | None, tuple[Claim, datetime | None]]:
            updated, outcome = transitions.claim(job, n, run.claim_id, self.clock(), lease)
            if updated is not None:
                attempt[:] = [updated.variant(n).attempts]
            return updated, outcome

        while True:
            outcome, expires = self.store.update_job(run.job.job_id, take)
            if outcome == Claim.CLAIMED and expires is not None:
                log.info(
                    "variant claimed",
                    extra={
                        **context,
                        "attempt": attempt[0],
                        "state": "generating",
                        "event": "variant_claimed",
                    },
                )
                return attempt[0], expires
            if outcome == Claim.FINISHED:
                log.info(
                    "variant already finished; skipped",
                    extra={**context, "event": "variant_skipped"},
                )
                return None
            # Another delivery holds it. If that one dies, its lease runs out and
            # we take over; if our wait runs out first, we are retried.
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                raise TransientError(f"variant {n} is held by another delivery until {expires}")
            wait = HELD_POLL_S
            if expires is not None:
                wait = min(wait, max(0.05, self._seconds_until(expires)))
            self.sleep(min(wait, remaining))

    def _release(self, run: _Run, n: int, reason: str, context: Context) -> TransientError:
        """Give the claim back so a redelivery can make the variant."""
        self.store.update_job(
            run.job.job_id,
            lambda j: transitions.release(j, n, run.claim_id, reason, self.clock()),
        )
        log.warning(
            "variant will be retried",
            extra={**context, "state": "pending", "error": reason, "event": "variant_released"},
        )
        return TransientError(reason)

    def _variant_failed(self, run: _Run, n: int, reason: str, context: Context) -> None:
        finished = self._finishing(
            run.job.job_id,
            lambda j: transitions.variant_failed(j, n, reason, self.clock(), run.claim_id),
        )
        log.warning(
            "variant failed",
            extra={**context, "state": "failed", "error": reason, "event": "variant_failed"},
        )
        if finished is not None:
            log_job_finished(log, finished)

    def _record_upload(
        self, job: Job, n: int, name: str, content_type: str, spent: Spent, context: Context
    ) -> None:
        self.store.update_job(
            job.job_id,
            lambda j: transitions.uploaded(j, n, name, content_type, self.clock(), spent),
        )
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
    def _fail_job(self, job: Job, reason: str, context: Context) -> None:
        finished = self._finishing(
            job.job_id, lambda j: transitions.fail_job(j, reason, self.clock())
        )
        if finished is not None:
            log_job_finished(log, finished)
        else:
            # Uploaded variants still get their thumbnails; those end the job.
            log.warning(
                "unfinished variants failed",
                extra={**context, "error": reason, "event": "variants_failed"},
            )
        self.sheet.sync(job.job_id)

    def _finishing(
        self, job_id: str, change: Callable[[Job], tuple[Job | None, bool]]
    ) -> Job | None:
        """Apply a transition that may end the job; the ended job, if this one did."""
        ended: list[Job] = []

        def apply(job: Job) -> tuple[Job | None, bool]:
            updated, finished = change(job)
            # A store may run this more than once (transaction retries): keep the last.
            ended[:] = [updated] if finished and updated is not None else []
            return updated, finished

        return ended[0] if self.store.update_job(job_id, apply) and ended else None

    def _seconds_until(self, moment: datetime) -> float:
        return (moment - self.clock()).total_seconds()


def _ms_since(begin: float) -> int:
    return int((time.monotonic() - begin) * 1000)
