"""The job ledger: one place that applies changes, ends jobs once and keeps rows current."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import pytest

from shared.adapters.image_check import image_mime
from shared.adapters.imaging import make_thumbnail
from shared.contracts.links import LinkSigner
from shared.contracts.messages import JobMessage, StorageObject
from shared.contracts.objects import recorded_spent
from shared.contracts.sheet_row import Text, row_digest
from shared.domain import cancellation, lifecycle
from shared.domain.errors import TransientError
from shared.domain.job import Job, JobState, VariantState
from shared.domain.lifecycle import Spent
from shared.services.generation import Generation
from shared.services.ledger import JobLedger
from shared.services.ports import Usage
from shared.services.sheet_sync import SheetSync
from shared.services.thumbnails import Thumbnails
from tests.fakes import (
    IMAGES_BUCKET,
    T0,
    FakeBudgetLedger,
    FakeClock,
    FakeImageGenerator,
    FakeJobStore,
    FakeObjectStore,
    FakeQuotaGate,
    FakeReferenceLoader,
    FakeSheetWriter,
    RowWrite,
    make_job,
    make_settings,
)

R = TypeVar("R")
MESSAGE = JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001")
SPENT = Spent("gemini-3.1-flash-image", "0.0670", {"total_tokens": 1290})


def finished_entries(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "job_finished"]


class CompareAndSetStore(FakeJobStore):
    """Runs each change twice, the first run losing to a concurrent writer,
    as the Firestore adapter's compare-and-set does under contention."""

    def update_job(
        self, job_id: str, change: Callable[[Job], tuple[Job | None, R]], fence: Any = None
    ) -> R:
        with self._lock:
            current = self._jobs[job_id].model_copy(deep=True)
        change(current)  # a run whose write failed its precondition
        return super().update_job(job_id, change, fence)


# --------------------------------------------------------------------------- apply


