"""The job ledger: every change to a job goes through here.

A change is a pure transition of ``shared/domain/lifecycle.py``. The ledger runs it on the
stored job (the store's compare-and-set may run it more than once; the result
of the run that was written is the one returned), tells whether it changed the
job and whether this very change finished it, logs ``job_finished`` exactly
once per job, and keeps the scene's sheet row in step with the job: a row that
a change made stale is written in the background while the delivery goes on,
and a delivery does not end before its job's row is current. It also settles
the daily budget: each image's reservation becomes what the image cost, or is
given back for an image never made (failed, or cancelled unmade), once per
image and version (the budget ledger keeps which images it settled, so a retry
settles nothing twice).

A change marks the job (``followups_since``) in the same write; the row write
that leaves the row current and the budget settled clears the mark. A delivery
that dies between a change and its follow-ups leaves the mark, and the sweeper
runs them (``follow_up``).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Generic, Protocol, TypeVar

from shared.domain import batch_news, settlement
from shared.domain.ids import utcnow
from shared.domain.job import Job, money
from shared.services.notices import Notices, news_told
from shared.services.ports import BudgetLedger, Fence, JobStore

log = logging.getLogger(__name__)

R = TypeVar("R")
Transition = Callable[[Job], tuple[Job | None, R]]


@dataclass(frozen=True)
class Applied(Generic[R]):
    """What one change did."""

    job: Job  # the job as stored after the change
    changed: bool
    finished: bool  # this change made the job terminal (true once per job)
    value: R  # what the transition returned besides the job


class Rows(Protocol):
    """Keeps a job's sheet row in step: ``SheetSync`` writes it, ``QueuedRows``
    (``shared/services/sheet_rows.py``) hands it to the fleet's writer."""

    def is_current(self, job: Job) -> bool: ...

    def sync(self, job_id: str, wait: bool = True) -> bool: ...


class JobLedger:
    """The one writer of jobs. ``rows`` is None where no sheet is written (intake);
    ``budget`` None where no image's budget is settled; ``notices`` None where no
    batch news is sent (no Chat webhook configured)."""

    def __init__(
        self,
        store: JobStore,
        rows: Rows | None = None,
        budget: BudgetLedger | None = None,
        clock: Callable[[], datetime] = utcnow,
        row_writers: Callable[[], Executor] = lambda: ThreadPoolExecutor(
            1, thread_name_prefix="row"
        ),
        notices: Notices | None = None,
    ) -> None:
        self.store = store
        self.rows = rows
        self.budget = budget
        self.clock = clock
        self.notices = notices
        # Where an entry writes its row while the delivery goes on (a thread; an
        # executor that runs the write at once works too, only slower).
        self.row_writers = row_writers

    def get(self, job_id: str) -> Job | None:
        return self.store.get_job(job_id)

    def apply(
        self, job_id: str, transition: Transition[R], fence: Fence | None = None
    ) -> Applied[R]:
        """One change, with the job's row written before it returns; with ``fence``,
        only while the request holds its record (``FencedOut``)."""
        with self.entry(job_id) as entry:
            return entry.apply(transition, fence)

    def follow_up(self, job_id: str) -> None:
        """Run the follow-ups of a job's changes that their delivery left undone (it
        died right after a change): its budget settlement, then its row, whose write
        clears the job's mark. Another delivery writing the row now is left to it."""
        job = self.store.get_job(job_id)
        if job is None:
            return
        self._settle_budget(job)
        self._tell(job)
        if self.rows is not None:
            self.rows.sync(job_id, wait=False)

    @contextmanager
    def entry(self, job: Job | str) -> Iterator[JobEntry]:
        """One delivery's dealings with one job; on exit the job's row is current.

        Given the job as the delivery read it, a row found stale is written too
        (say, a redelivery after the instance died before writing it).

        A failure of the final row write is raised (a transient one has the
        delivery retried), unless the delivery is already failing: then the
        delivery's own error wins and the row write's is logged.
        """
        entry = JobEntry(self, job if isinstance(job, str) else job.job_id)
        if not isinstance(job, str):
            # A delivery after a crash finishes what the dead one left undone.
            self._settle_budget(job)
            entry.note(job)
        try:
            yield entry
        except BaseException:
            entry.close(quiet=True)
            raise
        entry.close()

    @contextmanager
    def entries(self, max_open: int = 16) -> Iterator[Entries]:
        """Entries of many jobs at once, for work that touches job after job (an
        economy batch): rows are written in the background as changes come, and
        every row is current on exit. At most ``max_open`` stay open."""
        many = Entries(self, max_open)
        try:
            yield many
        except BaseException:
            many.close(quiet=True)
            raise
        many.close()

    def _change(
        self, job_id: str, transition: Transition[R], fence: Fence | None = None
    ) -> Applied[R]:
        def change(job: Job) -> tuple[Job | None, Applied[R]]:
            was_terminal = job.terminal
            updated, value = transition(job)
            if updated is not None and updated.followups_since is None:
                updated.followups_since = self.clock()
            if updated is not None and self.notices is not None:
                news = batch_news.news_signature(updated)
                if news is not None and news not in (updated.news_told, updated.news_due):
                    updated.news_due = news  # told by ``_tell``, or by the sweeper
            after = updated if updated is not None else job
            finished = after.terminal and not was_terminal
            return updated, Applied(after, updated is not None, finished, value)

        applied = self.store.update_job(job_id, change, fence)
        if applied.finished:
            _log_finished(applied.job)
        if applied.changed:
            self._settle_budget(applied.job)
            self._tell(applied.job)
        return applied

    def _tell(self, job: Job) -> None:
        """Tell the team the batch news this job's change made due (once per batch
        and event); the job's mark stays until it is told, for the sweeper."""
        due = job.news_due
        if due is None or self.notices is None:
            return
        try:
            told = self.notices.tell(job)
        except Exception:
            # News never fails a delivery: the mark stays and the sweeper tries again.
            log.warning("batch news not sent", extra={"job_id": job.job_id}, exc_info=True)
            return
        if told:
            self._change(job.job_id, lambda j: news_told(j, due))

    def _settle_budget(self, job: Job) -> None:
        """Correct each ended image's reservation (every version) once: to what it
        actually cost, or, for an image never made (failed, or cancelled unmade),
        all of it given back. The usage record remembers the image's key (so a
        retry corrects nothing twice), then the job does (so later changes skip it)."""
        if self.budget is None:
            return
        due = settlement.settlements(job)
        if not due:
            return
        for image in due:
            self.budget.settle(image.caller, image.day, image.key, image.images, image.cost)
        self._change(job.job_id, lambda j: settlement.mark_settled(j, due, self.clock()))
        given_back = [image for image in due if image.images < 0]
        if given_back:
            log.info(
                "budget given back for images never made",
                extra={
                    "job_id": job.job_id,
                    "event": "budget_refunded",
                    "images": len(given_back),
                    "cost_usd": money(-sum((image.cost for image in given_back), Decimal(0))),
                },
            )


