"""Requests that create something, run once per idempotency key and resumed after any
failure, as pure transitions of their record.

A record names what its key stands for for its whole life (a batch id, or a
variant's next version), what the request set out to do (``intent``: enough to
finish it, or to give its reservation back), and the answer once it is prepared.
One request works on it at a time, under a lease; a retry finds the record and,
once that lease ran out (the first request died or gave up), takes it over and
goes on from where the first one stopped. Every step of such a request is
idempotent, so doing one again is harmless.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, Field

R = TypeVar("R")

# The status of an answered request (the record keeps its answer to replay it).
ANSWERED = 202


class RequestRecord(BaseModel):
    """``idempotency/{key}``: what one key's request is, and how far it got."""

    key: str
    names: str  # what the key stands for, fixed when the record is made (a batch id)
    status: int = 0  # 0 until the request answered; then the answer is kept
    body: dict[str, Any] = Field(default_factory=dict)  # the answer, once prepared
    intent: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    expires_at: datetime
    holder: str | None = None
    lease_expires: datetime | None = None

    @property
    def answered(self) -> bool:
        return self.status != 0


Step = tuple[RequestRecord | None, R]


def begin(
    record: RequestRecord | None,
    key: str,
    names: str,
    holder: str,
    now: datetime,
    expires_at: datetime,
    lease: timedelta,
) -> Step[tuple[RequestRecord, bool]]:
    """The key's record, made if there is none (or it expired), and whether ``holder``
    holds it now: a new record, or one whose holder's lease ran out (taken over)."""
    if record is None or record.expires_at <= now:
        made = RequestRecord(
            key=key,
            names=names,
            created_at=now,
            expires_at=expires_at,
            holder=holder,
            lease_expires=now + lease,
        )
        return made, (made, True)
    if record.answered:
        return None, (record, False)
    if record.holder not in (None, holder) and (
        record.lease_expires is not None and record.lease_expires > now
    ):
        return None, (record, False)
    record.holder = holder
    record.lease_expires = now + lease
    return record, (record, True)


def note(
    record: RequestRecord,
    holder: str,
    intent: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None,
) -> Step[bool]:
    """Record what the request set out to do, or the answer it prepared; only while
    ``holder`` holds the record (False: another took it over)."""
    if record.holder != holder or record.answered:
        return None, False
    if intent is not None:
        record.intent = {**record.intent, **intent}
    if body is not None:
        record.body = body
    return record, True


def finish(record: RequestRecord, holder: str, body: dict[str, Any]) -> Step[bool]:
    """The request answered: its answer is kept for replays (once; False when
    another request answered first or took the record over)."""
    if record.answered or record.holder != holder:
        return None, False
    record.status = ANSWERED
    record.body = body
    record.holder = None
    record.lease_expires = None
    return record, True


def let_go(record: RequestRecord, holder: str) -> Step[None]:
    """End our lease, keeping what was done: a retry (or the sweeper) resumes at once."""
    if record.holder != holder or record.answered:
        return None, None
    record.holder = None
    record.lease_expires = None
    return record, None
