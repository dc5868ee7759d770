"""Firestore adapters: jobs and batches, daily budgets, idempotency records."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from pydantic import BaseModel

from shared.domain import quota
from shared.domain.batch import Batch
from shared.domain.economy_batches import OPEN_ECONOMY_STATES, EconomyBatch
from shared.domain.errors import NotFound, TransientError
from shared.domain.job import Job, JobState
from shared.domain.quota import GateState, Limit, Slot
from shared.services.ports import StoredAnswer, Usage

R = TypeVar("R")

# Firestore commits at most 500 writes at once.
_WRITES_PER_COMMIT = 450
_CAS_ATTEMPTS = 30
_GET_ALL_CHUNK = 300
USAGE_KEPT = timedelta(days=90)


def compare_and_set(
    ref: Any, change: Callable[[dict[str, Any] | None], tuple[dict[str, Any] | None, R]]
) -> R:
    """Read, change, write only if nobody wrote in between (update-time precondition).

    Optimistic instead of a transaction: transactions on one document take read
    locks that deadlock under concurrent writers (the emulator then waits for a
    lock timeout of seconds); a failed precondition costs one more read.
    """
    client = ref._client
    for attempt in range(_CAS_ATTEMPTS):
        snap = ref.get()
        current = snap.to_dict() if snap.exists else None
        updated, result = change(current)
        if updated is None:
            return result
        try:
            if snap.exists:
                ref.update(updated, option=client.write_option(last_update_time=snap.update_time))
            else:
                ref.create(updated)
        except (gexc.FailedPrecondition, gexc.Conflict):
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
            continue
        return result
    raise TransientError(f"{ref.path} kept changing; gave up after {_CAS_ATTEMPTS} tries")


M = TypeVar("M", bound=BaseModel)


def update_record(
    ref: Any, model: type[M], what: str, change: Callable[[M], tuple[M | None, R]]
) -> R:
    """``change`` applied to the stored record under compare-and-set; ``NotFound``
    (naming ``what``) when there is none."""

    def apply(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, R]:
        if doc is None:
            raise NotFound(f"{what} does not exist")
        updated, result = change(model.model_validate(doc))
        return (updated.model_dump(mode="python") if updated is not None else None), result

    return compare_and_set(ref, apply)


class FirestoreJobStore:
    def __init__(self, client: firestore.Client) -> None:
        self._db = client
        self._jobs = client.collection("jobs")
        self._batches = client.collection("batches")

    def create_batch(self, batch: Batch, jobs: Sequence[Job]) -> None:
        writes: list[tuple[Any, dict[str, Any]]] = [
            (self._jobs.document(job.job_id), job.to_doc()) for job in jobs
        ]
        # The batch document goes last, so a batch that exists has all its jobs.
        writes.append((self._batches.document(batch.batch_id), batch.to_doc()))
        for start in range(0, len(writes), _WRITES_PER_COMMIT):
            commit = self._db.batch()
            for ref, doc in writes[start : start + _WRITES_PER_COMMIT]:
                commit.create(ref, doc)
            commit.commit()

    def get_batch(self, batch_id: str) -> Batch | None:
        snap = self._batches.document(batch_id).get()
        return Batch.model_validate(snap.to_dict()) if snap.exists else None

    def get_job(self, job_id: str) -> Job | None:
        snap = self._jobs.document(job_id).get()
        return Job.from_doc(snap.to_dict() or {}) if snap.exists else None

    def get_jobs(self, job_ids: Sequence[str]) -> list[Job]:
        found: dict[str, Job] = {}
        for start in range(0, len(job_ids), _GET_ALL_CHUNK):
            refs = [self._jobs.document(j) for j in job_ids[start : start + _GET_ALL_CHUNK]]
            for snap in self._db.get_all(refs):
                if snap.exists:
                    found[snap.id] = Job.from_doc(snap.to_dict() or {})
        return [found[j] for j in job_ids if j in found]

    def active_jobs(self, spreadsheet_id: str, worksheet: str) -> list[Job]:
        query = (
            self._jobs.where(filter=FieldFilter("spreadsheet_id", "==", spreadsheet_id))
            .where(filter=FieldFilter("worksheet", "==", worksheet))
            .where(
                filter=FieldFilter(
                    "state", "in", [JobState.QUEUED.value, JobState.GENERATING.value]
                )
            )
        )
        return [Job.from_doc(snap.to_dict() or {}) for snap in query.stream()]

    def economy_jobs(self, limit: int) -> list[Job]:
        # Equality filters only: served by single-field indexes, no composite index.
        query = (
            self._jobs.where(filter=FieldFilter("lane", "==", "economy"))
            .where(
                filter=FieldFilter(
                    "state", "in", [JobState.QUEUED.value, JobState.GENERATING.value]
                )
            )
            .limit(limit)
        )
        jobs = [Job.from_doc(snap.to_dict() or {}) for snap in query.stream()]
        return sorted(jobs, key=lambda job: (job.created_at, job.job_id))

    def scene_jobs(self, spreadsheet_id: str, scene_id: str) -> list[Job]:
        query = self._jobs.where(filter=FieldFilter("spreadsheet_id", "==", spreadsheet_id)).where(
            filter=FieldFilter("scene_id", "==", scene_id)
        )
        return [Job.from_doc(snap.to_dict() or {}) for snap in query.stream()]

    def update_batch(self, batch_id: str, change: Callable[[Batch], tuple[Batch | None, R]]) -> R:
        return update_record(self._batches.document(batch_id), Batch, f"batch {batch_id}", change)

    def update_job(self, job_id: str, change: Callable[[Job], tuple[Job | None, R]]) -> R:
        return update_record(self._jobs.document(job_id), Job, f"job {job_id}", change)


class FirestoreEconomyBatches:
    """``economy_batches/{record_id}``: our records of Gemini batches."""

    def __init__(self, client: firestore.Client) -> None:
        self._records = client.collection("economy_batches")

    def create(self, batch: EconomyBatch) -> None:
        self._records.document(batch.record_id).create(batch.model_dump(mode="python"))

    def get(self, record_id: str) -> EconomyBatch | None:
        snap = self._records.document(record_id).get()
        return EconomyBatch.model_validate(snap.to_dict()) if snap.exists else None

    def open_batches(self, limit: int) -> list[EconomyBatch]:
        query = self._records.where(
            filter=FieldFilter("state", "in", list(OPEN_ECONOMY_STATES))
        ).limit(limit)
        records = [EconomyBatch.model_validate(snap.to_dict()) for snap in query.stream()]
        return sorted(records, key=lambda record: (record.created_at, record.record_id))

    def update(
        self, record_id: str, change: Callable[[EconomyBatch], tuple[EconomyBatch | None, R]]
    ) -> R:
        where = f"economy batch {record_id}"
        return update_record(self._records.document(record_id), EconomyBatch, where, change)


class FirestoreBudgetLedger:
    """``usage/{caller-hash}_{day}``: images and cost committed that UTC day."""

    def __init__(self, client: firestore.Client) -> None:
        self._usage = client.collection("usage")

    def _ref(self, caller: str, day: str) -> Any:
        digest = hashlib.sha256(caller.encode()).hexdigest()[:24]
        return self._usage.document(f"{digest}_{day}")

    @staticmethod
    def _read(doc: Mapping[str, Any] | None) -> Usage:
        if not doc:
            return Usage()
        return Usage(images=int(doc.get("images", 0)), cost=Decimal(str(doc.get("cost_usd", "0"))))

    def usage(self, caller: str, day: str) -> Usage:
        snap = self._ref(caller, day).get()
        return self._read(snap.to_dict() if snap.exists else None)

    def reserve(
        self, caller: str, day: str, images: int, cost: Decimal, image_cap: int, cost_cap: Decimal
    ) -> tuple[bool, Usage]:
        def apply(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, tuple[bool, Usage]]:
            used = self._read(doc)
            if used.images + images > image_cap or used.cost + cost > cost_cap:
                return None, (False, used)
            settled = dict((doc or {}).get("settled") or {})
            updated = _usage_doc(caller, day, used.images + images, used.cost + cost, settled)
            return updated, (True, used)

        return compare_and_set(self._ref(caller, day), apply)

    def refund(self, caller: str, day: str, images: int, cost: Decimal) -> None:
        self._adjust(caller, day, None, -images, -cost)

    def settle(self, caller: str, day: str, key: str, images: int, cost: Decimal) -> None:
        self._adjust(caller, day, key, images, cost)

    def _adjust(self, caller: str, day: str, key: str | None, images: int, cost: Decimal) -> None:
        """Add to the day's usage (never below zero); with ``key``, once per key."""

        def apply(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, None]:
            settled: dict[str, bool] = dict((doc or {}).get("settled") or {})
            if key is not None:
                if key in settled:
                    return None, None
                settled[key] = True
            used = self._read(doc)
            left = max(used.images + images, 0), max(used.cost + cost, Decimal(0))
            return _usage_doc(caller, day, *left, settled), None

        compare_and_set(self._ref(caller, day), apply)


