"""JobStore on Firestore: a ``batches`` and a ``jobs`` collection."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore

from shared.errors import NotFound, TransientError
from shared.models import Batch, Job

R = TypeVar("R")

# Firestore commits at most 500 writes at once.
_WRITES_PER_COMMIT = 450
_CAS_ATTEMPTS = 30


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
        """Compare-and-set on the document's update time.

        Optimistic instead of a transaction: transactions on one document take
        read locks that deadlock under concurrent writers (a lock timeout of
        seconds each time); a failed precondition costs one more read.
        """
        ref = self._jobs.document(job_id)
        for attempt in range(_CAS_ATTEMPTS):
            snap = ref.get()
            if not snap.exists:
                raise NotFound(f"job {job_id} does not exist")
            updated, result = change(Job.from_doc(snap.to_dict() or {}))
            if updated is None:
                return result
            try:
                ref.update(
                    updated.to_doc(),
                    option=self._db.write_option(last_update_time=snap.update_time),
                )
            except gexc.FailedPrecondition:
                time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
                continue
            return result
        raise TransientError(f"job {job_id} kept changing; gave up after {_CAS_ATTEMPTS} tries")
