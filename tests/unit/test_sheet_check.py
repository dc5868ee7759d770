"""Nothing is paid for that the sheet cannot show: a batch naming a missing row, a
missing worksheet or more variants than image columns is refused, the same in a
dry run and live, before anything is reserved, naming the row and the column."""

# The intake fixture is shared with test_intake; tests name it as a parameter.
# ruff: noqa: F811

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import gspread
import pytest
from gspread.utils import ValueInputOption

from devstack.stack import sheets_client
from shared.adapters.sheets import GspreadSheetWriter
from shared.contracts.answers import Plan
from shared.domain.errors import MissingWorksheet, PermanentError, TransientError
from shared.services.intake import Accepted, Intake, SheetMismatch
from shared.services.sheet_check import SheetCheck
from tests.fakes import (
    SHEET_HEADER,
    FakeBudgetLedger,
    FakeClock,
    FakeIdempotencyStore,
    FakeJobStore,
    FakePublisher,
    FakeSheetLayouts,
)
from tests.stubs import new_spreadsheet, serving_sheets, sheets_url
from tests.unit.test_intake import DAY, make_intake, request  # noqa: F401

SHEET = ("sheet123", "Scenes")


@pytest.fixture
def sheets() -> FakeSheetLayouts:
    layouts = FakeSheetLayouts(every_row=False)
    layouts.put(*SHEET, ["sc-001", "sc-002", "sc-003"])
    return layouts


def problems(outcome: Any) -> list[dict[str, str]]:
    assert isinstance(outcome, SheetMismatch), outcome
    return outcome.problems


def nothing_happened(
    store: FakeJobStore, publisher: FakePublisher, budget: FakeBudgetLedger
) -> None:
    assert store.writes == []
    assert publisher.calls == []
    assert budget.usage("alice", DAY).images == 0


@pytest.mark.parametrize("run_mode", ["dry_run", "live"])
def test_a_scene_without_a_row_is_refused_naming_the_item(
    make_intake: Callable[..., Intake],
    store: FakeJobStore,
    publisher: FakePublisher,
    budget: FakeBudgetLedger,
    sheets: FakeSheetLayouts,
    run_mode: str,
) -> None:
    sheets.put(*SHEET, ["sc-001", "sc-003"])
    intake = make_intake()
    batch = request(1, 2, 1, run_mode=run_mode)
    outcome = (
        intake.plan(batch, "alice") if run_mode == "dry_run" else intake.submit(batch, "alice", "k")
    )
    assert problems(outcome) == [
        {
            "field": "items[1].scene_id",
            "reason": "no row with scene_id 'sc-002' in worksheet 'Scenes': "
            "its images would be paid for and never shown",
        }
    ]
    nothing_happened(store, publisher, budget)


@pytest.mark.parametrize("run_mode", ["dry_run", "live"])
def test_more_variants_than_image_columns_is_refused_naming_the_column(
    make_intake: Callable[..., Intake],
    store: FakeJobStore,
    publisher: FakePublisher,
    budget: FakeBudgetLedger,
    sheets: FakeSheetLayouts,
    run_mode: str,
) -> None:
    header = ["scene_id", "prompt", "status_img", "nano_img_1", "nano_img_2", "nano_img_3"]
    sheets.put(*SHEET, ["sc-001", "sc-002"], header=header)
    intake = make_intake()
    batch = request(3, 5, run_mode=run_mode)
    outcome = (
        intake.plan(batch, "alice") if run_mode == "dry_run" else intake.submit(batch, "alice", "k")
    )
    assert problems(outcome) == [
        {
            "field": "items[1].variants",
            "reason": "5 variants need column nano_img_4, nano_img_5, which worksheet "
            "'Scenes' lacks (it has nano_img_1, nano_img_2, nano_img_3): add the column "
            "or ask for fewer",
        }
    ]
    nothing_happened(store, publisher, budget)


def test_a_missing_worksheet_or_an_unshared_spreadsheet_is_named(
    make_intake: Callable[..., Intake],
    store: FakeJobStore,
    publisher: FakePublisher,
    budget: FakeBudgetLedger,
    sheets: FakeSheetLayouts,
) -> None:
    intake = make_intake()
    missing = problems(intake.submit(request(1, worksheet="Scnes"), "alice", "k1"))
    assert [p["field"] for p in missing] == ["worksheet"]
    assert "no worksheet 'Scnes'" in missing[0]["reason"]
    sheets.sheets[SHEET] = PermanentError("spreadsheet not found or not shared")
    unshared = problems(intake.plan(request(1), "alice"))
    assert [p["field"] for p in unshared] == ["spreadsheet_id"]
    assert "sheet_reader_emails" in unshared[0]["reason"]
    nothing_happened(store, publisher, budget)


