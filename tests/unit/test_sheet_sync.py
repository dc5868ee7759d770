"""Sheet sync: the row's cells, the digest that saves writes, and error handling."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from shared.contracts.links import LinkSigner
from shared.contracts.sheet_row import MAX_CELL_CHARS, Formula, Text, blank_cells, row_cells
from shared.contracts.sheet_row import cells_digest as _digest
from shared.domain import lifecycle
from shared.domain.errors import PermanentError, RowMoved, TransientError
from shared.domain.job import Job, JobState, VariantState
from shared.services.sheet_sync import SheetSync
from tests.fakes import T0, FakeClock, FakeJobStore, FakeSheetWriter, RowWrite, make_job, mark_done


def finish_variant(n: int) -> Callable[[Job], None]:
    def change(job: Job) -> None:
        variant = job.variant(n)
        variant.state = VariantState.DONE
        variant.thumb_name = f"thumbnails/sc-001/job_1/var_{n}.jpg"
        job.started_at = job.started_at or T0
        job.state = lifecycle.derive_state(job)

    return change


# --------------------------------------------------------------------------- row_cells


def test_row_cells_of_queued_job(links: LinkSigner) -> None:
    assert row_cells(make_job(), links) == {
        "status_img": Text("queued"),
        "job_id": Text("job_1"),
        "error_img": Text(""),
    }


def test_row_cells_image_formula_only_for_done_variants(links: LinkSigner) -> None:
    job = make_job(variant_count=4, started_at=T0)
    mark_done(job, 1)
    job.variant(2).state = VariantState.UPLOADED
    job.variant(3).state = VariantState.FAILED
    mark_done(job, 4)
    job.state = lifecycle.derive_state(job)
    cells = row_cells(job, links)
    assert cells["status_img"] == Text("generating (2/4)")
    assert cells["job_id"] == Text("job_1")
    assert sorted(cells) == ["error_img", "job_id", "nano_img_1", "nano_img_4", "status_img"]
    assert cells["nano_img_1"] == Formula(f'=IMAGE("{links.link("job_1", 1, "thumb")}")')
    assert cells["nano_img_4"] == Formula(f'=IMAGE("{links.link("job_1", 4, "thumb")}")')


def test_row_cells_status_is_text_even_when_it_looks_like_a_formula(links: LinkSigner) -> None:
    job, _ = lifecycle.fail_job(make_job(variant_count=1), '=HYPERLINK("x")', T0)
    assert job is not None
    assert row_cells(job, links)["status_img"] == Text('failed: variant 1: =HYPERLINK("x")')


def test_row_cells_escape_quotes_in_urls() -> None:
    links = LinkSigner("key", 'https://api.example.test/a"b')
    job = make_job(variant_count=1)
    mark_done(job, 1)
    cell = row_cells(job, links)["nano_img_1"]
    assert isinstance(cell, Formula)
    assert cell.value.startswith('=IMAGE("https://api.example.test/a""b/assets/job_1/1?size=thumb')
    assert cell.value.endswith('")')
    assert cell.value.count('"') == 4


# --------------------------------------------------------------------------- sync


def test_sync_writes_row_and_records_digest(
    sheet_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter, links: LinkSigner
) -> None:
    store.add(make_job())
    sheet_sync.sync("job_1")
    assert sheet_writer.writes == [
        RowWrite("sheet123", "Scenes", "sc-001", row_cells(store.job("job_1"), links))
    ]
    assert store.job("job_1").sheet_digest
    assert store.job("job_1").sheet_error is None


def test_digest_prevents_a_second_identical_write(
    sheet_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job())
    sheet_sync.sync("job_1")
    sheet_sync.sync("job_1")
    sheet_sync.sync("job_1")
    assert len(sheet_writer.attempts) == 1


def test_a_changed_job_is_written_again(
    sheet_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job())
    sheet_sync.sync("job_1")
    store.mutate("job_1", finish_variant(1))
    sheet_sync.sync("job_1")
    assert [w.cells["status_img"] for w in sheet_writer.writes] == [
        Text("queued"),
        Text("generating (1/2)"),
    ]


def test_changes_that_do_not_show_do_not_write(
    sheet_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job(started_at=T0, state=JobState.GENERATING))
    sheet_sync.sync("job_1")

    def upload(job: Job) -> None:
        job.variant(1).state = VariantState.UPLOADED

    store.mutate("job_1", upload)  # still "generating (0/2)"
    sheet_sync.sync("job_1")
    assert len(sheet_writer.attempts) == 1


def test_missing_job_writes_nothing(sheet_sync: SheetSync, sheet_writer: FakeSheetWriter) -> None:
    sheet_sync.sync("job_missing")
    assert sheet_writer.attempts == []


def test_permanent_writer_error_is_recorded_not_raised(
    sheet_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job())
    sheet_writer.errors.append(PermanentError("no row with scene_id 'sc-001'"))
    sheet_sync.sync("job_1")
    job = store.job("job_1")
    assert job.sheet_error == "no row with scene_id 'sc-001'"
    assert job.sheet_digest is None
    assert len(sheet_writer.attempts) == 1

    # Once the row exists, the next sync writes and clears the error.
    sheet_sync.sync("job_1")
    job = store.job("job_1")
    assert len(sheet_writer.writes) == 1
    assert job.sheet_error is None
    assert job.sheet_digest is not None


def test_transient_writer_error_propagates_and_next_sync_writes(
    sheet_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job())
    sheet_writer.errors.append(TransientError("Sheets API 429"))
    with pytest.raises(TransientError, match="429"):
        sheet_sync.sync("job_1")
    assert store.job("job_1").sheet_digest is None
    assert sheet_writer.writes == []

    sheet_sync.sync("job_1")
    assert len(sheet_writer.writes) == 1
    assert store.job("job_1").sheet_digest is not None


def test_concurrent_change_between_write_and_reread_writes_newer_cells(
    sheet_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter, links: LinkSigner
) -> None:
    store.add(make_job(started_at=T0, state=JobState.GENERATING))

    def change_during_first_write(write: RowWrite) -> None:
        if not sheet_writer.attempts:
            store.mutate("job_1", finish_variant(1))

    sheet_writer.on_write = change_during_first_write
    sheet_sync.sync("job_1")

    assert [w.cells["status_img"] for w in sheet_writer.writes] == [
        Text("generating (0/2)"),
        Text("generating (1/2)"),
    ]
    assert sheet_writer.row("sc-001") == row_cells(store.job("job_1"), links)
    assert "nano_img_1" in sheet_writer.row("sc-001")


def test_rounds_are_bounded_for_a_flapping_job(
    sheet_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job(variant_count=8, started_at=T0, state=JobState.GENERATING))
    done = 0

    def change_every_time(write: RowWrite) -> None:
        nonlocal done
        done += 1
        store.mutate("job_1", finish_variant(done))

    sheet_writer.on_write = change_every_time
    # Bounded, and never claimed current while it is not: the delivery is retried.
    with pytest.raises(TransientError, match="kept changing while its row was written"):
        sheet_sync.sync("job_1")
    assert len(sheet_writer.attempts) == 3
    sheet_writer.on_write = None
    assert sheet_sync.sync("job_1") and sheet_sync.is_current(store.job("job_1"))


# --------------------------------------------------------------------------- cells


def test_row_cells_error_column_and_long_texts_are_clipped(links: LinkSigner) -> None:
    job, _ = lifecycle.fail_job(make_job(variant_count=1), "x" * 5000, T0)
    assert job is not None
    cells = row_cells(job, links)
    assert cells["error_img"] == Text(job.error[: MAX_CELL_CHARS - 1] + "…")  # type: ignore[index]
    assert len(cells["status_img"].value) == MAX_CELL_CHARS
    assert cells["status_img"].value.startswith("failed: variant 1: xxx")


# --------------------------------------------------------------------------- notes


def test_note_from_the_writer_is_recorded_with_the_digest(
    sheet_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job())
    sheet_writer.notes.append("worksheet 'Scenes' has no column job_id")
    sheet_sync.sync("job_1")
    job = store.job("job_1")
    assert job.sheet_error == "worksheet 'Scenes' has no column job_id"
    assert job.sheet_digest is not None
    sheet_sync.sync("job_1")
    assert len(sheet_writer.attempts) == 1  # written: not retried


# --------------------------------------------------------------------------- claims


@pytest.fixture
def timed_sync(
    store: FakeJobStore, sheet_writer: FakeSheetWriter, links: LinkSigner, clock: FakeClock
) -> SheetSync:
    return SheetSync(
        store,
        sheet_writer,
        links,
        lease_s=120,
        wait_s=30,
        clock=clock,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
    )


def hold(job: Job, until: datetime) -> None:
    job.sheet_claim_id = "sheet_other"
    job.sheet_claim_expires = until


def test_a_live_claim_of_another_delivery_is_waited_for(
    timed_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter, clock: FakeClock
) -> None:
    store.add(make_job())
    store.mutate("job_1", lambda job: hold(job, T0 + timedelta(seconds=60)))
    digest = _digest(row_cells(store.job("job_1"), timed_sync.links))

    def other_finishes(operation: str, job_id: str) -> None:
        if operation == "update_job" and clock.sleeps:

            def settle(job: Job) -> None:
                job.sheet_claim_id = job.sheet_claim_expires = None
                job.sheet_digest = digest

            store.mutate("job_1", settle)

    store.hook = other_finishes
    timed_sync.sync("job_1")
    assert sheet_writer.attempts == []  # the other delivery wrote this very row
    assert clock.sleeps


def test_a_claim_that_stays_held_ends_in_transient_error(
    timed_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter, clock: FakeClock
) -> None:
    store.add(make_job())
    store.mutate("job_1", lambda job: hold(job, T0 + timedelta(seconds=3600)))
    with pytest.raises(TransientError, match="still writing"):
        timed_sync.sync("job_1")
    assert sheet_writer.attempts == []
    assert 30 <= sum(clock.sleeps) <= 33  # bounded by wait_s


def test_an_expired_claim_is_taken_over(
    timed_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job())
    store.mutate("job_1", lambda job: hold(job, T0 - timedelta(seconds=1)))
    timed_sync.sync("job_1")
    assert len(sheet_writer.writes) == 1
    assert store.job("job_1").sheet_claim_id is None


def test_the_claim_is_released_after_errors(
    timed_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job())
    sheet_writer.errors.append(TransientError("Sheets API 503"))
    with pytest.raises(TransientError):
        timed_sync.sync("job_1")
    job = store.job("job_1")
    assert (job.sheet_claim_id, job.sheet_claim_expires, job.sheet_digest) == (None, None, None)

    sheet_writer.errors.append(PermanentError("no row with scene_id 'sc-001'"))
    timed_sync.sync("job_1")
    job = store.job("job_1")
    assert (job.sheet_claim_id, job.sheet_error) == (None, "no row with scene_id 'sc-001'")


def test_a_write_that_lands_after_its_claim_ran_out_is_not_trusted(
    timed_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter, clock: FakeClock
) -> None:
    """Our write took longer than the lease: another delivery took the row over and
    may have written a newer row before ours landed. Ours is counted as late, the
    digest forgotten, and the row written again once the other claim is gone."""
    store.add(make_job())

    def taken_over(write: RowWrite) -> None:
        if len(sheet_writer.attempts) == 0:
            store.mutate("job_1", lambda job: hold(job, T0 + timedelta(seconds=5)))

    sheet_writer.on_write = taken_over
    timed_sync.sync("job_1")
    job = store.job("job_1")
    assert job.sheet_late_writes == 1
    assert len(sheet_writer.writes) == 2  # once late, once more after the other's claim
    assert job.sheet_digest == _digest(row_cells(job, timed_sync.links))
    assert job.sheet_claim_id is None


def test_a_claim_lost_for_good_leaves_the_row_unknown(
    timed_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job())
    sheet_writer.on_write = lambda write: store.mutate(
        "job_1", lambda job: hold(job, T0 + timedelta(seconds=600))
    )
    with pytest.raises(TransientError, match="still writing"):
        timed_sync.sync("job_1")  # the delivery is retried; the holder writes meanwhile
    job = store.job("job_1")
    assert job.sheet_digest is None  # what we wrote may be older than the new holder's row
    assert (job.sheet_claim_id, job.sheet_late_writes) == ("sheet_other", 1)


def test_a_holder_writes_again_when_a_late_write_landed_during_its_own(
    timed_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job())

    def late_write_lands(write: RowWrite) -> None:
        if len(sheet_writer.attempts) == 0:

            def late(job: Job) -> None:
                job.sheet_late_writes += 1
                job.sheet_digest = None

            store.mutate("job_1", late)

    sheet_writer.on_write = late_write_lands
    timed_sync.sync("job_1")
    job = store.job("job_1")
    assert len(sheet_writer.writes) == 2
    assert job.sheet_digest == _digest(row_cells(job, timed_sync.links))


def test_a_current_row_with_follow_ups_marked_clears_the_mark_without_a_write(
    timed_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job())
    timed_sync.sync("job_1")
    store.mutate("job_1", lambda job: setattr(job, "followups_since", T0))
    timed_sync.sync("job_1")
    assert len(sheet_writer.writes) == 1
    assert store.job("job_1").followups_since is None


def test_a_row_write_clears_the_follow_up_mark_only_once_the_budget_is_settled(
    timed_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    job = make_job(variant_count=1, budget_day="2030-01-01")
    job.followups_since = T0
    lifecycle_failed, _ = lifecycle.fail_job(job, "blocked", T0)
    assert lifecycle_failed is not None
    store.add(lifecycle_failed)
    timed_sync.sync("job_1")
    assert len(sheet_writer.writes) == 1
    assert store.job("job_1").followups_since == T0  # its reservation is not given back yet

    store.mutate("job_1", lambda j: setattr(j.slot(1), "settled", True))
    timed_sync.sync("job_1")
    assert store.job("job_1").followups_since is None


# --------------------------------------------------------------------------- race


def test_concurrent_syncs_never_overlap_and_the_last_state_wins(
    store: FakeJobStore, sheet_writer: FakeSheetWriter, links: LinkSigner
) -> None:
    store.add(make_job(variant_count=4, started_at=T0, state=JobState.GENERATING))
    sync = SheetSync(store, sheet_writer, links)
    in_flight = 0
    overlaps = 0
    lock = threading.Lock()

    def writing(write: RowWrite) -> None:
        nonlocal in_flight, overlaps
        with lock:
            in_flight += 1
            overlaps += in_flight > 1
        time.sleep(0.02)
        with lock:
            in_flight -= 1

    sheet_writer.on_write = writing

    def finish_and_sync(n: int) -> None:
        store.mutate("job_1", finish_variant(n))
        sync.sync("job_1")

    threads = [threading.Thread(target=finish_and_sync, args=(n,)) for n in (1, 2, 3, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert overlaps == 0
    assert sheet_writer.row("sc-001") == row_cells(store.job("job_1"), links)
    assert sheet_writer.row("sc-001")["status_img"] == Text("completed")
    assert len([w for w in sheet_writer.writes if w.cells["status_img"] == Text("completed")]) == 1


def test_a_claim_that_ran_out_unreleased_leaves_the_row_unknown_even_when_it_looks_current(
    timed_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter, links: LinkSigner
) -> None:
    """Found by the simulation (seed 12309): a sync wrote the row for a state the job
    then left again (a re-roll asked for, then cancelled) and died before releasing
    its claim; the recorded digest matched the job once more, so the row the dead
    sync wrote stayed."""
    store.add(make_job())

    def dead_writer(job: Job) -> None:
        job.sheet_digest = _digest(row_cells(job, links))  # looks current
        job.sheet_claim_id = "sheet_dead"
        job.sheet_claim_expires = T0 - timedelta(seconds=1)
        job.followups_since = T0

    store.mutate("job_1", dead_writer)
    timed_sync.sync("job_1")
    assert len(sheet_writer.writes) == 1  # written again: what the dead sync wrote is unknown
    job = store.job("job_1")
    assert (job.sheet_claim_id, job.sheet_overtaken_at) == (None, T0)
    assert job.sheet_digest == _digest(row_cells(job, links))


# --------------------------------------------------------------------------- row owners


def resent(job_id: str = "job_2", later_s: float = 60) -> Job:
    """The same scene sent again, in a later batch."""
    return make_job(
        job_id=job_id, batch_id="bat_2", variant_count=1, created_at=T0 + timedelta(seconds=later_s)
    )


def test_a_resent_scene_whose_old_job_ends_last_keeps_the_new_jobs_row(
    sheet_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job(variant_count=2), resent())
    store.mutate("job_2", lambda j: mark_done(j, 1))
    sheet_sync.sync("job_2")
    store.mutate("job_1", lambda j: mark_done(j, 1, 2))
    sheet_sync.sync("job_1")
    sheet_sync.sync("job_1")
    assert [w.cells["job_id"] for w in sheet_writer.attempts] == [Text("job_2")]
    old = store.job("job_1")
    assert old.sheet_error == "the row shows job job_2, sent later for this scene"
    assert sheet_sync.is_current(old)  # nothing left to write for it


def test_a_write_that_lands_after_the_scene_was_sent_again_gives_the_row_back(
    sheet_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job())

    def sent_again_meanwhile(write: RowWrite) -> None:
        if write.cells["job_id"] == Text("job_1") and "job_2" not in store._jobs:
            store.add(resent())
            sheet_sync.sync("job_2")  # written first, then the slow write of job_1 lands

    sheet_writer.on_write = sent_again_meanwhile
    sheet_sync.sync("job_1")
    assert [w.cells["job_id"] for w in sheet_writer.writes] == [
        Text("job_2"),
        Text("job_1"),
        Text("job_2"),  # written again: the row ends showing the newer job
    ]


def test_cells_that_landed_in_another_scenes_row_go_back_to_its_job(
    sheet_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job(), make_job(job_id="job_9", scene_id="sc-009"))
    sheet_sync.sync("job_9")
    sheet_writer.errors = [RowMoved("sc-001", "sc-009")]
    sheet_sync.sync("job_1")
    assert [(w.scene_id, w.cells["job_id"]) for w in sheet_writer.writes] == [
        ("sc-009", Text("job_9")),
        ("sc-009", Text("job_9")),  # its own cells again, over the stray ones
        ("sc-001", Text("job_1")),  # and ours where the scene is now
    ]


def test_cells_that_landed_in_a_row_no_job_owns_are_cleared(
    sheet_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job())
    sheet_writer.errors = [RowMoved("sc-001", "sc-777")]
    sheet_sync.sync("job_1")
    first = sheet_writer.writes[0]
    assert (first.scene_id, first.cells) == ("sc-777", blank_cells())
    assert sheet_writer.writes[-1].scene_id == "sc-001"


def test_a_row_is_written_on_the_tab_the_batch_was_sent_to(
    sheet_sync: SheetSync, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job(worksheet_id=7351))
    sheet_sync.sync("job_1")
    assert [(w.worksheet, w.worksheet_id) for w in sheet_writer.writes] == [("Scenes", 7351)]