def _usage_doc(
    caller: str, day: str, images: int, cost: Decimal, settled: dict[str, bool] | None = None
) -> dict[str, Any]:
    # Kept a while for the record, then removed by the collection's TTL policy.
    expires = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC) + USAGE_KEPT
    return {
        "caller": caller,
        "day": day,
        "images": images,
        "cost_usd": str(cost),
        "expires_at": expires,
        # Which images' estimates were settled (job_id/n, job_id/n/vk for later versions).
        "settled": settled or {},
    }


class FirestoreIdempotencyStore:
    """``idempotency/{key}``; ``expires_at`` is the collection's TTL field."""

    def __init__(self, client: firestore.Client) -> None:
        self._records = client.collection("idempotency")

    def begin(self, key: str, now: datetime, expires_at: datetime) -> StoredAnswer | None:
        def apply(
            doc: dict[str, Any] | None,
        ) -> tuple[dict[str, Any] | None, StoredAnswer | None]:
            # TTL deletion is lazy (up to a day late): an expired record counts as absent.
            if doc is not None and doc["expires_at"] > now:
                return None, StoredAnswer(
                    status=int(doc.get("status", 0)),
                    body=doc.get("body") or {},
                    created_at=doc["created_at"],
                )
            return {"status": 0, "body": {}, "created_at": now, "expires_at": expires_at}, None

        return compare_and_set(self._records.document(key), apply)

    def finish(self, key: str, status: int, body: Mapping[str, object]) -> None:
        self._records.document(key).update({"status": status, "body": dict(body)})

    def abandon(self, key: str) -> None:
        self._records.document(key).delete()


