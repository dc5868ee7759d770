"""Tests for the local Sheets API stub, driven through the real gspread client."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import gspread
import pytest
import requests
from gspread.utils import ValueInputOption, ValueRenderOption

from devstack.sheets_stub import A1Range, Mirror, main, parse_a1
from devstack.stack import sheets_client
from tests.stubs import serving_sheets, sheets_url

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def running(
    data_file: Path | None = None, mirror: Mirror | None = None, quota: int | None = None
) -> Iterator[str]:
    with serving_sheets(data_file, mirror, quota) as server:
        yield sheets_url(server)


@pytest.fixture
def base(tmp_path: Path) -> Iterator[str]:
    with running(tmp_path / "sheets.json") as url:
        yield url


def client(base: str) -> gspread.Client:
    return cast(gspread.Client, sheets_client(base))


def create(base: str, title: str = "Pipeline", **extra: Any) -> str:
    resp = requests.post(
        base + "/v4/spreadsheets", json={"properties": {"title": title}, **extra}, timeout=5
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["spreadsheetId"])


def stats(base: str) -> dict[str, Any]:
    result: dict[str, Any] = requests.get(base + "/_stub/stats", timeout=5).json()
    return result


# --- A1 notation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sheet1!A1:C3", A1Range("Sheet1", 0, 0, 3, 3)),
        ("'My Sheet'!A1", A1Range("My Sheet", 0, 0, 1, 1, single=True)),
        ("'Bob''s'!B2:C", A1Range("Bob's", 1, 1, None, 3)),
        ("Sheet1", A1Range("Sheet1")),
        ("'Sheet1'", A1Range("Sheet1")),
        ("A1:B2", A1Range(None, 0, 0, 2, 2)),
        ("Sheet1!1:1", A1Range("Sheet1", 0, 0, 1, None)),
        ("Sheet1!A:A", A1Range("Sheet1", 0, 0, None, 1)),
        ("A2:A", A1Range(None, 1, 0, None, 1)),
        ("A2:Z", A1Range(None, 1, 0, None, 26)),
        ("B2:A1", A1Range(None, 0, 0, 2, 2)),
        ("aa10", A1Range(None, 9, 26, 10, 27, single=True)),
    ],
)
def test_parse_a1(text: str, expected: A1Range) -> None:
    assert parse_a1(text) == expected


@pytest.mark.parametrize("text", ["Sheet1!A0", "Sheet1!1:B", "'Unclosed!A1", "S!A1:B2:C3"])
def test_parse_a1_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_a1(text)


# --- spreadsheets ----------------------------------------------------------------------


def test_create_defaults_to_one_sheet1_grid(base: str) -> None:
    sh = client(base).open_by_key(create(base, "Defaults"))
    assert sh.title == "Defaults"
    assert sh.locale == "en_US"
    (ws,) = sh.worksheets()
    assert (ws.title, ws.id, ws.row_count, ws.col_count) == ("Sheet1", 0, 1000, 26)


def test_create_with_sheets_and_chosen_id(base: str) -> None:
    sheets = [
        {"properties": {"title": "Jobs", "gridProperties": {"rowCount": 5, "columnCount": 3}}}
    ]
    sid = create(base, "Chosen", spreadsheetId="fixed-id", sheets=sheets)
    assert sid == "fixed-id"
    ws = client(base).open_by_key("fixed-id").worksheet("Jobs")
    assert (ws.row_count, ws.col_count) == (5, 3)
    again = requests.post(base + "/v4/spreadsheets", json={"spreadsheetId": "fixed-id"}, timeout=5)
    assert again.status_code == 409


def test_structural_batch_update(base: str) -> None:
    sh = client(base).open_by_key(create(base))
    ws = sh.add_worksheet("Extra", rows=4, cols=2, index=0)
    assert [w.title for w in sh.worksheets()] == ["Extra", "Sheet1"]
    ws.update([["keep", "x"], ["gone", "y"]], "A1")
    ws.resize(rows=1)  # shrinking drops cells outside the grid
    ws.add_cols(3)
    ws.update_title("Renamed")
    meta = sh.worksheet("Renamed")
    assert (meta.row_count, meta.col_count) == (1, 5)
    meta.add_rows(1)  # resize back: the dropped row must stay empty
    assert meta.get_all_values() == [["keep", "x"]]
    sh.batch_update(
        {"requests": [{"appendDimension": {"sheetId": ws.id, "dimension": "ROWS", "length": 3}}]}
    )
    assert sh.worksheet("Renamed").row_count == 5
    sh.del_worksheet(meta)
    assert [w.title for w in sh.worksheets()] == ["Sheet1"]
    with pytest.raises(gspread.exceptions.APIError) as last:
        sh.del_worksheet(sh.sheet1)
    assert last.value.code == 400


def test_batch_update_unknown_kind_is_rejected_atomically(base: str) -> None:
    sh = client(base).open_by_key(create(base))
    body = {"requests": [{"addSheet": {"properties": {"title": "New"}}}, {"repeatCell": {}}]}
    with pytest.raises(gspread.exceptions.APIError) as err:
        sh.batch_update(body)
    assert err.value.code == 400
    assert err.value.error["status"] == "INVALID_ARGUMENT"
    assert "repeatCell" in err.value.error["message"]
    assert [w.title for w in sh.worksheets()] == ["Sheet1"]  # addSheet was not kept


def test_add_sheet_duplicate_title_rejected(base: str) -> None:
    sh = client(base).open_by_key(create(base))
    with pytest.raises(gspread.exceptions.APIError) as err:
        sh.add_worksheet("sheet1", rows=1, cols=1)  # names clash case-insensitively
    assert "already exists" in err.value.error["message"]


# --- values ----------------------------------------------------------------------------


def test_update_and_read_back_with_quoted_titles(base: str) -> None:
    sh = client(base).open_by_key(create(base))
    for title in ("My Sheet", "Bob's", "Q&A / 50%"):
        ws = sh.add_worksheet(title, rows=10, cols=4)
        resp = ws.update([["id", "prompt"], ["1", "a cat"], ["2", "a dog"]], "A1")
        assert resp["updatedCells"] == 6
        assert resp["updatedRange"] == "'" + title.replace("'", "''") + "'!A1:B3"
        assert ws.get_all_values() == [["id", "prompt"], ["1", "a cat"], ["2", "a dog"]]
        assert ws.row_values(2) == ["1", "a cat"]
        assert ws.col_values(2) == ["prompt", "a cat", "a dog"]
        assert ws.get("B2:B3") == [["a cat"], ["a dog"]]
        assert ws.acell("B3").value == "a dog"
    assert sh.sheet1.get_all_values() == [[]]  # other sheets untouched


def test_values_batch_update_user_entered_and_raw(base: str) -> None:
    sh = client(base).open_by_key(create(base))
    resp = sh.values_batch_update(
        {
            "valueInputOption": "USER_ENTERED",
            "data": [
                {"range": "Sheet1!A1", "values": [["=SUM(1,2)", "'0042", "42", "true", "hi"]]}
            ],
        }
    )
    assert (resp["totalUpdatedCells"], resp["totalUpdatedSheets"]) == (5, 1)
    sh.values_batch_update(
        {"valueInputOption": "RAW", "data": [{"range": "Sheet1!A2:B2", "values": [["=1+1", "42"]]}]}
    )
    ws = sh.sheet1
    formula = ws.get("A1:E2", value_render_option=ValueRenderOption.formula)
    assert formula == [["=SUM(1,2)", "0042", 42, True, "hi"], ["=1+1", "42"]]
    unformatted = ws.get("A1:E2", value_render_option=ValueRenderOption.unformatted)
    # Formulas are not evaluated; RAW "=1+1" and "42" stay text.
    assert unformatted == [["", "0042", 42, True, "hi"], ["=1+1", "42"]]
    assert ws.get("A1:E2") == [["", "0042", "42", "TRUE", "hi"], ["=1+1", "42"]]


def test_user_entered_numbers_and_clearing(base: str) -> None:
    sh = client(base).open_by_key(create(base))
    ws = sh.sheet1
    ws.update(
        [["1.5", "-3", "1e3", "12abc", 7]], "A1", value_input_option=ValueInputOption.user_entered
    )
    assert ws.get("A1:E1", value_render_option=ValueRenderOption.unformatted) == [
        [1.5, -3, 1000, "12abc", 7]
    ]
    ws.update([["", None]], "A1")  # "" clears a cell, null leaves it alone
    assert ws.get("A1:B1", value_render_option=ValueRenderOption.unformatted) == [["", -3]]


def test_empty_ranges_and_trailing_cells_are_omitted(base: str) -> None:
    sh = client(base).open_by_key(create(base))
    assert "values" not in sh.values_get("Sheet1!A1:C3")
    sh.sheet1.update([["x"]], "B2")
    got = sh.values_get("Sheet1!A1:D5")
    assert got["values"] == [[], ["", "x"]]
    assert got["range"] == "Sheet1!A1:D5"
    assert sh.values_get("Sheet1")["range"] == "Sheet1!A1:Z1000"
    columns = sh.values_get("Sheet1!A:B", params={"majorDimension": "COLUMNS"})
    assert columns["values"] == [[], ["", "x"]]


def test_raw_http_ranges_are_url_decoded(base: str) -> None:
    sid = create(base)
    url = f"{base}/v4/spreadsheets/{sid}/values/Sheet1!A1:B1"
    put = requests.put(
        url, params={"valueInputOption": "RAW"}, json={"values": [["a", "b"]]}, timeout=5
    )
    assert put.status_code == 200, put.text
    encoded = requests.get(f"{base}/v4/spreadsheets/{sid}/values/%27Sheet1%27%21A1%3AB1", timeout=5)
    assert encoded.json()["values"] == [["a", "b"]]


def test_append_rows_after_table_and_grid_growth(base: str) -> None:
    sh = client(base).open_by_key(create(base))
    ws = sh.add_worksheet("Jobs", rows=3, cols=2)
    ws.update([["id", "status"], ["1", "done"]], "A1")
    resp = ws.append_rows([["2", "new"], ["3", "new"]])
    assert resp["updates"]["updatedRange"] == "Jobs!A3:B4"
    assert resp["tableRange"] == "Jobs!A1:B2"
    assert ws.get_all_values() == [["id", "status"], ["1", "done"], ["2", "new"], ["3", "new"]]
    assert sh.worksheet("Jobs").row_count == 4  # the 3-row grid grew to fit
    ws.append_row(["4", "x", "wide"])  # and widens for extra columns
    assert sh.worksheet("Jobs").col_count == 3
    assert ws.row_values(5) == ["4", "x", "wide"]


def test_append_lands_after_first_contiguous_table(base: str) -> None:
    ws = client(base).open_by_key(create(base)).sheet1
    ws.update([["h"], ["1"], [""], [""], ["later"]], "A1")  # blank rows 3-4: two tables
    resp = ws.append_rows([["2"]], table_range="A1")
    assert resp["updates"]["updatedRange"] == "Sheet1!A3"
    assert resp["tableRange"] == "Sheet1!A1:A2"
    assert ws.col_values(1) == ["h", "1", "2", "", "later"]
    ws.append_rows([["3"]], insert_data_option="INSERT_ROWS")  # shifts the rest down
    assert ws.col_values(1) == ["h", "1", "2", "3", "", "later"]


def test_insert_and_delete_rows(base: str) -> None:
    sh = client(base).open_by_key(create(base))
    ws = sh.add_worksheet("Jobs", rows=4, cols=2)
    ws.update([["id"], ["1"], ["3"]], "A1")
    ws.insert_rows([["2", "new"]], row=3)
    assert ws.get_all_values() == [["id", ""], ["1", ""], ["2", "new"], ["3", ""]]
    assert sh.worksheet("Jobs").row_count == 5
    ws.delete_rows(2, 3)
    assert ws.col_values(1) == ["id", "3"]
    assert sh.worksheet("Jobs").row_count == 3
    ws.delete_columns(2)
    assert sh.worksheet("Jobs").col_count == 1
    with pytest.raises(gspread.exceptions.APIError) as err:
        ws.delete_rows(1, 3)
    assert "delete all the rows" in err.value.error["message"]


def test_sort_range_moves_whole_rows_numbers_then_text_then_empty(base: str) -> None:
    sh = client(base).open_by_key(create(base))
    ws = sh.add_worksheet("Jobs", rows=8, cols=3)
    ws.update([["id", "n"], ["b", 2], ["", "x"], ["a", 10], ["c", 1]], "A1")
    rows = {"sheetId": ws.id, "startRowIndex": 1, "endRowIndex": 6}
    spec = {"dimensionIndex": 0, "sortOrder": "ASCENDING"}
    sh.batch_update({"requests": [{"sortRange": {"range": rows, "sortSpecs": [spec]}}]})
    assert ws.get_all_values()[1:5] == [["a", "10"], ["b", "2"], ["c", "1"], ["", "x"]]
    spec = {"dimensionIndex": 1, "sortOrder": "DESCENDING"}
    sh.batch_update({"requests": [{"sortRange": {"range": rows, "sortSpecs": [spec]}}]})
    # Ascending puts numbers before text; descending is its reverse; empty cells last.
    assert ws.col_values(2)[1:5] == ["x", "10", "2", "1"]
    assert ws.col_values(1)[1:5] == ["", "a", "b", "c"]


def test_duplicate_sheet_copies_cells_under_a_new_id(base: str) -> None:
    sh = client(base).open_by_key(create(base))
    ws = sh.add_worksheet("Jobs", rows=4, cols=2)
    ws.update([["id"], ["1"]], "A1")
    copy = sh.duplicate_sheet(ws.id, new_sheet_name="Jobs (copy)")
    assert copy.id != ws.id and copy.get_all_values() == ws.get_all_values()
    ws.update_acell("A2", "changed")
    assert copy.acell("A2").value == "1"


def test_spreadsheet_get_with_ranges_and_grid_data(base: str) -> None:
    sid = create(base)
    sh = client(base).open_by_key(sid)
    ws = sh.add_worksheet("Jobs", rows=6, cols=3)
    sh.add_worksheet("Other", rows=2, cols=2)
    ws.update([["h1", "", "h3"], ["x"], [], ["42"]], "A1")
    answer = requests.get(
        f"{base}/v4/spreadsheets/{sid}",
        params={"ranges": ["'Jobs'!1:1", "Jobs!A:A"], "includeGridData": "true"},
        timeout=5,
    ).json()
    (sheet,) = answer["sheets"]  # only the sheet the ranges are on
    assert sheet["properties"]["sheetId"] == ws.id
    header, column = sheet["data"]  # one GridData per range, in order
    assert header["rowData"] == [
        {"values": [{"formattedValue": "h1"}, {}, {"formattedValue": "h3"}]}
    ]
    assert column["rowData"] == [
        {"values": [{"formattedValue": "h1"}]},
        {"values": [{"formattedValue": "x"}]},
        {},
        {"values": [{"formattedValue": "42"}]},
    ]


def test_update_outside_grid_or_range_is_rejected(base: str) -> None:
    sh = client(base).open_by_key(create(base))
    ws = sh.add_worksheet("Small", rows=2, cols=2)
    with pytest.raises(gspread.exceptions.APIError) as err:
        ws.update([["a"], ["b"], ["c"]], "A1")
    assert err.value.code == 400
    assert "exceeds grid limits" in err.value.error["message"]
    with pytest.raises(gspread.exceptions.APIError) as err:
        ws.update([["a", "b"]], "A1:A1")
    assert "Requested writing within range" in err.value.error["message"]
    with pytest.raises(gspread.exceptions.APIError) as err:
        sh.values_batch_update(
            {
                "valueInputOption": "RAW",
                "data": [
                    {"range": "Small!A1", "values": [["ok"]]},
                    {"range": "Small!C1", "values": [["too far"]]},
                ],
            }
        )
    assert "exceeds grid limits" in err.value.error["message"]
    assert ws.get_all_values() == [[]]  # nothing from the failed batch was written


def test_batch_get(base: str) -> None:
    sh = client(base).open_by_key(create(base))
    ws = sh.sheet1
    ws.update([["a", "b", "c"], ["d", "e", "f"]], "A1")
    first, second, empty = ws.batch_get(["A1:B1", "C2", "D4"])
    assert (first, second, empty) == ([["a", "b"]], [["f"]], [])
    assert first.range == "Sheet1!A1:B1"
    posted = requests.post(
        f"{base}/v4/spreadsheets/{sh.id}/values:batchGet",
        json={"ranges": ["Sheet1!B2"], "valueRenderOption": "FORMULA"},
        timeout=5,
    )
    assert posted.json()["valueRanges"][0]["values"] == [["e"]]


def test_clear_and_batch_clear(base: str) -> None:
    sh = client(base).open_by_key(create(base))
    ws = sh.sheet1
    ws.update([["a", "b", "c"], ["d", "e", "f"]], "A1")
    assert ws.batch_clear(["A1", "C1:C2"])["clearedRanges"] == ["Sheet1!A1", "Sheet1!C1:C2"]
    assert ws.get_all_values() == [["", "b"], ["d", "e"]]
    assert sh.values_get("Sheet1!A1:C2")["values"] == [["", "b"], ["d", "e"]]
    ws.clear()
    assert ws.get_all_values() == [[]]


def test_concurrent_writers_all_land(base: str) -> None:
    sh = client(base).open_by_key(create(base))
    sid, errors = sh.id, []

    def write(row: int) -> None:
        for col in range(5):
            resp = requests.put(
                f"{base}/v4/spreadsheets/{sid}/values/Sheet1!{'ABCDE'[col]}{row}",
                params={"valueInputOption": "RAW"},
                json={"values": [[f"{row}-{col}"]]},
                timeout=10,
            )
            if resp.status_code != 200:
                errors.append(resp.text)

    threads = [threading.Thread(target=write, args=(r,)) for r in range(1, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sh.sheet1.get_all_values() == [[f"{r}-{c}" for c in range(5)] for r in range(1, 11)]


# --- errors ----------------------------------------------------------------------------


def test_unknown_spreadsheet_and_sheet(base: str) -> None:
    gc = client(base)
    with pytest.raises(gspread.exceptions.SpreadsheetNotFound):
        gc.open_by_key("does-not-exist")
    missing = requests.get(f"{base}/v4/spreadsheets/nope/values/A1", timeout=5)
    assert missing.status_code == 404
    assert missing.json()["error"]["status"] == "NOT_FOUND"
    sh = gc.open_by_key(create(base))
    with pytest.raises(gspread.exceptions.APIError) as err:
        sh.values_get("Nope!A1")
    assert err.value.code == 400
    assert err.value.error["message"] == "Unable to parse range: Nope!A1"


def test_bad_json_and_unknown_route(base: str) -> None:
    sid = create(base)
    bad = requests.post(
        f"{base}/v4/spreadsheets/{sid}/values:batchUpdate",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert requests.get(f"{base}/v4/elsewhere", timeout=5).status_code == 404


# --- persistence and mirror ------------------------------------------------------------


def test_state_survives_restart(tmp_path: Path) -> None:
    data = tmp_path / "state" / "sheets.json"
    with running(data) as url:
        sh = client(url).open_by_key(create(url, "Durable"))
        sh.add_worksheet("Jobs", rows=20, cols=3).update([["id"], ["=A1"]], "A1", raw=False)
        sid = sh.id
    assert json.loads(data.read_text())["spreadsheets"][sid]["title"] == "Durable"
    assert not list(data.parent.glob("*.tmp"))  # atomic writes leave no temp files behind
    with running(data) as url:
        sh = client(url).open_by_key(sid)
        ws = sh.worksheet("Jobs")
        assert ws.row_count == 20
        assert ws.get("A1:A2", value_render_option=ValueRenderOption.formula) == [["id"], ["=A1"]]


def test_csv_mirror(tmp_path: Path) -> None:
    mirror_csv = tmp_path / "mirror" / "jobs.csv"
    with running(None, Mirror(mirror_csv, "mirror-sheet", "Jobs")) as url:
        sheets = [{"properties": {"title": "Jobs"}}]
        sh = client(url).open_by_key(create(url, spreadsheetId="mirror-sheet", sheets=sheets))
        ws = sh.worksheet("Jobs")
        ws.update(
            [["id", "prompt", "note", "tmp"], ["1", '=A1&"x"', "'007, quoted"]],
            "A1",
            raw=False,
        )
        ws.batch_clear(["D1"])  # trailing empty column must disappear from the CSV
        with mirror_csv.open(newline="") as fh:
            rows = list(csv.reader(fh))
    assert rows == [["id", "prompt", "note"], ["1", '=A1&"x"', "007, quoted"]]


# --- quota and stats -------------------------------------------------------------------


def test_write_quota_returns_429_without_applying(tmp_path: Path) -> None:
    with running(quota=3) as url:
        sh = client(url).open_by_key(create(url))  # create does not count
        ws = sh.sheet1
        for i in range(3):
            ws.update([[f"v{i}"]], "A1")
        with pytest.raises(gspread.exceptions.APIError) as err:
            ws.update([["rejected"]], "A1")
        assert err.value.code == 429
        assert err.value.error["status"] == "RESOURCE_EXHAUSTED"
        assert "Write requests" in err.value.error["message"]
        assert ws.acell("A1").value == "v2"  # reads are not limited; the write did not land
        assert stats(url)["rejected_writes"] == 1
        requests.post(url + "/_stub/reset_stats", timeout=5)
        ws.update([["after reset"]], "A1")
        assert ws.acell("A1").value == "after reset"


def test_stats_count_reads_and_writes(base: str) -> None:
    ws = client(base).open_by_key(create(base)).sheet1
    assert requests.post(base + "/_stub/reset_stats", timeout=5).status_code == 200
    ws.update([["a"]], "A1")
    ws.batch_update([{"range": "B1", "values": [["b"]]}])
    ws.batch_update([{"range": "C1", "values": [["c"]]}])
    ws.append_rows([["d"]])
    ws.get_all_values()
    assert stats(base) == {
        "reads": 1,
        "writes": 4,
        "rejected_writes": 0,
        "write_calls": {"values.update": 1, "values.batchUpdate": 2, "values.append": 1},
    }
    requests.post(base + "/_stub/reset_stats", timeout=5)
    assert stats(base)["writes"] == 0
    assert requests.get(base + "/_stub/healthz", timeout=5).json() == {"ok": True}


# --- command line ----------------------------------------------------------------------


def test_cli_serves_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "cli.json"
    proc = subprocess.Popen(
        [*(sys.executable, "-m", "devstack.sheets_stub"), "--port", "0", "--data", str(data)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:"), line
        assert requests.get(url + "/_stub/healthz", timeout=5).status_code == 200
        create(url)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert data.exists()


def test_cli_requires_mirror_flags_together() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--mirror-csv", "x.csv"])
    assert exit_info.value.code == 2
