"""The sweeper's questions to Firestore, asked of the emulator: which live jobs no
delivery started, which started ones are overdue, which jobs' follow-ups
(settlement, row) never ran, and which exports are still queued.

The jobs are dated in 2001 so that the queries, bounded by date, see only them
(other tests share the emulator).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.adapters.firestore_store import FirestoreJobStore
from shared.domain import handover
from shared.domain.batch import Batch
from shared.domain.job import Job, JobState
from tests.integration.conftest import LiveStack

pytestmark = pytest.mark.integration

LONG_AGO = datetime(2001, 1, 1, tzinfo=UTC)


def _job(batch_id: str, minutes: int, **fields: object) -> Job:
    at = LONG_AGO + timedelta(minutes=minutes)
    return Job.model_validate(
        {
            "job_id": f"job_{uuid.uuid4().hex[:16]}",
            "batch_id": batch_id,
            "scene_id": f"sweep-{minutes}",
            "prompt": "p",
            "variant_count": 1,
            "caller": "local-dev",
            "spreadsheet_id": "sheet",
            "worksheet": "Scenes",
            "model": "gemini-nano-banana-2.1",
            "price_per_image": "0.0336",
            "created_at": at,
            "updated_at": at,
        }
        | fields
    )


def test_the_sweepers_queries_find_what_they_should_and_nothing_else(stack: LiveStack) -> None:
    store = FirestoreJobStore(stack.firestore)
    batch_id = f"bat_{uuid.uuid4().hex[:12]}"
    unstarted = _job(batch_id, 1)
    started = _job(batch_id, 2, state=JobState.GENERATING, started_at=LONG_AGO)
    economy = _job(batch_id, 3, lane="economy")
    young = _job(batch_id, 600)
    followed = _job(batch_id, 4, followups_since=None)
    unfollowed = _job(batch_id, 5, followups_since=LONG_AGO + timedelta(minutes=5))
    unfollowed_late = _job(batch_id, 6, followups_since=LONG_AGO + timedelta(minutes=500))
    jobs = [unstarted, started, economy, young, followed, unfollowed, unfollowed_late]
    batch = Batch(
        batch_id=batch_id,
        caller="local-dev",
        spreadsheet_id="sheet",
        worksheet="Scenes",
        model="gemini-nano-banana-2.1",
        job_ids=[j.job_id for j in jobs],
        image_count=len(jobs),
        estimated_cost_usd="0.2352",
        created_at=LONG_AGO,
    )
    store.create_batch(batch, jobs)
    before = LONG_AGO + timedelta(minutes=60)

    found = [j.job_id for j in store.unstarted_jobs(before, 50) if j.batch_id == batch_id]
    # Queued live jobs made before the bound, oldest first (the last three are queued too).
    assert found == [j.job_id for j in (unstarted, followed, unfollowed, unfollowed_late)]

    found = [j.job_id for j in store.overdue_jobs(before, 50) if j.batch_id == batch_id]
    assert found == [started.job_id]  # live, generating, made before the bound

    found = [j.job_id for j in store.unfollowed_jobs(before, 50) if j.batch_id == batch_id]
    assert found == [unfollowed.job_id]  # a null mark is not in the range
    later = LONG_AGO + timedelta(days=1)
    found = [j.job_id for j in store.unfollowed_jobs(later, 50) if j.batch_id == batch_id]
    assert found == [unfollowed.job_id, unfollowed_late.job_id]  # oldest first

    assert batch_id not in {b.batch_id for b in store.queued_exports(500)}
    store.update_batch(batch_id, lambda b: handover.request(b, "exp_1", "local-dev", LONG_AGO))
    queued = {b.batch_id: b for b in store.queued_exports(500)}
    export = queued[batch_id].export
    assert export is not None and export.export_id == "exp_1"
    store.update_batch(batch_id, lambda b: handover.start(b, "exp_1", LONG_AGO))
    assert batch_id not in {b.batch_id for b in store.queued_exports(500)}


def test_open_economy_jobs_come_oldest_first_however_many_there_are(stack: LiveStack) -> None:
    # Ordered before the limit: the oldest open economy jobs are never starved by
    # newer ones (jobs of 2001 are older than any other test's).
    store = FirestoreJobStore(stack.firestore)
    batch_id = f"bat_{uuid.uuid4().hex[:12]}"
    minutes = [-50, -7, -31, -2, -44, -19]  # before the other test's jobs
    jobs = [_job(batch_id, m, lane="economy") for m in minutes]
    done = _job(batch_id, -100, lane="economy", state=JobState.COMPLETED)
    batch = Batch(
        batch_id=batch_id,
        caller="local-dev",
        spreadsheet_id="sheet",
        worksheet="Scenes",
        model="gemini-nano-banana-2.1",
        job_ids=[j.job_id for j in [*jobs, done]],
        image_count=len(jobs) + 1,
        estimated_cost_usd="0.2352",
        created_at=LONG_AGO,
    )
    store.create_batch(batch, [*jobs, done])
    oldest = sorted(jobs, key=lambda j: j.created_at)[:3]
    assert [j.job_id for j in store.economy_jobs(3)] == [j.job_id for j in oldest]
