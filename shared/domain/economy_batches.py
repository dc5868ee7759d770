"""The economy lane's records, as pure functions: which variants go into which
Gemini batch, and the life of our record of each batch (``EconomyBatch``).

A record is written before its variants are claimed and before Gemini sees a
request, and it carries a lease: one submitter or collector works on it at a
time, and one that dies loses it when the lease runs out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, TypeVar

from pydantic import BaseModel

from shared.domain.job import GeminiBatchRef, Job, VariantState
from shared.domain.lifecycle import (
    CANCELLED_IN_BATCH,
    count_failure,
    derive_state,
    give_back,
    restate,
)

EconomyBatchState = Literal[
    "claiming",  # variants being claimed; not yet sent to Gemini
    "submitted",  # created at Gemini; its name is known
    "pending",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "expired",
    "collected",  # results stored (or unfinished variants sent on): nothing left to do
]
# Anything not collected yet has work left: a batch Gemini ended unmade still has its
# variants to send on (a tick that died doing it is resumed by the next).
OPEN_ECONOMY_STATES = (
    "claiming",
    "submitted",
    "pending",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "expired",
)


class EconomyBatch(BaseModel):
    """Our record of one Gemini batch: what it holds, where it is, who works on it."""

    record_id: str
    model: str
    aspect_ratio: str | None = None
    image_size: str | None = None
    items: list[str]  # "job_id/n", one request line each
    state: EconomyBatchState = "claiming"
    gemini_name: str | None = None
    inline: bool = False
    error: str | None = None
    created_at: datetime
    updated_at: datetime
    # One submitter or collector at a time (a lease that a dead instance loses).
    lease_holder: str | None = None
    lease_expires: datetime | None = None

    @property
    def open(self) -> bool:
        return self.state in OPEN_ECONOMY_STATES


R = TypeVar("R")
Step = tuple[EconomyBatch | None, R]
JobStep = tuple[Job | None, R]

# The states Gemini reports (types.JobState names without the prefix) and ours.
GEMINI_STATES: dict[str, EconomyBatchState] = {
    "JOB_STATE_QUEUED": "pending",
    "JOB_STATE_PENDING": "pending",
    "JOB_STATE_RUNNING": "running",
    "JOB_STATE_UPDATING": "running",
    "JOB_STATE_PAUSED": "running",
    "JOB_STATE_CANCELLING": "running",
    "JOB_STATE_SUCCEEDED": "succeeded",
    "JOB_STATE_PARTIALLY_SUCCEEDED": "succeeded",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_EXPIRED": "expired",
}
ENDED_UNMADE: frozenset[EconomyBatchState] = frozenset({"failed", "cancelled", "expired"})


@dataclass(frozen=True)
class Shape:
    """What one Gemini batch's requests share."""

    model: str
    aspect_ratio: str | None
    image_size: str | None


@dataclass
class Group:
    shape: Shape
    items: list[tuple[Job, int]] = field(default_factory=list)


def groups(jobs: Iterable[Job], max_requests: int) -> list[Group]:
    """The pending variants of economy jobs, grouped by model and image settings,
    at most ``max_requests`` a group, oldest jobs first."""
    open_groups: dict[Shape, Group] = {}
    done: list[Group] = []
    for job in sorted(jobs, key=lambda j: (j.created_at, j.job_id)):
        if job.lane != "economy" or job.terminal:
            continue
        shape = Shape(job.model, job.aspect_ratio, job.image_size)
        for key in sorted(job.variants, key=int):
            variant = job.variants[key]
            # A variant goes into one Gemini batch at most: one that came back
            # unmade (an expired batch) is the live lane's now.
            if variant.state != VariantState.PENDING or variant.gemini_batch is not None:
                continue
            group = open_groups.setdefault(shape, Group(shape))
            group.items.append((job, int(key)))
            if len(group.items) >= max_requests:
                done.append(open_groups.pop(shape))
    return done + list(open_groups.values())


def item_key(job_id: str, n: int) -> str:
    """A request line's key: which variant of which job it makes."""
    return f"{job_id}/{n}"


def parse_key(key: str) -> tuple[str, int] | None:
    job_id, _, n = key.rpartition("/")
    return (job_id, int(n)) if job_id and n.isdigit() else None


def take_lease(batch: EconomyBatch, holder: str, now: datetime, lease: timedelta) -> Step[bool]:
    """The record is ours to work on until the lease runs out, unless another's is live."""
    if (
        batch.lease_holder not in (None, holder)
        and batch.lease_expires is not None
        and batch.lease_expires > now
    ):
        return None, False
    batch.lease_holder = holder
    batch.lease_expires = now + lease
    batch.updated_at = now
    return batch, True


