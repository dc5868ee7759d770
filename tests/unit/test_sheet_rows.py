"""Rows through the fleet's one sheet writer (issue 23, item 2): a delivery queues
its job's spreadsheet and never waits for the Sheets quota; the writer writes every
stale row of a spreadsheet in one write; a row is never lost (the job keeps its
follow-up mark until its row is written)."""

from __future__ import annotations

import pytest

from shared.adapters.sheet_coalescer import SheetCoalescer
from shared.adapters.throttle import WriteLimiter
from shared.contracts.links import LinkSigner
from shared.contracts.sheet_row import row_digest
from shared.domain import lifecycle
from shared.domain.errors import TransientError
from shared.services.ledger import JobLedger
from shared.services.sheet_rows import QueuedRows, SheetRows
from shared.services.sheet_sync import SheetSync
from tests.fakes import T0, FakeJobStore, FakeRowsQueue, FakeSheetWriter, make_job
from tests.unit.test_sheet_coalescer import FakeRowsWriter

LINKS = LinkSigner("k", "https://api.example.test")


def fail(job_id: str) -> object:
    return lambda j: lifecycle.fail_job(j, f"{job_id} broke", T0)


def test_a_delivery_queues_its_spreadsheet_and_writes_no_row(store: FakeJobStore) -> None:
    queue, sheet = FakeRowsQueue(), FakeSheetWriter()
    store.add(make_job(job_id="job_1", spreadsheet_id="sheet-a"))
    ledger = JobLedger(store, QueuedRows(store, LINKS, queue))
    ledger.apply("job_1", fail("job_1"))  # type: ignore[arg-type]
    assert queue.queued and set(queue.queued) == {"sheet-a"}
    assert sheet.attempts == []
    # The mark stays until the writer has written the row.
    assert store.get_job("job_1").followups_since is not None  # type: ignore[union-attr]


def test_a_job_whose_row_is_current_and_followed_up_queues_nothing(store: FakeJobStore) -> None:
    queue = FakeRowsQueue()
    job = make_job(job_id="job_1")
    job.sheet_digest = row_digest(job, LINKS)
    store.add(job)
    rows = QueuedRows(store, LINKS, queue)
    assert rows.sync("job_1") and rows.sync("job_gone")
    assert queue.queued == []


def test_a_spreadsheet_that_cannot_be_queued_fails_the_delivery_and_keeps_the_mark(
    store: FakeJobStore,
) -> None:
    queue = FakeRowsQueue()
    queue.fail = TransientError("pubsub down")
    store.add(make_job(job_id="job_1"))
    ledger = JobLedger(store, QueuedRows(store, LINKS, queue))
    with pytest.raises(TransientError, match="pubsub down"):
        ledger.apply("job_1", fail("job_1"))  # type: ignore[arg-type]
    assert store.get_job("job_1").followups_since is not None  # type: ignore[union-attr]


def test_the_writer_writes_a_spreadsheets_stale_rows_in_one_write(store: FakeJobStore) -> None:
    queue, rows_writer = FakeRowsQueue(), FakeRowsWriter()
    for n in range(1, 13):
        store.add(make_job(job_id=f"job_{n}", scene_id=f"sc-{n:03d}", spreadsheet_id="sheet-a"))
    store.add(make_job(job_id="job_b", scene_id="sc-b", spreadsheet_id="sheet-b"))
    deliveries = JobLedger(store, QueuedRows(store, LINKS, queue))
    for job_id in [*(f"job_{n}" for n in range(1, 13)), "job_b"]:
        deliveries.apply(job_id, fail(job_id))  # type: ignore[arg-type]
    coalescer = SheetCoalescer(rows_writer, WriteLimiter(60), window_s=0.2, timeout_s=30)
    writer = JobLedger(store, SheetSync(store, coalescer, LINKS))
    assert SheetRows(store, writer, queue).flush("sheet-a") == 12
    # One Sheets write for the twelve rows of sheet-a; sheet-b's row waits for its turn.
    assert len(rows_writer.calls) == 1
    assert sorted(u.scene_id for u in rows_writer.calls[0]) == [f"sc-{n:03d}" for n in range(1, 13)]
    for n in range(1, 13):
        job = store.get_job(f"job_{n}")
        assert job is not None and job.followups_since is None
        assert job.sheet_digest == row_digest(job, LINKS)
    assert store.get_job("job_b").followups_since is not None  # type: ignore[union-attr]
    # A second message for the same spreadsheet finds nothing to do.
    assert SheetRows(store, writer, queue).flush("sheet-a") == 0
    assert len(rows_writer.calls) == 1


def test_more_rows_than_one_flush_are_queued_again(store: FakeJobStore) -> None:
    queue, sheet = FakeRowsQueue(), FakeSheetWriter()
    for n in range(1, 6):
        store.add(make_job(job_id=f"job_{n}", scene_id=f"sc-{n}", spreadsheet_id="sheet-a"))
        store.mutate(f"job_{n}", lambda j: setattr(j, "followups_since", T0))
    writer = JobLedger(store, SheetSync(store, sheet, LINKS))
    rows = SheetRows(store, writer, queue, per_flush=3)
    assert rows.flush("sheet-a") == 3
    assert queue.queued == ["sheet-a"]  # the other two, next
    assert rows.flush("sheet-a") == 2
    assert queue.queued == ["sheet-a"]
    assert sorted(w.scene_id for w in sheet.writes) == [f"sc-{n}" for n in range(1, 6)]


def test_a_row_the_writer_cannot_write_now_keeps_its_mark_and_the_message_comes_again(
    store: FakeJobStore,
) -> None:
    queue, sheet = FakeRowsQueue(), FakeSheetWriter()
    store.add(make_job(job_id="job_1", spreadsheet_id="sheet-a"))
    store.mutate("job_1", lambda j: setattr(j, "followups_since", T0))
    sheet.errors.append(TransientError("429 quota"))
    rows = SheetRows(store, JobLedger(store, SheetSync(store, sheet, LINKS)), queue)
    with pytest.raises(TransientError, match="1 row"):
        rows.flush("sheet-a")
    assert store.get_job("job_1").followups_since is not None  # type: ignore[union-attr]
    assert rows.flush("sheet-a") == 1  # the redelivery
    assert store.get_job("job_1").followups_since is None  # type: ignore[union-attr]
