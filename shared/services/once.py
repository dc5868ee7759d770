"""Exactly once per idempotency key: the first request's answer is kept and replayed."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from pydantic import BaseModel

from shared.services.ports import IdempotencyStore

R = TypeVar("R")

# A pending record older than this belongs to a request that died.
PENDING_STALE_S = 120
# The status an idempotency record keeps for an accepted request.
ACCEPTED = 202


@dataclass(frozen=True)
class Replay:
    """The key's first request was answered: this is that answer."""

    body: Mapping[str, object]


@dataclass(frozen=True)
class InProgress:
    """The same request is being handled by another request right now."""


def run_once(
    store: IdempotencyStore,
    key: str,
    now: datetime,
    ttl_s: float,
    work: Callable[[], R],
    keep: Callable[[R], Mapping[str, object] | None],
) -> R | Replay | InProgress:
    """Run ``work`` unless ``key`` ran already; ``keep`` gives the answer to replay
    (None: nothing to keep, say a refusal that may pass later)."""
    existing = store.begin(key, now, now + timedelta(seconds=ttl_s))
    if existing is not None:
        if existing.status:
            return Replay(existing.body)
        if (now - existing.created_at).total_seconds() < PENDING_STALE_S:
            return InProgress()
        store.abandon(key)
        return run_once(store, key, now, ttl_s, work, keep)
    try:
        result = work()
    except BaseException:
        store.abandon(key)
        raise
    body = keep(result)
    if body is None:
        store.abandon(key)
    else:
        store.finish(key, ACCEPTED, body)
    return result


def scoped_key(caller: str, key: str) -> str:
    """Keys are per caller, so one caller can never replay another's answer."""
    return hashlib.sha256(f"{caller}\0{key}".encode()).hexdigest()


def kept_answer(answer: BaseModel) -> dict[str, object]:
    """An answer as an idempotency record keeps it, to replay it unchanged."""
    return answer.model_dump(mode="json", by_alias=True, exclude_none=True)
