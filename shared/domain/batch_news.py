"""What a team is told about a batch, and when: it ended, or it needs attention.

Events are worked out from the batch's jobs alone, so every delivery, the sweeper
and ``GET /batches/{id}`` agree on them; each is sent at most once per batch
(``shared/services/notices.py``; the sheet's email keeps its own record).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel

from shared.domain.job import Job, JobState, money

# ended: every job of the batch ended. failures: more than the allowed share of its
# jobs failed (wholly or partly) while others still run. paused_*: a job waits for
# a quota that lasts (until midnight Pacific) or for the project's spending cap.
EventKind = Literal["ended", "failures", "paused_daily_quota", "paused_spend_cap"]
EVENT_KINDS: tuple[EventKind, ...] = ("ended", "failures", "paused_daily_quota", "paused_spend_cap")
FAILED_STATES = frozenset({JobState.FAILED, JobState.PARTIAL})
# How long a sent event is remembered (a batch's news comes within days).
NOTICE_KEPT = timedelta(days=30)


@dataclass(frozen=True)
class BatchEvent:
    """One thing to tell the team, with the figures the message gives."""

    kind: EventKind
    batch_id: str
    jobs: int
    ended: int
    failed: int  # jobs that failed wholly or partly
    images_made: int
    images_failed: int
    cost_usd: str
    spreadsheet_id: str
    worksheet_id: int | None
    worksheet: str

    @property
    def key(self) -> str:
        """The event's identity: at most one message per batch and kind."""
        return f"{self.batch_id}:{self.kind}"

    def headline(self) -> str:
        if self.kind == "ended":
            if self.failed == 0:
                return f"Batch {self.batch_id} is done"
            return f"Batch {self.batch_id} ended with failures"
        if self.kind == "failures":
            return f"Batch {self.batch_id} needs attention: {self.failed} scenes failed so far"
        if self.kind == "paused_daily_quota":
            return (
                f"Batch {self.batch_id} is paused: Gemini's daily quota is used up "
                "(it resumes after midnight Pacific)"
            )
        return (
            f"Batch {self.batch_id} is paused: the project's spending cap is reached "
            "(raise it in AI Studio, or it resumes when the cap allows)"
        )

    def text(self, sheet_url: str) -> str:
        """The message: what happened, the counts, the cost, the sheet."""
        lines = [
            self.headline(),
            f"Scenes: {self.ended} of {self.jobs} ended, {self.failed} with failures",
            f"Images: {self.images_made} made, {self.images_failed} failed",
            f"Cost so far: ${self.cost_usd}",
            f"Sheet: {sheet_url}",
        ]
        return "\n".join(lines)


def batch_events(jobs: Sequence[Job], failure_share: float) -> list[BatchEvent]:
    """The events the batch's jobs show now (each is sent once, whenever first seen).

    ``failures`` counts only while jobs still run (the ``ended`` message carries
    the failures of a finished batch), and only above ``failure_share`` of all jobs.
    """
    if not jobs:
        return []
    ended = [job for job in jobs if job.terminal]
    failed = [job for job in ended if job.state in FAILED_STATES]
    kinds: list[EventKind] = []
    if len(ended) == len(jobs):
        kinds.append("ended")
    else:
        if failed and len(failed) > failure_share * len(jobs):
            kinds.append("failures")
        waits = {job.waiting.reason for job in jobs if job.waiting and not job.terminal}
        if "daily_quota" in waits:
            kinds.append("paused_daily_quota")
        if "spend_cap" in waits:
            kinds.append("paused_spend_cap")
    if not kinds:
        return []
    first = jobs[0]
    made = sum(1 for job in jobs for v in job.variants.values() for _, s in v.slots() if s.kept)
    lost = sum(1 for job in jobs for v in job.variants.values() if v.state.value == "failed")
    cost = money(sum((job.cost() for job in jobs), Decimal(0)))
    return [
        BatchEvent(
            kind=kind,
            batch_id=first.batch_id,
            jobs=len(jobs),
            ended=len(ended),
            failed=len(failed),
            images_made=made,
            images_failed=lost,
            cost_usd=cost,
            spreadsheet_id=first.spreadsheet_id,
            worksheet_id=first.worksheet_id,
            worksheet=first.worksheet,
        )
        for kind in kinds
    ]


class NoticeRecord(BaseModel):
    """``notices/{key}``: one batch event, while it is being sent and once it was."""

    key: str
    holder: str | None = None
    claim_expires: datetime | None = None
    attempts: int = 0
    sent_at: datetime | None = None
    error: str | None = None  # refused for good: never sent again
    expires_at: datetime  # the collection's TTL field


def take_notice(
    record: NoticeRecord | None, key: str, holder: str, now: datetime, lease: timedelta
) -> NoticeRecord | None:
    """The record as ``holder`` claims it, or None when it may not: the event was
    sent (or refused for good), or another holder's claim is live."""
    if record is not None and (record.sent_at is not None or record.error is not None):
        return None
    if (
        record is not None
        and record.holder not in (None, holder)
        and record.claim_expires is not None
        and record.claim_expires > now
    ):
        return None
    base = record or NoticeRecord(key=key, expires_at=now + NOTICE_KEPT)
    return base.model_copy(
        update={"holder": holder, "claim_expires": now + lease, "attempts": base.attempts + 1}
    )


def finish_notice(
    record: NoticeRecord | None, holder: str, now: datetime, error: str | None
) -> NoticeRecord | None:
    """The record marked sent (or refused) by its holder; None if it holds it no more
    (a holder that took over sends the same request id: Chat keeps one message)."""
    if record is None or record.holder != holder or record.sent_at or record.error:
        return None
    if error is None:
        return record.model_copy(update={"sent_at": now, "holder": None, "claim_expires": None})
    return record.model_copy(update={"error": error, "holder": None, "claim_expires": None})


def news_signature(job: Job) -> str | None:
    """What of the job can make news (None: nothing): its end, or a lasting wait."""
    if job.terminal:
        return f"ended:{job.state.value}"
    if job.waiting is not None and job.waiting.reason in ("daily_quota", "spend_cap"):
        return f"waiting:{job.waiting.reason}"
    return None
