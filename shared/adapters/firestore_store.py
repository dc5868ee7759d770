"""JobStore on Firestore: a ``batches`` and a ``jobs`` collection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from google.cloud import firestore

from shared.errors import NotFound
from shared.models import Batch, Job

R = TypeVar("R")

# Firestore commits at most 500 writes at once.
_WRITES_PER_COMMIT = 450


class FirestoreJobStore:
    def __init__(self, client: firestore.Client) -> None:
        self._db = client
        self._jobs = client.collection("jobs")
        self._batches = client.collection("batches")

    def create_batch(self, batch: Batch, jobs: Sequence[Job]) -> None:
        writes: list[tuple[Any, dict[str, Any]]] = [
            (self._batches.document(batch.batch_id), batch.to_doc())
        ]
        writes += [(self._jobs.document(job.job_id), job.to_doc()) for job in jobs]
        # The batch document goes last, so a batch that exists has all its jobs.
        writes.append(writes.pop(0))
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

    def update_job(self, job_id: str, change: Callable[[Job], tuple[Job | None, R]]) -> R:
        ref = self._jobs.document(job_id)

        @firestore.transactional  # type: ignore[untyped-decorator,unused-ignore]
        def run(transaction: firestore.Transaction) -> R:
            snap = ref.get(transaction=transaction)
            if not snap.exists:
                raise NotFound(f"job {job_id} does not exist")
            updated, result = change(Job.from_doc(snap.to_dict() or {}))
            if updated is not None:
                transaction.set(ref, updated.to_doc())
            return result

        result: R = run(self._db.transaction())
        return result
