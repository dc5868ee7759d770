"""The sweeper: every request and every job ends, whatever died when.

It runs with the scheduled tick (Cloud Scheduler; a loop in the dev stack) and
finishes what nobody else will:

- a request that died and was never retried (its record unanswered, its lease run
  out): once it recorded its batch (or version), the sweeper publishes it and
  keeps the prepared answer for a late retry; before that, it gives the
  reservation back and forgets the record;
- a live job no delivery ever started (its message lost, say): published again,
  at most every ``REPUBLISH_EVERY_S``; one older than ``MAX_EVENT_AGE_S`` fails
  with the reason instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from shared.config.settings import Settings
from shared.domain import lifecycle
from shared.domain.errors import NotFound, TransientError
from shared.domain.ids import new_id, utcnow
from shared.domain.request_records import RequestRecord
from shared.services import intake, rerolls
from shared.services.job_messages import publish_jobs, unstarted
from shared.services.ledger import JobLedger
from shared.services.once import REQUEST_LEASE_S
from shared.services.ports import BudgetLedger, IdempotencyStore, JobPublisher, JobStore

log = logging.getLogger(__name__)

# A live job not started this long after it was recorded (or last published) is
# published again: its message was lost, or never sent.
REPUBLISH_AFTER_S = 300.0
REPUBLISH_EVERY_S = 600.0
RECORDS_PER_SWEEP = 200
JOBS_PER_SWEEP = 500


@dataclass
class SweepReport:
    requests_finished: int = 0
    requests_undone: int = 0
    jobs_republished: int = 0
    jobs_failed: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Sweeper:
    settings: Settings
    store: JobStore
    ledger: JobLedger
    idempotency: IdempotencyStore
    budget: BudgetLedger
    publisher: JobPublisher
    clock: Callable[[], datetime] = utcnow

    def sweep(self) -> SweepReport:
        report = SweepReport()
        for record in self.idempotency.stale(self.clock(), RECORDS_PER_SWEEP):
            try:
                self._request(record, report)
            except (TransientError, NotFound) as exc:
                report.errors.append(f"request {record.names}: {exc}")
        self._unstarted_jobs(report)
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
                else rerolls.reservation_key(record.key)
            )
            self.budget.release(str(intent["caller"]), str(intent["day"]), key)
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
        if record.body:
            self.idempotency.finish(record.key, holder, record.body)
        else:
            # Recorded, but its answer was never prepared: a late retry answers it.
            self.idempotency.let_go(record.key, holder)
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
    def _unstarted_jobs(self, report: SweepReport) -> None:
        now = self.clock()
        before = now - timedelta(seconds=REPUBLISH_AFTER_S)
        limit = self.settings.max_event_age_s
        for job in self.store.unstarted_jobs(before, JOBS_PER_SWEEP):
            age = (now - job.created_at).total_seconds()
            if age > limit:
                reason = (
                    f"dropped: no delivery started it in {int(age)} s, over the {limit} s "
                    "limit (its messages never reached the generate function)"
                )
                applied = self.ledger.apply(
                    job.job_id, partial(lifecycle.fail_job, reason=reason, now=self.clock())
                )
                report.jobs_failed += int(applied.changed)
                continue
            last = job.republished_at or job.created_at
            if (now - last).total_seconds() < REPUBLISH_EVERY_S and job.republished_at:
                continue
            attributes = {"batch_id": job.batch_id, "caller": job.caller, "reason": "sweep"}
            if publish_jobs(self.publisher, [job], attributes):
                report.errors.append(f"job {job.job_id}: not published")
                continue
            self.ledger.apply(job.job_id, lambda j: lifecycle.republished(j, self.clock()))
            report.jobs_republished += 1
