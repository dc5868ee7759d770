"""Sheet sync: the row's cells, the digest that saves writes, and error handling."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from shared import jobs as transitions
from shared.errors import PermanentError, TransientError
from shared.links import LinkSigner
from shared.models import Job, JobState, VariantState
from shared.ports import Formula, Text
from shared.services.sheet_sync import SheetSync, row_cells
from tests.fakes import T0, FakeJobStore, FakeSheetWriter, RowWrite, make_job


def finish_variant(n: int) -> Callable[[Job], None]:
    def change(job: Job) -> None:
        variant = job.variant(n)
        variant.state = VariantState.DONE
        variant.thumb_name = f"thumbnails/sc-001/job_1/var_{n}.jpg"
        job.started_at = job.started_at or T0
        job.state = transitions.derive_state(job)

    return change


# --------------------------------------------------------------------------- row_cells


def test_row_cells_of_queued_job(links: LinkSigner) -> None:
    assert row_cells(make_job(), links) == {
        "status_img": Text("queued"),
        "job_id": Text("job_1"),
    }


def test_row_cells_image_formula_only_for_done_variants(links: LinkSigner) -> None:
    job = make_job(variant_count=4, started_at=T0)
    job.variant(1).state = VariantState.DONE
    job.variant(2).state = VariantState.UPLOADED
    job.variant(3).state = VariantState.FAILED
    job.variant(4).state = VariantState.DONE
    job.state = transitions.derive_state(job)
    cells = row_cells(job, links)
    assert cells["status_img"] == Text("generating (2/4)")
    assert cells["job_id"] == Text("job_1")
    assert sorted(cells) == ["job_id", "nano_img_1", "nano_img_4", "status_img"]
    assert cells["nano_img_1"] == Formula(f'=IMAGE("{links.link("job_1", 1, "thumb")}")')
    assert cells["nano_img_4"] == Formula(f'=IMAGE("{links.link("job_1", 4, "thumb")}")')


def test_row_cells_status_is_text_even_when_it_looks_like_a_formula(links: LinkSigner) -> None:
    job, _ = transitions.fail_job(make_job(variant_count=1), '=HYPERLINK("x")', T0)
    assert job is not None
    assert row_cells(job, links)["status_img"] == Text('failed: variant 1: =HYPERLINK("x")')


def test_row_cells_escape_quotes_in_urls() -> None:
    links = LinkSigner("key", 'https://api.example.test/a"b')
    job = make_job(variant_count=1)
    job.variant(1).state = VariantState.DONE
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
    sheet_sync.sync("job_1")
    assert len(sheet_writer.attempts) == 3


# --------------------------------------------------------------------------- race


class Gate:
    """Threading events with a safety timeout, for a fixed interleaving."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def _event(self, name: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(name, threading.Event())

    def open(self, name: str) -> None:
        self._event(name).set()

    def wait(self, name: str) -> None:
        self._event(name).wait(timeout=5)


def test_stale_write_landing_last_is_repaired(
    store: FakeJobStore, sheet_writer: FakeSheetWriter, links: LinkSigner
) -> None:
    store.add(make_job(started_at=T0, state=JobState.GENERATING))
    sync = SheetSync(store, sheet_writer, links)
    gate = Gate()
    counts: dict[tuple[str, str], int] = {}

    def store_hook(operation: str, job_id: str) -> None:
        who = threading.current_thread().name
        key = (who, operation)
        counts[key] = counts.get(key, 0) + 1
        if key == ("B", "update_job") and counts[key] == 1:
            gate.open("b wrote")  # B's write is in the sheet; A's lands after it
            gate.wait("a recorded")  # B records its digest after A recorded its own
        if key == ("A", "get_job") and counts[key] == 2:
            gate.open("a recorded")
            gate.wait("b recorded")  # A re-reads only after B recorded
        if key == ("B", "get_job") and counts[key] == 2:
            gate.open("b recorded")

    def writer_hook(write: RowWrite) -> None:
        if threading.current_thread().name == "A":
            gate.open("a writing")
            gate.wait("b wrote")

    store.hook = store_hook
    sheet_writer.on_write = writer_hook

    a = threading.Thread(target=sync.sync, args=("job_1",), name="A")
    a.start()
    gate.wait("a writing")  # A computed the old cells and is about to write them
    store.mutate("job_1", finish_variant(1))
    b = threading.Thread(target=sync.sync, args=("job_1",), name="B")
    b.start()
    a.join(timeout=10)
    b.join(timeout=10)

    assert sheet_writer.row("sc-001") == row_cells(store.job("job_1"), links)
