"""The sweeper: every request and every job ends, whatever died when.

It runs with the scheduled tick (Cloud Scheduler; a loop in the dev stack) and
finishes what nobody else will:

- a request that died and was never retried (its record unanswered, its lease run
  out): once it recorded its batch (or version), the sweeper publishes it and
  keeps the prepared answer for a late retry; before that, it gives the
  reservation back and forgets the record;
- a live job no delivery ever started (its message lost, say): published again,
  at most every ``REPUBLISH_EVERY_S``; one older than ``MAX_EVENT_AGE_S`` fails
  with the reason instead;
- a live job that started but is still unfinished ``MAX_EVENT_AGE_S`` after it
  was made (its deliveries kept failing, or stopped coming): every image nobody is
  making fails with the reason;
- an export no delivery started (its message lost, or never sent): published
  again in the same way, or failed with the reason once too old;
- a job changed ``FOLLOW_UP_AFTER_S`` ago whose follow-ups never ran (the delivery
  died right after the change, or a cancel's row update was never queued): its
  budget is settled and its row written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from shared.config.settings import Settings
from shared.contracts.messages import ExportMessage
from shared.domain import handover, lifecycle
from shared.domain.errors import NotFound, TransientError
from shared.domain.ids import new_id, utcnow
from shared.domain.job import Job
from shared.domain.request_records import RequestRecord
from shared.services import intake, rerolls
from shared.services.job_messages import publish_jobs, unstarted
from shared.services.ledger import JobLedger
from shared.services.once import REQUEST_LEASE_S
from shared.services.ports import (
    BudgetLedger,
    ExportPublisher,
    Fence,
    FencedOut,
    IdempotencyStore,
    JobPublisher,
    JobStore,
)

log = logging.getLogger(__name__)

# A live job not started this long after it was recorded (or last published) is
# published again: its message was lost, or never sent.
REPUBLISH_AFTER_S = 300.0
REPUBLISH_EVERY_S = 600.0
RECORDS_PER_SWEEP = 200
JOBS_PER_SWEEP = 500
# Longer than a delivery normally takes between a change and its row write.
FOLLOW_UP_AFTER_S = 300.0


@dataclass
class SweepReport:
    requests_finished: int = 0
    requests_undone: int = 0
    jobs_republished: int = 0
    jobs_failed: int = 0
    images_expired: int = 0
    jobs_followed_up: int = 0
    exports_republished: int = 0
    exports_failed: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Sweeper:
    settings: Settings
    store: JobStore
    ledger: JobLedger
    idempotency: IdempotencyStore
    budget: BudgetLedger
    publisher: JobPublisher
    exports: ExportPublisher
    clock: Callable[[], datetime] = utcnow

    def sweep(self) -> SweepReport:
        report = SweepReport()
        # What ends a job past its age limit goes first: it is a few writes, and it
        # must not wait behind a slow publish of something else in a sweep that
        # then runs out of time.
        young = self._fail_old_unstarted(report)
        self._overdue_jobs(report)
        for record in self.idempotency.stale(self.clock(), RECORDS_PER_SWEEP):
            try:
                self._request(record, report)
            except (TransientError, NotFound) as exc:
                report.errors.append(f"request {record.names}: {exc}")
        self._republish(young, report)
        self._unfollowed_jobs(report)
        self._queued_exports(report)
        log.info("sweep", extra={"event": "sweep", "state": str(report.__dict__)})
        return report

    # ------------------------------------------------------------------ requests
    def _request(self, stale: RequestRecord, report: SweepReport) -> None:
        """Finish a request nobody will retry, or undo what it reserved."""
        holder = new_id("sweep")
        now = self.clock()
        record, mine = self.idempotency.begin(
            stale.key,
            stale.names,
            holder,
            now,
            stale.expires_at,
            timedelta(seconds=REQUEST_LEASE_S),
        )
        if not mine or record.answered:
            return  # a retry came meanwhile
        intent = record.intent
        kind = intent.get("kind")
        if kind == "batch" and (batch := self.store.get_batch(record.names)) is not None:
            jobs = self.store.get_jobs(batch.job_ids)
            attributes = {"batch_id": batch.batch_id, "caller": batch.caller, "run_mode": "live"}
            failed = publish_jobs(self.publisher, unstarted(jobs), attributes)
            self._finished(record, holder, not failed, report)
            return
        if kind == "reroll" and (number := self._version_of(record)) is not None:
            job = self.store.get_job(str(intent["job_id"]))
            if job is not None:
                rerolls.publish_version(
                    self.publisher, job, int(intent["variant"]), number, str(intent["caller"])
                )
            self._finished(record, holder, True, report)
            return
        # It died before it recorded anything to make: give back what it reserved.
        if kind in ("batch", "reroll"):
            key = (
                intake.reservation_key(record.names)
                if kind == "batch"
                else rerolls.reservation_key(record.names)
            )
            try:
                # Only while the sweeper holds the record: a retry that took it over
                # meanwhile (the sweeper was slow) goes on with its reservation.
                self.budget.release(
                    str(intent["caller"]), str(intent["day"]), key, Fence(record.key, holder)
                )
            except FencedOut:
                return
        self.idempotency.abandon(record.key, holder)
        report.requests_undone += 1
        log.warning(
            "request undone",
            extra={"event": "request_undone", "batch_id": record.names, "state": kind},
        )

    def _finished(
        self, record: RequestRecord, holder: str, published: bool, report: SweepReport
    ) -> None:
        if not published:
            self.idempotency.let_go(record.key, holder)
            raise TransientError("could not publish it yet; the next sweep tries again")
        # Answered; with no answer prepared (its request died right before), a late
        # retry builds it from what the record names.
        self.idempotency.finish(record.key, holder, record.body)
        report.requests_finished += 1
        log.info(
            "request finished by the sweeper",
            extra={"event": "request_finished", "batch_id": record.names},
        )

    def _version_of(self, record: RequestRecord) -> int | None:
        """The version a re-roll request added, if it got that far."""
        job = self.store.get_job(str(record.intent["job_id"]))
        if job is None:
            return None
        variant = job.variants.get(str(record.intent["variant"]))
        for version in variant.versions if variant is not None else []:
            if version.request_key == record.key:
                return version.version
        return None

    # ------------------------------------------------------------------ jobs
    def _fail_old_unstarted(self, report: SweepReport) -> list[Job]:
        """Fail the live jobs no delivery started within the age limit; the younger
        ones (to publish again) are returned."""
        now = self.clock()
        before = now - timedelta(seconds=REPUBLISH_AFTER_S)
        limit = self.settings.max_event_age_s
        young = []
        for job in self.store.unstarted_jobs(before, JOBS_PER_SWEEP):
            age = (now - job.created_at).total_seconds()
            if age <= limit:
                young.append(job)
                continue
            reason = (
                f"dropped: no delivery started it in {int(age)} s, over the {limit} s "
                "limit (its messages never reached the generate function)"
            )
            try:
                applied = self.ledger.apply(
                    job.job_id, partial(lifecycle.fail_job, reason=reason, now=self.clock())
                )
            except TransientError as exc:  # its row is busy: the next sweep shows it
                report.errors.append(f"job {job.job_id}: {exc}")
                continue
            report.jobs_failed += int(applied.changed)
        return young

    def _republish(self, young: list[Job], report: SweepReport) -> None:
        """Publish again the live jobs whose messages were lost (every few minutes)."""
        now = self.clock()
        for job in young:
            last = job.republished_at or job.created_at
            if (now - last).total_seconds() < REPUBLISH_EVERY_S and job.republished_at:
                continue
            attributes = {"batch_id": job.batch_id, "caller": job.caller, "reason": "sweep"}
            if publish_jobs(self.publisher, [job], attributes):
                report.errors.append(f"job {job.job_id}: not published")
                continue
            report.jobs_republished += 1
            try:
                self.ledger.apply(job.job_id, lambda j: lifecycle.republished(j, self.clock()))
            except TransientError as exc:  # published; the mark waits for the next sweep
                report.errors.append(f"job {job.job_id}: {exc}")

    def _unfollowed_jobs(self, report: SweepReport) -> None:
        before = self.clock() - timedelta(seconds=FOLLOW_UP_AFTER_S)
        for job in self.store.unfollowed_jobs(before, JOBS_PER_SWEEP):
            try:
                self.ledger.follow_up(job.job_id)
            except TransientError as exc:
                report.errors.append(f"job {job.job_id}: {exc}")
                continue
            report.jobs_followed_up += 1

    def _queued_exports(self, report: SweepReport) -> None:
        now = self.clock()
        limit = self.settings.max_event_age_s
        for batch in self.store.queued_exports(JOBS_PER_SWEEP):
            export = batch.export
            if export is None:
                continue
            export_id = export.export_id
            age = (now - export.requested_at).total_seconds()
            if age > limit:
                reason = (
                    f"dropped: no delivery started it in {int(age)} s, over the {limit} s limit"
                )
                failed = self.store.update_batch(
                    batch.batch_id,
                    partial(handover.fail, export_id=export_id, reason=reason, now=now),
                )
                report.exports_failed += int(failed is not None)
                continue
            last = export.republished_at or export.requested_at
            every = REPUBLISH_EVERY_S if export.republished_at else REPUBLISH_AFTER_S
            if (now - last).total_seconds() < every:
                continue
            try:
                self.exports.publish_export(
                    ExportMessage(batch_id=batch.batch_id, export_id=export_id)
                )
            except TransientError as exc:
                report.errors.append(f"export {export_id}: {exc}")
                continue
            self.store.update_batch(
                batch.batch_id, partial(handover.republished, export_id=export_id, now=now)
            )
            report.exports_republished += 1

    def _overdue_jobs(self, report: SweepReport) -> None:
        now = self.clock()
        limit = self.settings.max_event_age_s
        for job in self.store.overdue_jobs(now - timedelta(seconds=limit), JOBS_PER_SWEEP):
            age = int((now - job.created_at).total_seconds())
            reason = f"dropped: the job waited {age} s, over the {limit} s limit"
            try:
                applied = self.ledger.apply(
                    job.job_id, partial(lifecycle.expire, reason=reason, now=self.clock())
                )
            except TransientError as exc:  # its row is busy: the next sweep shows it
                report.errors.append(f"job {job.job_id}: {exc}")
                continue
            report.images_expired += applied.value
