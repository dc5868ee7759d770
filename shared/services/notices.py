"""Word to the team when a batch ends or needs attention: one Chat message per batch
and event, under redelivery, concurrent deliveries and crashes.

The job ledger calls ``tell`` after a change that can make news (a job ended, or
waits for a lasting quota; ``Job.news_due`` marks it in the same write). The
events are worked out from the batch's jobs (``shared/domain/batch_news.py``);
each is claimed in ``notices/{key}`` before it is posted and marked sent after.
A holder that dies in between leaves a claim that runs out: the next one (a
redelivery, or the sweeper's follow-up of the job still marked) posts again with
the same request id, and Chat keeps the first message.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.contracts.links import sheet_url
from shared.domain import batch_news
from shared.domain.batch_news import BatchEvent, EventKind
from shared.domain.errors import PermanentError, TransientError
from shared.domain.ids import new_id, utcnow
from shared.domain.job import Job, JobState
from shared.services.ports import JobStore, NoticeLog, TeamChannel

log = logging.getLogger(__name__)

# Longer than a post can take (its timeout and a retry): only a dead holder's
# claim is ever taken over.
NOTICE_LEASE_S = 60.0


@dataclass(frozen=True)
class Notices:
    store: JobStore
    log: NoticeLog
    channel: TeamChannel
    failure_share: float
    clock: Callable[[], datetime] = utcnow

    def tell(self, job: Job) -> bool:
        """Send what the batch's jobs show now that the team was not told; True when
        nothing of this job's news is left to send (False: try again later)."""
        kinds = [k for k in _candidates(job) if not self.log.sent(notice_key(job.batch_id, k))]
        if not kinds:
            return True
        if kinds == ["ended"] and self.store.open_jobs(job.batch_id) > 0:
            return True  # one count, not the whole batch, for every job that ends
        batch = self.store.get_batch(job.batch_id)
        if batch is None:
            return True
        due = [
            event
            for event in batch_news.batch_events(
                self.store.get_jobs(batch.job_ids), self.failure_share
            )
            if event.kind in kinds
        ]
        return all([self._send(event) for event in due])

    def _send(self, event: BatchEvent) -> bool:
        holder = new_id("ntc")
        key = notice_key(event.batch_id, event.kind)
        if not self.log.claim(key, holder, self.clock(), timedelta(seconds=NOTICE_LEASE_S)):
            # Sent already, or another delivery is sending it: if that one dies, its
            # claim runs out and the sweeper's follow-up of this job sends it.
            return self.log.sent(key)
        context = {"batch_id": event.batch_id, "event": "batch_news", "kind": event.kind}
        url = sheet_url(event.spreadsheet_id, event.worksheet_id)
        try:
            self.channel.post(event.text(url), request_id(key), thread_key=event.batch_id)
        except TransientError as exc:
            log.warning("batch news not sent yet: %s", exc, extra=context)
            return False
        except PermanentError as exc:
            log.error("batch news refused: %s", exc, extra=context)
            self.log.done(key, holder, self.clock(), error=str(exc))
            return True
        self.log.done(key, holder, self.clock())
        log.info("batch news sent", extra=context)
        return True


def _candidates(job: Job) -> list[EventKind]:
    """The events this job's state can make due (the batch decides which are)."""
    if job.terminal:
        failed = job.state in (JobState.FAILED, JobState.PARTIAL)
        return ["ended", "failures"] if failed else ["ended"]
    if job.waiting is not None and job.waiting.reason == "daily_quota":
        return ["paused_daily_quota"]
    if job.waiting is not None and job.waiting.reason == "spend_cap":
        return ["paused_spend_cap"]
    return []


def notice_key(batch_id: str, kind: EventKind) -> str:
    return f"{batch_id}:{kind}"


def request_id(key: str) -> str:
    """Chat's request id for the event: the same for every try of it."""
    return "news-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def news_told(job: Job, signature: str) -> tuple[Job | None, None]:
    """Clear the job's news mark once ``signature`` was told (a mark for newer news,
    set meanwhile, stays)."""
    if job.news_due != signature:
        return None, None
    job.news_told, job.news_due = signature, None
    return job, None