def test_a_header_without_status_img_is_refused(
    make_intake: Callable[..., Intake], sheets: FakeSheetLayouts
) -> None:
    sheets.put(*SHEET, ["sc-001"], header=["scene_id", "prompt", "nano_img_1"])
    assert problems(make_intake().plan(request(1), "alice")) == [
        {
            "field": "worksheet",
            "reason": "worksheet 'Scenes' has no column status_img in its header row (row 1)",
        }
    ]


def test_a_refused_batch_passes_with_the_same_key_once_the_row_is_added(
    make_intake: Callable[..., Intake],
    sheets: FakeSheetLayouts,
    publisher: FakePublisher,
    clock: FakeClock,
) -> None:
    intake = make_intake()
    assert problems(intake.submit(request(1, 1, 1, 1), "alice", "k"))
    # The team adds the row and clicks again within the layout's lifetime: the kept
    # layout refuses, so the sheet is read again before anyone is refused.
    sheets.put(*SHEET, ["sc-001", "sc-002", "sc-003", "sc-004"])
    clock.advance(5)
    outcome = intake.submit(request(1, 1, 1, 1), "alice", "k")
    assert isinstance(outcome, Accepted) and not outcome.replay
    assert len(publisher.published) == 4
    assert sheets.reads == [SHEET, SHEET]


def test_an_estimate_then_generate_reads_the_sheet_once(
    make_intake: Callable[..., Intake], sheets: FakeSheetLayouts
) -> None:
    intake = make_intake()
    assert not isinstance(intake.plan(request(1, 2, run_mode="dry_run"), "alice"), SheetMismatch)
    assert isinstance(intake.submit(request(1, 2), "alice", "k"), Accepted)
    assert sheets.reads == [SHEET]


def test_a_batch_recorded_before_its_row_went_away_resumes(
    make_intake: Callable[..., Intake],
    sheets: FakeSheetLayouts,
    store: FakeJobStore,
    publisher: FakePublisher,
    idempotency: FakeIdempotencyStore,
) -> None:
    # The first run recorded the batch, then could not publish; the row is deleted
    # before the retry: the retry finishes the batch it began (the images were
    # checked and reserved then), it does not refuse half of it.
    publisher.fail = {"job_1_2": "Pub/Sub unavailable"}
    intake = make_intake()
    with pytest.raises(TransientError, match="could not be queued"):
        intake.submit(request(1, 1), "alice", "k")
    assert len(store.batches) == 1
    sheets.put(*SHEET, ["sc-001"])
    publisher.fail = {}
    outcome = intake.submit(request(1, 1), "alice", "k")
    assert isinstance(outcome, Accepted)
    assert len(store.batches) == 1
    assert {m.job_id for m, _ in publisher.published} == {"job_1_1", "job_1_2"}


def test_duplicate_rows_and_a_missing_job_id_column_warn(
    make_intake: Callable[..., Intake], sheets: FakeSheetLayouts
) -> None:
    header = [name for name in SHEET_HEADER if name != "job_id"]
    sheets.put(*SHEET, ["sc-001", "sc-002", "sc-001"], header=header)
    plan = make_intake().plan(request(1, 1, run_mode="dry_run"), "alice")
    assert isinstance(plan, Plan), plan
    messages = [(w.scene_id, w.message) for w in plan.warnings]
    assert (
        "sc-001",
        "scene_id 'sc-001' is in rows [2, 4] of worksheet 'Scenes'; only row 2 shows its images",
    ) in messages
    assert any(scene is None and "no job_id column" in text for scene, text in messages)


# --------------------------------------------------------------------------- adapter


@pytest.fixture
def stub_url() -> Iterator[str]:
    with serving_sheets() as server:
        yield sheets_url(server)


def test_the_gspread_adapter_reads_header_and_scene_rows_from_the_sheets_api(
    stub_url: str,
) -> None:
    client = cast(gspread.Client, sheets_client(stub_url))
    sid = new_spreadsheet(stub_url, rows=20, columns=8)
    rows = [["prompt", "scene_id", "status_img", "nano_img_1"], ["a", "s-1"], ["b", "s-2"]]
    client.open_by_key(sid).worksheet("Scenes").update(
        rows, "A1", value_input_option=ValueInputOption.raw
    )
    layout = GspreadSheetWriter(client).layout(sid, "Scenes")
    assert layout.header == ["prompt", "scene_id", "status_img", "nano_img_1"]
    assert (layout.rows_of("s-2"), layout.rows_of("s-3")) == ([3], [])
    with pytest.raises(MissingWorksheet, match="no worksheet 'Other'"):
        GspreadSheetWriter(client).layout(sid, "Other")
    check = SheetCheck(GspreadSheetWriter(client))
    batch = request(1)  # scene sc-001, spreadsheet sheet123: not this one
    assert check.check(batch).problems[0]["field"] == "spreadsheet_id"
