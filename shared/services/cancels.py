"""Cancel a job or a whole batch: what has not started never reaches Gemini."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.contracts import status_words
from shared.contracts.answers import BatchCancelled, JobCancelled
from shared.contracts.messages import JobMessage
from shared.domain import cancellation
from shared.domain.ids import utcnow
from shared.domain.job import Job
from shared.services.ledger import JobLedger
from shared.services.ports import JobPublisher, JobStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cancels:
    """The HTTP function's cancel use cases. ``ledger`` gives back the budget of
    images cancelled unmade; the generate function writes the rows (a job message
    for a cancelled job only brings its row up to date)."""

    store: JobStore
    ledger: JobLedger
    publisher: JobPublisher
    clock: Callable[[], datetime] = utcnow

    def cancel_job(self, job_id: str, caller: str, admin: bool = False) -> JobCancelled | None:
        """None if the job is missing or someone else's."""
        job = self.store.get_job(job_id)
        if job is None or (job.caller != caller and not admin):
            return None
        return self._cancel([job], caller)[0]

    def cancel_batch(
        self, batch_id: str, caller: str, admin: bool = False
    ) -> BatchCancelled | None:
        batch = self.store.get_batch(batch_id)
        if batch is None or (batch.caller != caller and not admin):
            return None
        views = self._cancel(self.store.get_jobs(batch.job_ids), caller)
        return BatchCancelled(
            batch_id=batch_id,
            stopped=sum(v.stopped for v in views),
            running=sum(v.running for v in views),
            kept=sum(v.kept for v in views),
            jobs=views,
        )

    def _cancel(self, jobs: Sequence[Job], caller: str) -> list[JobCancelled]:
        views, changed = [], []
        for job in jobs:
            applied = self.ledger.apply(
                job.job_id, lambda j: cancellation.cancel(j, caller, self.clock())
            )
            done = applied.value
            if applied.changed:
                changed.append(applied.job)
            views.append(
                JobCancelled(
                    job_id=job.job_id,
                    scene_id=job.scene_id,
                    outcome=done.outcome.value,
                    state=applied.job.state.value,
                    status_text=status_words.progress(applied.job).status,
                    stopped=done.stopped,
                    running=done.running,
                    kept=done.kept,
                )
            )
            log.info(
                "job cancel",
                extra={
                    "job_id": job.job_id,
                    "batch_id": job.batch_id,
                    "event": "job_cancel",
                    "state": done.outcome.value,
                },
            )
        if changed:
            messages = [
                (
                    JobMessage(job_id=j.job_id, batch_id=j.batch_id, scene_id=j.scene_id),
                    {"batch_id": j.batch_id, "caller": caller, "reason": "cancel"},
                )
                for j in changed
            ]
            for job_id, error in self.publisher.publish(messages).items():
                # The row follows at the job's next delivery (its running images).
                log.warning(
                    "row update after cancel not queued",
                    extra={"job_id": job_id, "error": error},
                )
        return views
