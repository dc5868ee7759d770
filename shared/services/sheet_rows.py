"""One sheet writer for the whole fleet: rows are queued by the deliveries that
change jobs, and written by the writer, a spreadsheet at a time.

Where ``SHEET_ROWS_TOPIC`` is set, a delivery does not write its job's row: it
queues the job's spreadsheet (``QueuedRows``), and its job keeps its follow-up
mark until the row is written. The writer (the ``write_sheet_rows`` function, one
instance) takes a spreadsheet's jobs that still have follow-ups and runs them all
at once (``SheetRows``): their rows meet in the instance's coalescer and go in one
write, at the instance's pace, which is then the fleet's. A delivery never waits
for the Sheets quota, so images are made at Gemini's pace however many
spreadsheets share the quota; a row is written by the one protocol of
``SheetSync`` (never older over newer), and a queue message lost is made up by the
sweeper, which follows up any job whose mark stays.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from shared.contracts.links import LinkSigner
from shared.contracts.sheet_row import row_digest
from shared.domain.errors import TransientError
from shared.domain.job import Job
from shared.services.ledger import JobLedger
from shared.services.ports import JobStore, RowsQueue

log = logging.getLogger(__name__)

# Rows of one spreadsheet taken at once: about one Sheets write (the coalescer's
# rows per call); more are queued again.
ROWS_PER_FLUSH = 100


@dataclass(frozen=True)
class QueuedRows:
    """The rows of the deliveries' jobs, handed to the fleet's writer (in place of
    ``SheetSync`` in every function but the writer)."""

    store: JobStore
    links: LinkSigner
    queue: RowsQueue

    def is_current(self, job: Job) -> bool:
        """Whether the row already shows this state of the job."""
        return row_digest(job, self.links) == job.sheet_digest

    def sync(self, job_id: str, wait: bool = True) -> bool:
        """Queue the job's spreadsheet for the writer unless its row is current and
        nothing else follows up; ``TransientError`` if it cannot be queued (the job
        keeps its mark, so its event is retried, or the sweeper queues it)."""
        job = self.store.get_job(job_id)
        if job is None or (self.is_current(job) and job.followups_since is None):
            return True
        self.queue.flush(job.spreadsheet_id)
        return True


@dataclass(frozen=True)
class SheetRows:
    """The writer's use case: a spreadsheet's follow-ups, all at once."""

    store: JobStore
    ledger: JobLedger  # with the rows written (SheetSync), not queued
    queue: RowsQueue
    workers: int = 16
    per_flush: int = ROWS_PER_FLUSH

    def flush(self, spreadsheet_id: str) -> int:
        """Run the follow-ups of the spreadsheet's jobs (their rows written, in as
        few writes as the coalescer makes of them); how many jobs. Raises
        ``TransientError`` when some could not be done now (the message comes
        again); more than ``per_flush`` are queued again."""
        jobs = self.store.unfollowed_in(spreadsheet_id, self.per_flush)
        if not jobs:
            return 0
        failed: list[str] = []

        def one(job: Job) -> None:
            try:
                self.ledger.follow_up(job.job_id)
            except TransientError as exc:
                failed.append(f"{job.job_id}: {exc}")

        if self.workers <= 1 or len(jobs) == 1:
            for job in jobs:
                one(job)
        else:
            # Together, so that their rows meet in the coalescer and go in one write.
            with ThreadPoolExecutor(
                min(self.workers, len(jobs)), thread_name_prefix="rows"
            ) as pool:
                list(pool.map(one, jobs))
        if len(jobs) >= self.per_flush:
            self.queue.flush(spreadsheet_id)
        log.info(
            "sheet rows written",
            extra={"event": "rows_flushed", "state": f"{len(jobs)} jobs, {len(failed)} left"},
        )
        if failed:
            raise TransientError(f"{len(failed)} row(s) not written yet: {failed[0]}")
        return len(jobs)