def test_apply_reports_changed_finished_and_the_transition_value(
    store: FakeJobStore, ledger: JobLedger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.services.ledger")
    store.add(make_job(variant_count=1))
    started = ledger.apply("job_1", lambda j: lifecycle.start(j, T0))
    assert (started.changed, started.finished, started.value) == (True, False, True)
    assert started.job.state == JobState.GENERATING

    again = ledger.apply("job_1", lambda j: lifecycle.start(j, T0))
    assert (again.changed, again.finished, again.value) == (False, False, False)
    assert again.job.state == JobState.GENERATING  # the job as stored

    failed = ledger.apply("job_1", lambda j: lifecycle.fail_job(j, "boom", T0))
    assert (failed.changed, failed.finished) == (True, True)
    assert failed.job.state == JobState.FAILED
    late = ledger.apply("job_1", lambda j: lifecycle.fail_job(j, "late", T0))
    assert (late.changed, late.finished) == (False, False)
    assert len(finished_entries(caplog)) == 1


def test_job_finished_carries_state_duration_in_seconds_and_cost(
    store: FakeJobStore, ledger: JobLedger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.services.ledger")
    store.add(make_job(variant_count=2))
    later = T0.replace(minute=T0.minute + 2)  # 120 s after creation
    ledger.apply("job_1", lambda j: lifecycle.uploaded(j, 1, "a.png", "image/png", T0, SPENT))
    ledger.apply("job_1", lambda j: lifecycle.variant_failed(j, 2, "blocked", later))
    ledger.apply("job_1", lambda j: lifecycle.thumbnail_done(j, 1, "a.png", "t.jpg", later))
    (entry,) = finished_entries(caplog)
    assert entry.__dict__["state"] == "partial"
    assert entry.__dict__["duration_s"] == 120.0
    assert entry.__dict__["cost_usd"] == "0.0670"
    assert entry.__dict__["error"] == "variant 2: blocked"


def test_finished_is_told_once_even_when_the_store_reruns_the_change(
    sheet_writer: FakeSheetWriter, links: LinkSigner, caplog: pytest.LogCaptureFixture
) -> None:
    from shared.services.sheet_sync import SheetSync

    caplog.set_level(logging.INFO, logger="shared.services.ledger")
    store = CompareAndSetStore()
    store.add(make_job(variant_count=1))
    ledger = JobLedger(store, SheetSync(store, sheet_writer, links))
    result = ledger.apply("job_1", lambda j: lifecycle.fail_job(j, "boom", T0))
    assert result.finished
    assert len(finished_entries(caplog)) == 1


def test_concurrent_changes_finish_a_job_exactly_once(
    store: FakeJobStore, ledger: JobLedger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.services.ledger")
    store.add(make_job(variant_count=4, started_at=T0, state=JobState.GENERATING))
    start = threading.Barrier(16)
    results: list[bool] = []

    def finish(n: int) -> None:
        start.wait(timeout=10)
        applied = ledger.apply(
            "job_1", lambda j: lifecycle.thumbnail_done(j, n, f"{n}.png", f"{n}.jpg", T0)
        )
        results.append(applied.finished)

    threads = [threading.Thread(target=finish, args=(n,)) for n in (1, 2, 3, 4) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results.count(True) == 1
    assert len(finished_entries(caplog)) == 1
    assert store.job("job_1").state == JobState.COMPLETED


def test_a_ledger_without_rows_writes_no_sheet(store: FakeJobStore) -> None:
    store.add(make_job())
    result = JobLedger(store).apply("job_1", lambda j: lifecycle.fail_job(j, "unqueued", T0))
    assert result.finished
    assert store.job("job_1").sheet_digest is None


# --------------------------------------------------------------------------- rows


def test_a_change_that_alters_the_row_writes_it_before_apply_returns(
    store: FakeJobStore, ledger: JobLedger, sheet_writer: FakeSheetWriter, links: LinkSigner
) -> None:
    store.add(make_job())
    ledger.apply("job_1", lambda j: lifecycle.start(j, T0))
    assert [w.cells["status_img"] for w in sheet_writer.writes] == [Text("generating (0/2)")]
    job = store.job("job_1")
    assert job.sheet_digest == row_digest(job, links)
    # A change the row does not show writes nothing.
    ledger.apply("job_1", lambda j: lifecycle.uploaded(j, 1, "a.png", "image/png", T0, SPENT))
    assert len(sheet_writer.attempts) == 1


def test_entry_writes_in_the_background_and_is_current_on_exit(
    store: FakeJobStore, ledger: JobLedger, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job())
    writing, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def slow(write: RowWrite) -> None:
        seen.append(str(write.cells["status_img"].value))
        writing.set()
        release.wait(timeout=10)

    sheet_writer.on_write = slow
    with ledger.entry("job_1") as entry:
        entry.apply(lambda j: lifecycle.start(j, T0))
        # The delivery goes on while its row is being written.
        assert writing.wait(timeout=10)
        entry.apply(lambda j: lifecycle.fail_job(j, "boom", T0))
        release.set()
    assert store.job("job_1").state == JobState.FAILED
    assert sheet_writer.row("sc-001")["status_img"].value.startswith("failed")
    assert seen[0] == "generating (0/2)"


def test_a_stale_row_of_a_job_read_by_a_delivery_is_written_on_exit(
    store: FakeJobStore, ledger: JobLedger, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job(state=JobState.COMPLETED))
    job = ledger.get("job_1")
    assert job is not None
    with ledger.entry(job):
        pass
    assert [w.cells["status_img"] for w in sheet_writer.writes] == [Text("completed")]
    with ledger.entry(store.job("job_1")):
        pass
    assert len(sheet_writer.attempts) == 1  # current now: nothing more


def test_a_failing_final_write_is_raised_unless_the_delivery_failed_already(
    store: FakeJobStore, ledger: JobLedger, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job())
    sheet_writer.errors += [TransientError("Sheets 503")] * 2
    with pytest.raises(TransientError, match="Sheets 503"), ledger.entry("job_1") as entry:
        entry.apply(lambda j: lifecycle.start(j, T0))

    sheet_writer.errors += [TransientError("Sheets 503")] * 2
    with pytest.raises(TransientError, match="Gemini"), ledger.entry("job_1") as entry:
        entry.apply(lambda j: lifecycle.fail_job(j, "x", T0))
        raise TransientError("Gemini 503")


def test_entries_of_many_jobs_keep_a_few_open_and_leave_every_row_current(
    store: FakeJobStore, ledger: JobLedger, sheet_writer: FakeSheetWriter
) -> None:
    store.add(*(make_job(job_id=f"job_{i}", scene_id=f"sc-{i}") for i in range(5)))
    lock, busy, most = threading.Lock(), [0], [0]

    def slow_write(write: RowWrite) -> None:
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        time.sleep(0.02)
        with lock:
            busy[0] -= 1

    sheet_writer.on_write = slow_write
    with ledger.entries(max_open=2) as rows:
        for i in range(5):
            rows.apply(f"job_{i}", lambda j: lifecycle.start(j, T0))
        # Job 0 was closed when job 2 opened: its row is current already.
        assert sheet_writer.row("sc-0")["status_img"] == Text("generating (0/2)")
        for i in range(5):
            rows.apply(f"job_{i}", lambda j: lifecycle.fail_job(j, "boom", T0))
    for i in range(5):
        assert str(sheet_writer.row(f"sc-{i}")["status_img"].value).startswith("failed")
    assert most[0] == 2  # rows written side by side, one per open entry


def test_entries_raise_the_first_row_error_after_closing_all(
    store: FakeJobStore, ledger: JobLedger, sheet_writer: FakeSheetWriter
) -> None:
    store.add(*(make_job(job_id=f"job_{i}", scene_id=f"sc-{i}") for i in range(3)))

    def sheet_refuses_scene_0(write: RowWrite) -> None:
        if write.scene_id == "sc-0":
            raise TransientError("Sheets 503")

    sheet_writer.on_write = sheet_refuses_scene_0
    with pytest.raises(TransientError, match="Sheets 503"), ledger.entries() as rows:
        for i in range(3):
            rows.apply(f"job_{i}", lambda j: lifecycle.start(j, T0))
    # The other entries were still closed, their rows written.
    assert {w.scene_id for w in sheet_writer.writes} == {"sc-1", "sc-2"}


# --------------------------------------------------------------------------- cost


class Crash(BaseException):
    """The instance dies (no handler runs, nothing is recorded)."""


@pytest.mark.parametrize(
    "order",
    ["generation first", "thumbnail first", "crash, then thumbnail", "crash, then redelivery"],
)
def test_job_cost_equals_the_cost_in_its_objects_metadata_whichever_event_comes_first(
    store: FakeJobStore,
    objects: FakeObjectStore,
    ledger: JobLedger,
    fake_monotonic: FakeClock,
    order: str,
) -> None:
    store.add(make_job(variant_count=2))
    settings = make_settings()
    generator = FakeImageGenerator()
    generation = Generation(
        settings=settings,
        ledger=ledger,
        objects=objects,
        generator=generator,
        references=FakeReferenceLoader(),
        quota=FakeQuotaGate(),
        probe=image_mime,
        clock=fake_monotonic,
        sleep=fake_monotonic.sleep,
        monotonic=fake_monotonic.monotonic,
    )
    thumbnails = Thumbnails(settings, ledger, objects, make_thumbnail, fake_monotonic)

    def notify(bucket: str, name: str) -> None:
        if not name.startswith(settings.images_prefix):
            return  # a thumbnail: no notification
        # What the finalize notification carries: the object's metadata.
        stored = objects.objects[(bucket, name)]
        event = StorageObject("OBJECT_FINALIZE", bucket, name, "1", "image/png", 1, stored.metadata)
        if order in ("thumbnail first", "crash, then thumbnail"):
            thumbnails.handle(event)  # before generation records the upload
        else:
            pending.append(event)
        if crashing:
            raise Crash

    pending: list[StorageObject] = []
    crashing = order.startswith("crash")
    objects.on_create = notify
    if crashing:
        with pytest.raises(Crash):
            generation.handle(MESSAGE)
        crashing = False  # a variant the crash kept from starting is made now
        fake_monotonic.advance(settings.claim_lease_s + 1)  # the dead claims run out
        generation.handle(MESSAGE)  # the redelivery finds the objects, pays nothing
    else:
        generation.handle(MESSAGE)
    for event in pending:
        thumbnails.handle(event)

    job = store.job("job_1")
    images = [objects.objects[(IMAGES_BUCKET, n)] for n in objects.names(IMAGES_BUCKET)]
    images = [i for i in images if "pipeline-thumbnail" not in i.metadata]
    paid = [recorded_spent(i.metadata) for i in images]
    assert len(images) == 2
    assert generator.count() == 2  # nothing paid twice
    assert job.state == JobState.COMPLETED
    assert job.cost() == sum((Decimal(p.cost_usd) for p in paid if p), Decimal(0))
    assert job.cost() == Decimal("0.1340")
    for n in (1, 2):
        v = job.variant(n)
        assert (v.state, v.model, v.usage) == (VariantState.DONE, SPENT.model, SPENT.usage)


# --------------------------------------------------------------------------- budget


DAY = "2030-01-02"


@pytest.fixture
def budgeted(store: FakeJobStore, sheet_sync: SheetSync, budget: FakeBudgetLedger) -> JobLedger:
    # The batch reserved 3 images at the estimate of 0.0709 each.
    budget.used[("alice", DAY)] = Usage(3, Decimal("0.2127"))
    store.add(make_job(variant_count=3, price_per_image="0.0709", budget_day=DAY))
    return JobLedger(store, sheet_sync, budget)


def test_finished_images_settle_the_days_budget_to_their_actual_cost_once(
    budgeted: JobLedger, store: FakeJobStore, budget: FakeBudgetLedger
) -> None:
    cheaper = Spent("gemini-3.1-flash-image", "0.0672", {})
    for _ in range(3):  # the same record again changes nothing (and settles nothing)
        budgeted.apply(
            "job_1", lambda j: lifecycle.uploaded(j, 1, "a.png", "image/png", T0, cheaper)
        )
    budgeted.apply("job_1", lambda j: lifecycle.variant_failed(j, 2, "blocked", T0))
    # Variant 1: 0.0672 instead of 0.0709; variant 2 made nothing: one image and its
    # estimate back; variant 3 is still to come, so its estimate stays reserved.
    assert budget.used[("alice", DAY)] == Usage(
        2, Decimal("0.2127") - Decimal("0.0037") - Decimal("0.0709")
    )
    job = store.job("job_1")
    assert [job.variant(n).settled for n in (1, 2, 3)] == [True, True, False]
    assert [c[3:] for c in budget.calls if c[0] == "settle"] == [
        ("job_1/1", 0, Decimal("-0.0037")),
        ("job_1/2", -1, Decimal("-0.0709")),
    ]


def test_a_settlement_cut_short_by_a_crash_is_finished_once_by_the_next_delivery(
    budgeted: JobLedger, store: FakeJobStore, budget: FakeBudgetLedger
) -> None:
    spent = Spent("gemini-3.1-flash-image", "0.0800", {})
    # The instance recorded the image and settled the budget, then died before
    # marking the variant settled.
    store.mutate("job_1", lambda j: lifecycle.uploaded(j, 1, "a.png", "image/png", T0, spent))
    budget.settle("alice", DAY, "job_1/1", 0, Decimal("0.0091"))
    with budgeted.entry(store.job("job_1")):
        pass
    assert budget.used[("alice", DAY)] == Usage(3, Decimal("0.2218"))  # corrected once
    assert store.job("job_1").variant(1).settled


def test_an_image_given_back_by_a_delivery_that_died_and_then_made_is_charged_once(
    budgeted: JobLedger, store: FakeJobStore, budget: FakeBudgetLedger
) -> None:
    """Found by the simulation (seed 2716): the variant was cancelled unmade and its
    estimate given back, and the instance died before marking it settled; the
    stalled holder's image landed after all; the settlement as made named a key
    already settled, so the image was never charged."""
    store.mutate("job_1", lambda j: cancellation.cancel(j, "alice", T0))
    budget.settle("alice", DAY, "job_1/1", -1, Decimal("-0.0709"))  # then the crash
    spent = Spent("gemini-3.1-flash-image", "0.0672", {})
    budgeted.apply("job_1", lambda j: lifecycle.uploaded(j, 1, "a.png", "image/png", T0, spent))
    used = budget.used[("alice", DAY)]
    # Variant 1 made (0.0672); variants 2 and 3 given back.
    assert used == Usage(1, Decimal("0.0672"))
    with budgeted.entry(store.job("job_1")):  # a redelivery settles nothing again
        pass
    assert budget.used[("alice", DAY)] == used


def test_a_settlement_from_an_older_read_never_gives_a_made_image_back(
    budget: FakeBudgetLedger,
) -> None:
    budget.used[("alice", DAY)] = Usage(1, Decimal("0.0709"))
    budget.settle("alice", DAY, "job_1/1", 0, Decimal("-0.0037"))
    budget.settle("alice", DAY, "job_1/1", -1, Decimal("-0.0709"))  # read before it was made
    assert budget.used[("alice", DAY)] == Usage(1, Decimal("0.0672"))


def test_without_a_reserved_day_nothing_is_settled(
    store: FakeJobStore, sheet_sync: SheetSync, budget: FakeBudgetLedger
) -> None:
    store.add(make_job(variant_count=1))  # a job from before budgets were settled
    JobLedger(store, sheet_sync, budget).apply(
        "job_1", lambda j: lifecycle.variant_failed(j, 1, "x", T0)
    )
    assert budget.calls == []