def release_lease(batch: EconomyBatch, holder: str, now: datetime) -> Step[None]:
    if batch.lease_holder != holder:
        return None, None
    batch.lease_holder = None
    batch.lease_expires = None
    batch.updated_at = now
    return batch, None


def renew_lease(batch: EconomyBatch, holder: str, now: datetime, lease: timedelta) -> Step[bool]:
    """Move our lease's end on while we work; False once it is someone else's."""
    if batch.lease_holder != holder:
        return None, False
    batch.lease_expires = now + lease
    return batch, True


def submitted(
    batch: EconomyBatch, name: str, inline: bool, now: datetime, holder: str
) -> Step[bool]:
    """Gemini created the batch: its name, and how its requests were sent. Only the
    lease holder records it, and only one Gemini batch per record: False for a
    holder that lost the record (its Gemini batch is an orphan, to be cancelled)."""
    if batch.gemini_name == name:
        return None, True
    if batch.lease_holder != holder or batch.gemini_name is not None:
        return None, False
    batch.gemini_name = name
    batch.inline = inline
    batch.state = "submitted"
    batch.updated_at = now
    return batch, True


def observed(
    batch: EconomyBatch, state: EconomyBatchState, error: str | None, now: datetime
) -> Step[None]:
    """What Gemini says of the batch now."""
    if batch.state == "collected" or (batch.state == state and batch.error == error):
        return None, None
    batch.state = state
    batch.error = error
    batch.updated_at = now
    return batch, None


def collected(batch: EconomyBatch, now: datetime) -> Step[None]:
    """Every result stored, or every unmade variant sent on: nothing left to do."""
    if batch.state == "collected":
        return None, None
    batch.state = "collected"
    batch.updated_at = now
    return batch, None


# ------------------------------------------------------------------ the jobs' side


def batch_claim(job: Job, n: int, record: str, now: datetime) -> JobStep[bool]:
    """Take pending variant ``n`` into our economy batch ``record`` (before the
    Gemini batch exists, so no variant is ever submitted twice)."""
    variant = job.variant(n)
    if variant.state != VariantState.PENDING or job.terminal or job.cancelled_at is not None:
        return None, False
    variant.state = VariantState.BATCHED
    variant.gemini_batch = record
    variant.attempts += 1
    if not any(ref.record == record for ref in job.gemini_batches):
        job.gemini_batches.append(GeminiBatchRef(record=record))
    if job.started_at is None:
        job.started_at = now
    job.state = derive_state(job)
    job.updated_at = now
    return job, True


def batch_update(
    job: Job, record: str, now: datetime, name: str | None = None, state: str | None = None
) -> JobStep[None]:
    """What Gemini says of the batch (its name, its state), for /status and the row."""
    ref = next((r for r in job.gemini_batches if r.record == record), None)
    if ref is None or (
        (name is None or ref.name == name) and (state is None or ref.state == state)
    ):
        return None, None
    if name is not None:
        ref.name = name
    if state is not None:
        ref.state = state  # type: ignore[assignment]
    job.updated_at = now
    return job, None


def batch_returned(
    job: Job, n: int, record: str, now: datetime, reason: str | None = None
) -> JobStep[None]:
    """Variant ``n`` left batch ``record`` unmade: back to pending for the live lane,
    or, with a ``reason``, failed; once a cancel reached it, cancelled (it was never
    made, so its reserved budget goes back)."""
    variant = job.variant(n)
    if variant.state != VariantState.BATCHED or variant.gemini_batch != record:
        return None, None
    if variant.cancel_requested:
        variant.state = VariantState.CANCELLED
        variant.error = CANCELLED_IN_BATCH + (f" ({reason})" if reason else "")
        return restate(job, now), None
    if reason is not None:
        variant.state = VariantState.FAILED
        variant.error = reason
        return restate(job, now), None
    variant.state = VariantState.PENDING
    job.updated_at = now
    return job, None


def batch_dropped(
    job: Job,
    n: int,
    record: str,
    now: datetime,
    error: str | None = None,
    failure_budget: int = 1,
) -> JobStep[bool]:
    """Variant ``n`` left batch ``record`` before Gemini saw it, back to pending for
    a later batch: its references are not ready yet, or (with ``error``) could not
    be read, a real failure that is counted. The value says whether it ended."""
    variant = job.variant(n)
    if variant.state != VariantState.BATCHED or variant.gemini_batch != record:
        return None, False
    variant.gemini_batch = None
    ended = count_failure(variant, error, failure_budget) if error else give_back(variant)
    if not any(v.gemini_batch == record for v in job.variants.values()):
        job.gemini_batches = [ref for ref in job.gemini_batches if ref.record != record]
    if ended:
        return restate(job, now), True
    job.updated_at = now
    return job, False