class JobEntry:
    """Changes of one job within one delivery (``JobLedger.entry``)."""

    def __init__(self, ledger: JobLedger, job_id: str) -> None:
        self._ledger = ledger
        self.job_id = job_id
        # Reentrant: a row writer that runs at once (no thread) takes it again.
        self._lock = threading.RLock()
        self._stale = False  # a change since the last write began left the row stale
        self._writer: Future[bool] | None = None
        self._pool: Executor | None = None

    def apply(self, transition: Transition[R], fence: Fence | None = None) -> Applied[R]:
        applied = self._ledger._change(self.job_id, transition, fence)
        self.note(applied.job, write_now=True)
        return applied

    def note(self, job: Job, write_now: bool = False) -> None:
        """Take the job as seen now: a stale row is written (now, or on exit)."""
        rows = self._ledger.rows
        if rows is None or rows.is_current(job):
            return
        with self._lock:
            self._stale = True
            if write_now and (self._writer is None or self._writer.done()):
                if self._pool is None:
                    self._pool = self._ledger.row_writers()
                self._writer = self._pool.submit(self._write_in_background, rows)

    def _write_in_background(self, rows: Rows) -> bool:
        """Write while changes keep coming; True when the row was left current.

        It does not wait for another delivery that is writing this row (that
        writer looks again after its write); ``close`` makes sure in the end.
        """
        while True:
            with self._lock:
                if not self._stale:
                    return True
                self._stale = False
            try:
                if not rows.sync(self.job_id, wait=False):
                    return False
            except Exception as exc:
                log.warning(
                    "sheet row not updated yet: %s",
                    exc,
                    extra={"job_id": self.job_id, "event": "row_deferred"},
                )
                return False

    def close(self, quiet: bool = False) -> None:
        rows = self._ledger.rows
        writer, pool = self._writer, self._pool
        written = writer.result() if writer is not None else True
        if pool is not None:
            pool.shutdown(wait=True)
        with self._lock:
            needed = self._stale or not written
        if rows is None or not needed:
            return
        try:
            rows.sync(self.job_id)
        except Exception:
            if not quiet:
                raise
            log.warning("sheet row not updated", extra={"job_id": self.job_id}, exc_info=True)


class Entries:
    """Open entries by job (``JobLedger.entries``); opening one more than
    ``max_open`` first closes the least recently used (its row made current)."""

    def __init__(self, ledger: JobLedger, max_open: int) -> None:
        self._ledger = ledger
        self._max_open = max(1, max_open)
        self._open: OrderedDict[str, JobEntry] = OrderedDict()

    def apply(self, job_id: str, transition: Transition[R]) -> Applied[R]:
        entry = self._open.get(job_id)
        if entry is None:
            while len(self._open) >= self._max_open:
                _, oldest = self._open.popitem(last=False)
                oldest.close()
            entry = self._open[job_id] = JobEntry(self._ledger, job_id)
        else:
            self._open.move_to_end(job_id)
        return entry.apply(transition)

    def close(self, quiet: bool = False) -> None:
        """Close every entry; the first row error is raised after all are closed."""
        first: Exception | None = None
        while self._open:
            _, entry = self._open.popitem(last=False)
            try:
                entry.close(quiet)
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first


def _log_finished(job: Job) -> None:
    """The one ``job_finished`` entry per job that the log-based metrics count
    (``jobs_processed``, ``job_duration_seconds`` in monitoring.tf)."""
    finished = job.finished_at or job.updated_at
    log.info(
        "job finished",
        extra={
            "job_id": job.job_id,
            "batch_id": job.batch_id,
            "scene_id": job.scene_id,
            "event": "job_finished",
            "state": job.state.value,
            "duration_s": round(max((finished - job.created_at).total_seconds(), 0.0), 3),
            "cost_usd": money(job.cost()),
            "error": job.error,
        },
    )
