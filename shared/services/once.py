"""Requests that create something (a batch, a re-roll): once per idempotency key, and
finished by whoever comes next after any failure.

``hold`` finds or makes the key's record (``shared/domain/request_records.py``).
The record names what the key stands for from the start (the batch's id), so a
retry after a crash, or the sweeper after a request nobody retried, goes on with
the same batch rather than making another; a request keeps what it set out to do
(``intent``) and its prepared answer on the record before each step that commits
something, and every step is idempotent.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel

from shared.domain.errors import TransientError
from shared.domain.ids import new_id
from shared.domain.request_records import RequestRecord
from shared.services.ports import IdempotencyStore

log = logging.getLogger(__name__)

Outcome = TypeVar("Outcome")

# How long one request holds its record: longer than the HTTP function's timeout,
# so only a request that died (or gave up) is ever taken over.
REQUEST_LEASE_S = 180.0


@dataclass(frozen=True)
class Replay:
    """The key's first request was answered: this is that answer (empty when the
    sweeper finished a request that died before it prepared one), and what the key
    names."""

    body: Mapping[str, object]
    names: str


@dataclass(frozen=True)
class InProgress:
    """The same request is being handled by another request right now."""


@dataclass
class Held:
    """A record this request holds: what the key names, what earlier runs recorded."""

    store: IdempotencyStore
    record: RequestRecord
    holder: str

    @property
    def key(self) -> str:
        return self.record.key

    @property
    def names(self) -> str:
        return self.record.names

    @property
    def intent(self) -> dict[str, Any]:
        return self.record.intent

    def note(
        self, intent: dict[str, Any] | None = None, body: dict[str, Any] | None = None
    ) -> None:
        """Keep the intent (or the prepared answer) before the step that needs it;
        TransientError when another request took the record over meanwhile."""
        if not self.store.note(self.key, self.holder, intent, body):
            raise TransientError("another request took this one over; it finishes it")
        if intent is not None:
            self.record.intent = {**self.record.intent, **intent}
        if body is not None:
            self.record.body = body

    def finish(self, body: dict[str, Any]) -> None:
        self.store.finish(self.key, self.holder, body)

    def let_go(self) -> None:
        """After a failure: keep what was done, and let a retry resume it at once."""
        with contextlib.suppress(Exception):  # the lease runs out by itself
            self.store.let_go(self.key, self.holder)

    def abandon(self) -> None:
        """A refusal that committed nothing: forget the record (a retry starts afresh)."""
        self.store.abandon(self.key, self.holder)


def hold(
    store: IdempotencyStore, key: str, names: str, now: datetime, ttl_s: float
) -> Held | Replay | InProgress:
    """The key's record, held by this request; or the first answer to replay, or word
    that another request holds it right now."""
    holder = new_id("req")
    record, mine = store.begin(
        key,
        names,
        holder,
        now,
        now + timedelta(seconds=ttl_s),
        timedelta(seconds=REQUEST_LEASE_S),
    )
    if record.answered:
        return Replay(record.body, record.names)
    if not mine:
        return InProgress()
    if record.intent:
        log.info("request resumed", extra={"event": "request_resumed", "batch_id": record.names})
    return Held(store, record, holder)


def run(
    held: Held, work: Callable[[Held], Outcome], answer: Callable[[Outcome], BaseModel | None]
) -> Outcome:
    """Do ``work`` under the held record. An outcome with an answer finishes the record
    (replayed from then on); one without (a refusal that committed nothing) forgets
    it; a failure lets it go, keeping what was done for a retry to resume."""
    try:
        outcome = work(held)
    except BaseException:
        held.let_go()
        raise
    done = answer(outcome)
    if done is not None:
        held.finish(kept_answer(done))
    else:
        held.abandon()
    return outcome


def scoped_key(caller: str, key: str) -> str:
    """Keys are per caller, so one caller can never replay another's answer."""
    return hashlib.sha256(f"{caller}\0{key}".encode()).hexdigest()


def kept_answer(answer: BaseModel) -> dict[str, Any]:
    """An answer as an idempotency record keeps it, to replay it unchanged."""
    return answer.model_dump(mode="json", by_alias=True, exclude_none=True)
