"""The economy lane: images made through Gemini's Batch API at half price.

One tick (Cloud Scheduler calls the ``run_economy`` function; a loop in the dev
stack) submits the pending variants of economy jobs, grouped into Gemini batches,
and collects the batches Gemini finished. Never paying twice rests on the same
things as the live lane: a record of the batch is written and its variants are
claimed (``BATCHED``) before Gemini sees a request; only the record's lease
holder submits or collects it; images are stored create-only, so a collector that
died mid-download and the one that resumes store every image once. From the
stored image on, the ordinary finalize → thumbnail → sheet path runs.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cached_property, partial

from shared.config.settings import Settings
from shared.contracts.messages import JobMessage
from shared.contracts.objects import ObjectNames
from shared.domain import briefs, economy_batches, lifecycle, pricing
from shared.domain.economy_batches import ENDED_UNMADE, EconomyBatch, item_key, parse_key
from shared.domain.errors import NotFound, NotReady, PermanentError, TransientError
from shared.domain.ids import new_id, utcnow
from shared.domain.job import Job, VariantState, money
from shared.domain.lifecycle import Spent
from shared.services.heartbeat import Heartbeat, ThreadHeartbeat
from shared.services.job_references import JobReferences
from shared.services.ledger import Entries, JobLedger
from shared.services.ports import (
    BatchRunner,
    EconomyBatchStore,
    EconomyLine,
    ImageProbe,
    JobPublisher,
    JobStore,
    LineResult,
    ObjectStore,
    ReferenceImage,
    ReferenceLoader,
)
from shared.services.stored_images import object_names, store_image

log = logging.getLogger(__name__)

# Economy jobs looked at per tick (their pending variants fill batches).
JOBS_PER_TICK = 2000
RECORDS_PER_TICK = 200


@dataclass
class TickReport:
    """What one tick did, for the log and the scheduler's answer."""

    batches_submitted: int = 0
    variants_submitted: int = 0
    batches_checked: int = 0
    batches_collected: int = 0
    images_stored: int = 0
    variants_failed: int = 0
    variants_to_live: int = 0
    skipped_held: int = 0
    out_of_time: bool = False
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Economy:
    settings: Settings
    ledger: JobLedger
    store: JobStore
    batches: EconomyBatchStore
    runner: BatchRunner
    references: ReferenceLoader
    objects: ObjectStore
    publisher: JobPublisher
    # Checks that an anchored image, or the image an edit starts from, is one.
    probe: ImageProbe
    clock: Callable[[], datetime] = utcnow
    monotonic: Callable[[], float] = time.monotonic
    heartbeat: Heartbeat = field(default_factory=ThreadHeartbeat)
    # Who holds leases: one tick (``tick`` runs each call under a new name).
    holder: str = field(default_factory=lambda: f"tick_{uuid.uuid4().hex[:12]}")

    @cached_property
    def names(self) -> ObjectNames:
        return object_names(self.settings)

    @cached_property
    def job_references(self) -> JobReferences:
        return JobReferences(self.settings, self.store, self.objects, self.references, self.probe)

    def tick(self) -> TickReport:
        """Submit what is pending, then collect what Gemini finished, within the budget.

        Each call holds its leases under its own name: an instance serves
        concurrent requests in threads, and two ticks must exclude each other
        there as they do across instances.
        """
        return replace(self, holder=f"tick_{uuid.uuid4().hex[:12]}")._tick()

    def _tick(self) -> TickReport:
        report = TickReport()
        deadline = self.monotonic() + self.settings.economy_tick_budget_s
        self._submit_pending(report, deadline)
        self._work_open(report, deadline)
        log.info(
            "economy tick",
            extra={"event": "economy_tick", "state": str(report.__dict__)},
        )
        return report

    # ------------------------------------------------------------------ submit
    def _submit_pending(self, report: TickReport, deadline: float) -> None:
        jobs = self.store.economy_jobs(JOBS_PER_TICK)
        for group in economy_batches.groups(jobs, self.settings.economy_batch_max_requests):
            if self.monotonic() > deadline:
                report.out_of_time = True
                return
            now = self.clock()
            record = EconomyBatch(
                record_id=new_id("ecb"),
                model=group.shape.model,
                aspect_ratio=group.shape.aspect_ratio,
                image_size=group.shape.image_size,
                # Written before any claim, so a crash leaves the candidates known.
                items=[item_key(job.job_id, n) for job, n in group.items],
                created_at=now,
                updated_at=now,
                lease_holder=self.holder,
                lease_expires=now + self._lease,
            )
            self.batches.create(record)
            try:
                with self._holding(record), self.ledger.entries() as rows:
                    self._send(record, report, rows)
            except TransientError as exc:
                report.errors.append(f"{record.record_id}: {exc}")
                log.warning("economy batch not submitted yet: %s", exc, extra=self._ctx(record))
            finally:
                self._release(record)

    def _send(
        self, record: EconomyBatch, report: TickReport, rows: Entries, resumed: bool = False
    ) -> None:
        """Claim the record's variants (idempotent) and create the Gemini batch once."""
        # After a crash (or a lost answer) between creating and recording, Gemini has
        # the batch already, with exactly the lines sent then: nothing is claimed or
        # read again, and no second batch is made.
        found = self.runner.find(record.record_id) if resumed else None
        if found:
            name, inline, sent = found, False, len(record.items)
        else:
            lines = self._lines(record, report, rows)
            if not lines:
                self.batches.update(
                    record.record_id, lambda b: economy_batches.collected(b, self.clock())
                )
                return
            self._still_ours(record)
            try:
                name, inline = self.runner.submit(record.model, record.record_id, lines)
            except PermanentError as exc:
                why = f"the Gemini Batch API refused the batch: {exc}"
                self._send_on(record, why, report, rows)
                return
            sent = len(lines)
        recorded = self.batches.update(
            record.record_id,
            lambda b: economy_batches.submitted(b, name, inline, self.clock(), self.holder),
        )
        if not recorded:
            # We lost the record while we submitted (our tick stalled past its lease):
            # the batch we made is nobody's. Cancelled, so it is neither made nor paid.
            self.runner.cancel(name)
            log.warning(
                "orphan Gemini batch cancelled",
                extra={**self._ctx(record), "event": "economy_orphan", "object": name},
            )
            return
        keys = [parse_key(key) for key in record.items]
        for job_id in dict.fromkeys(key[0] for key in keys if key is not None):
            rows.apply(
                job_id,
                lambda j: economy_batches.batch_update(
                    j, record.record_id, self.clock(), name=name, state="pending"
                ),
            )
        report.batches_submitted += 1
        report.variants_submitted += sent
        log.info(
            "economy batch submitted",
            extra={**self._ctx(record), "event": "economy_submitted", "object": name},
        )

    def _lines(self, record: EconomyBatch, report: TickReport, rows: Entries) -> list[EconomyLine]:
        """Claim the record's variants and build their request lines. A variant whose
        references fail for good fails; one whose references are not ready, or could
        not be read this time (counted as a failure), waits for a later batch."""
        now = self.clock()
        claimed: list[tuple[Job, int]] = []
        for key in record.items:
            job, n = self._variant_of(key)
            if job is None:
                continue
            applied = rows.apply(
                job.job_id,
                partial(economy_batches.batch_claim, n=n, record=record.record_id, now=now),
            )
            variant = applied.job.variant(n)
            if variant.state != VariantState.BATCHED or variant.gemini_batch != record.record_id:
                continue
            if variant.cancel_requested:
                # A cancel reached it before Gemini saw it: it ends cancelled, unmade.
                self._drop(applied.job, n, record, None, report, rows)
                continue
            claimed.append((applied.job, n))
        entry = self.settings.catalog.entry(record.model)
        lines: list[EconomyLine] = []
        loaded: dict[str, list[ReferenceImage]] = {}
        for job, n in claimed:
            try:
                # Style references and anchors first, then the pack, up to the model's limit.
                refs = self.job_references.load(job, self._ctx(record), loaded)
            except PermanentError as exc:
                self._fail(job, n, record, str(exc), report, rows)
                continue
            except NotReady as exc:
                age = (self.clock() - job.created_at).total_seconds()
                limit = self.settings.max_event_age_s
                if age > limit:
                    # An anchor that is never made must not hold the image for ever.
                    why = f"waited {int(age)} s, over the {limit} s limit: {exc}"
                    self._fail(job, n, record, why, report, rows)
                else:
                    self._drop(job, n, record, None, report, rows)
                continue
            except TransientError as exc:
                self._drop(job, n, record, str(exc), report, rows)
                continue
            ratio, size = self.settings.shape_for(job.model, job.aspect_ratio, job.image_size)
            lines.append(
                EconomyLine(
                    key=item_key(job.job_id, n),
                    prompt=briefs.labelled(job.prompt, [r.label for r in refs]),
                    references=refs,
                    seed=n,
                    aspect_ratio=ratio,
                    image_size=size,
                    thinking_level=(
                        entry.thinking_level(self.settings.gemini_thinking_level) if entry else None
                    ),
                )
            )
        return lines

    # ------------------------------------------------------------------ collect
    def _work_open(self, report: TickReport, deadline: float) -> None:
        for record in self.batches.open_batches(RECORDS_PER_TICK):
            if self.monotonic() > deadline:
                report.out_of_time = True
                return
            now = self.clock()
            taken = self.batches.update(
                record.record_id,
                partial(economy_batches.take_lease, holder=self.holder, now=now, lease=self._lease),
            )
            if not taken:
                report.skipped_held += 1
                continue
            current = self.batches.get(record.record_id) or record
            try:
                with self._holding(current), self.ledger.entries() as rows:
                    if current.state == "claiming":
                        # Its submitter died before recording the Gemini batch.
                        self._send(current, report, rows, resumed=True)
                    elif current.open:
                        self._check(current, report, deadline, rows)
            except TransientError as exc:
                report.errors.append(f"{record.record_id}: {exc}")
                log.warning("economy batch not done yet: %s", exc, extra=self._ctx(record))
            finally:
                self._release(record)

    def _check(
        self, record: EconomyBatch, report: TickReport, deadline: float, rows: Entries
    ) -> None:
        if record.gemini_name is None:
            return
        report.batches_checked += 1
        progress = self.runner.progress(record.gemini_name)
        self.batches.update(
            record.record_id,
            lambda b: economy_batches.observed(b, progress.state, progress.error, self.clock()),
        )
        self._tell_jobs(record, progress.state, rows)
        if progress.state == "succeeded":
            self._store_results(record, report, deadline, rows)
        elif progress.state in ENDED_UNMADE:
            why = f"the Gemini batch {progress.state}" + (
                f": {progress.error}" if progress.error else ""
            )
            self._send_on(record, why, report, rows)

    def _tell_jobs(self, record: EconomyBatch, state: str, rows: Entries) -> None:
        """Each job's view of its batch (for /status and the row), when it moved."""
        job_ids = dict.fromkeys(parsed[0] for key in record.items if (parsed := parse_key(key)))
        for job_id in job_ids:
            try:
                rows.apply(
                    job_id,
                    lambda j: economy_batches.batch_update(
                        j, record.record_id, self.clock(), state=state
                    ),
                )
            except NotFound:
                continue

    def _store_results(
        self, record: EconomyBatch, report: TickReport, deadline: float, rows: Entries
    ) -> None:
        """Every line: its image stored create-only and recorded, or its variant failed.

        Out of time, it stops between two lines; the next tick reads the results
        again and stores only what is missing.
        """
        if record.gemini_name is None:
            return
        seen: set[str] = set()

        def store(result: LineResult) -> None:
            if self.monotonic() > deadline:
                report.out_of_time = True
                raise TransientError("out of time in this tick; the next one resumes")
            seen.add(result.key)
            job, n = self._variant_of(result.key)
            if job is not None:
                self._store_line(record, job, n, result, report, rows)

        self.runner.results(record.gemini_name, store)
        for key in record.items:
            if key in seen:
                continue
            job, n = self._variant_of(key)
            if job is not None:
                self._fail(job, n, record, "missing from the Gemini batch's results", report, rows)
        self.batches.update(record.record_id, lambda b: economy_batches.collected(b, self.clock()))
        report.batches_collected += 1
        log.info(
            "economy batch collected", extra={**self._ctx(record), "event": "economy_collected"}
        )

    def _store_line(
        self,
        record: EconomyBatch,
        job: Job,
        n: int,
        result: LineResult,
        report: TickReport,
        rows: Entries,
    ) -> None:
        if result.image is None:
            self._fail(job, n, record, result.error or "Gemini returned no image", report, rows)
            return
        image = result.image
        entry = self.settings.catalog.entry(job.model)
        cost = (
            pricing.actual_cost(entry, "batch", job.image_size, image.usage)
            if entry
            else Decimal(job.price_per_image)
        )
        spent = Spent(job.model, money(cost), dict(image.usage))
        name, created = store_image(
            self.objects, self.settings.images_bucket, self.names, job, n, image, spent
        )
        rows.apply(
            job.job_id,
            lambda j: lifecycle.uploaded(j, n, name, image.mime_type, self.clock(), spent),
        )
        if created:
            report.images_stored += 1

    def _send_on(self, record: EconomyBatch, why: str, report: TickReport, rows: Entries) -> None:
        """What the batch did not make: to the live lane, or failed, as configured."""
        to_live = self.settings.economy_on_expiry == "live"
        live: dict[str, Job] = {}
        for key in record.items:
            job, n = self._variant_of(key)
            if job is None:
                continue
            if not to_live:
                self._fail(job, n, record, why, report, rows)
                continue
            applied = rows.apply(
                job.job_id,
                partial(
                    economy_batches.batch_returned, n=n, record=record.record_id, now=self.clock()
                ),
            )
            variant = applied.job.variant(n)
            # Returned earlier too (a tick that died before publishing): publish again.
            # A variant a cancel reached came back cancelled: nothing more to make.
            if variant.state == VariantState.PENDING and variant.gemini_batch == record.record_id:
                report.variants_to_live += int(applied.changed)
                live[job.job_id] = applied.job
        if live:
            failed = self.publisher.publish(
                [
                    (JobMessage(job_id=j.job_id, batch_id=j.batch_id, scene_id=j.scene_id), {})
                    for j in live.values()
                ]
            )
            if failed:
                # The record stays open: the next tick publishes them again.
                raise TransientError(f"could not hand {sorted(failed)} to the live lane")
            log.warning(
                "economy variants sent to the live lane",
                extra={**self._ctx(record), "error": why, "event": "economy_to_live"},
            )
        self.batches.update(record.record_id, lambda b: economy_batches.collected(b, self.clock()))
        report.batches_collected += 1

    def _fail(
        self,
        job: Job,
        n: int,
        record: EconomyBatch,
        reason: str,
        report: TickReport,
        rows: Entries,
    ) -> None:
        applied = rows.apply(
            job.job_id,
            lambda j: economy_batches.batch_returned(j, n, record.record_id, self.clock(), reason),
        )
        if applied.changed:
            report.variants_failed += 1

    def _drop(
        self,
        job: Job,
        n: int,
        record: EconomyBatch,
        error: str | None,
        report: TickReport,
        rows: Entries,
    ) -> None:
        budget = self.settings.gemini_failure_budget
        applied = rows.apply(
            job.job_id,
            partial(
                economy_batches.batch_dropped,
                n=n,
                record=record.record_id,
                now=self.clock(),
                error=error,
                failure_budget=budget,
            ),
        )
        if applied.value:
            report.variants_failed += 1
        log.warning(
            "economy variant left for a later batch",
            extra={
                **self._ctx(record),
                "job_id": job.job_id,
                "variant": n,
                "error": error,
                "event": "attempt_failed" if error else "economy_waiting",
            },
        )

    # ------------------------------------------------------------------ helpers
    @property
    def _lease(self) -> timedelta:
        return timedelta(seconds=self.settings.economy_lease_s)

    def _holding(self, record: EconomyBatch) -> AbstractContextManager[None]:
        """Renew our lease on the record while we work on it (reading references,
        submitting, downloading may take minutes), so no other tick takes it over."""

        def renew() -> bool:
            return bool(
                self.batches.update(
                    record.record_id,
                    partial(
                        economy_batches.renew_lease,
                        holder=self.holder,
                        now=self.clock(),
                        lease=self._lease,
                    ),
                )
            )

        return self.heartbeat.keep(renew, self.settings.economy_lease_s / 3)

    def _still_ours(self, record: EconomyBatch) -> None:
        """Right before a Gemini batch is created: the record is still ours."""
        current = self.batches.get(record.record_id)
        if current is None or current.lease_holder != self.holder or current.gemini_name:
            raise TransientError("another tick holds this record now")

    def _release(self, record: EconomyBatch) -> None:
        try:
            self.batches.update(
                record.record_id,
                lambda b: economy_batches.release_lease(b, self.holder, self.clock()),
            )
        except Exception:  # the lease runs out by itself
            log.warning("economy lease not released", extra=self._ctx(record), exc_info=True)

    def _variant_of(self, key: str) -> tuple[Job | None, int]:
        parsed = parse_key(key)
        if parsed is None:
            return None, 0
        job = self.ledger.get(parsed[0])
        if job is None or str(parsed[1]) not in job.variants:
            return None, 0
        return job, parsed[1]

    @staticmethod
    def _ctx(record: EconomyBatch) -> dict[str, object]:
        return {"batch_id": record.record_id, "model": record.model}