class FirestoreQuotaGate:
    """``quota/{model}``: the shared pace and gate of Gemini calls (``shared/domain/quota.py``).

    One small document per model; every call of the fleet reads it and, when
    calls are paced, writes it once (about images-per-minute writes a minute).
    """

    def __init__(self, client: firestore.Client, images_per_minute: float) -> None:
        self._gates = client.collection("quota")
        self._interval = timedelta(seconds=60 / images_per_minute if images_per_minute else 0)

    def reserve(self, model: str, now: datetime, max_wait_s: float) -> Slot:
        max_wait = timedelta(seconds=max(max_wait_s, 0.0))

        def apply(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, Slot]:
            updated, slot = quota.reserve(_gate(doc), now, self._interval, max_wait)
            return (_gate_doc(updated) if updated is not None else None), slot

        return compare_and_set(self._gates.document(model), apply)

    def close(self, model: str, until: datetime, limit: Limit) -> None:
        def apply(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, None]:
            updated, _ = quota.close(_gate(doc), until, limit)
            return (_gate_doc(updated) if updated is not None else None), None

        compare_and_set(self._gates.document(model), apply)


def _gate(doc: Mapping[str, Any] | None) -> GateState:
    if not doc:
        return GateState()
    limit = doc.get("closed_for")
    return GateState(
        next_slot=doc.get("next_slot"),
        closed_until=doc.get("closed_until"),
        closed_for=Limit(limit) if limit else None,
    )


def _gate_doc(state: GateState) -> dict[str, Any]:
    return {
        "next_slot": state.next_slot,
        "closed_until": state.closed_until,
        "closed_for": state.closed_for.value if state.closed_for else None,
    }
