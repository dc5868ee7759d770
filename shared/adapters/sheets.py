"""Row writes on the Google Sheets API through gspread (imported here only).

Rows are found by ``scene_id`` and columns by header name, with one
``values:batchGet`` (header row plus the ``scene_id`` column, the header
cached) and one ``values:batchUpdate`` per call, however many rows it carries.
Each row's write covers its key cell too (left as it is) and asks for the
written values back: the answer says whose row the cells went into, as of the
write itself, so a row that moved between the read and the write is known
(``RowMoved``) instead of silently showing another scene's cells.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gspread
from gspread.exceptions import APIError

from shared.adapters.a1 import column_letter, literal_text, quote_title, unquote_title
from shared.contracts.sheet_row import (
    JOB_ID_COLUMN,
    KEY_COLUMN,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    Cell,
    Formula,
    Text,
    is_image_column,
)
from shared.domain.errors import (
    MissingWorksheet,
    PermanentError,
    PipelineError,
    RowMoved,
    TransientError,
)
from shared.services.ports import RowResult, RowUpdate, SheetLayout

# What a read of ranges asks for: each tab's id and name, and the cells' text.
GRID_FIELDS = "sheets(properties(sheetId,title),data(rowData(values(formattedValue))))"
# Rounds of looking for, and clearing, a job's cells that landed in a blank row.
STRAY_ROUNDS = 3


class BadRequest(PermanentError):
    """A 400: one malformed or unknown range spoils the whole call."""


class GspreadSheetWriter:
    """SheetWriter, RowsWriter and SheetLayouts on one gspread client."""

    def __init__(self, client: gspread.Client) -> None:
        self._http = client.http_client
        self._headers: dict[tuple[str, str], list[str]] = {}
        self._titles: dict[tuple[str, int], str] = {}  # (spreadsheet, tab id) -> name
        self._lock = threading.Lock()

    def write_row(
        self,
        spreadsheet_id: str,
        worksheet: str,
        scene_id: str,
        cells: Mapping[str, Cell],
        worksheet_id: int | None = None,
    ) -> str | None:
        update = RowUpdate(worksheet, scene_id, cells, worksheet_id)
        (result,) = self.write_rows(spreadsheet_id, [update])
        if result.error is not None:
            raise result.error
        return result.note

    def layout(self, spreadsheet_id: str, worksheet: str) -> SheetLayout:
        found = self._layouts(spreadsheet_id, [worksheet])[worksheet]
        if isinstance(found, Exception):
            raise found
        return found

    def write_rows(self, spreadsheet_id: str, updates: Sequence[RowUpdate]) -> list[RowResult]:
        titles, layouts = self._where(spreadsheet_id, updates)
        results: list[RowResult] = [RowResult() for _ in updates]
        placed: list[tuple[int, _Placed]] = []
        for i, update in enumerate(updates):
            title = titles[i]
            if isinstance(title, Exception):
                results[i] = RowResult(error=title)
                continue
            layout = layouts[title]
            if isinstance(layout, Exception):
                results[i] = RowResult(error=layout)
                continue
            try:
                row = _place(update, title, layout)
            except PermanentError as exc:
                results[i] = RowResult(error=exc)
                continue
            results[i] = RowResult(note=row.note)
            placed.append((i, row))
        if not placed:
            return results
        try:
            answers = self._update(spreadsheet_id, [row.data for _, row in placed])
        except BadRequest:
            if len(placed) == 1:
                raise
            # Find the row that spoils the batch: the others still get written.
            answers = []
            for i, row in placed:
                try:
                    answers.extend(self._update(spreadsheet_id, [row.data]))
                except PermanentError as exc:
                    results[i] = RowResult(error=exc)
                    answers.append({})
        except PermanentError as exc:
            for i, _ in placed:
                results[i] = RowResult(error=exc)
            return results
        for (i, row), answer in zip(placed, answers, strict=False):
            if results[i].error is None:
                results[i] = self._landed(spreadsheet_id, row, answer, results[i])
        return results

    def _where(
        self, spreadsheet_id: str, updates: Sequence[RowUpdate]
    ) -> tuple[list[str | Exception], dict[str, SheetLayout | Exception]]:
        """Each update's tab by its name now, and each tab's layout; read again once
        when a name read from the cache has meanwhile passed to another tab."""
        for fresh in (False, True):
            titles = [self._title_of(spreadsheet_id, u, fresh) for u in updates]
            named = sorted({t for t in titles if isinstance(t, str)})
            layouts = self._layouts(spreadsheet_id, named)
            moved = any(
                isinstance(t, str)
                and u.worksheet_id is not None
                and (
                    isinstance(layouts[t], MissingWorksheet)  # renamed or deleted since
                    or getattr(layouts[t], "sheet_id", u.worksheet_id) != u.worksheet_id
                )
                for u, t in zip(updates, titles, strict=True)
            )
            if not moved:
                break
        return titles, layouts

    def _landed(
        self, spreadsheet_id: str, row: _Placed, answer: dict[str, Any], result: RowResult
    ) -> RowResult:
        """Check in the write's own answer whose row the cells went into.

        Rows are found by a read before the write; a sort, an insert or a delete in
        between moves the scene elsewhere. The write asks back the row it wrote,
        key cell included, as it was at the moment of writing: a key that is not the
        scene's means the cells went to another row."""
        if "updatedData" not in answer:
            return result  # nothing to check against (the row is as it was found)
        key = _key_in(answer, row.key_at)
        if key == row.scene_id:
            return result
        self._forget(spreadsheet_id, row.worksheet)
        if key:
            return RowResult(error=RowMoved(row.scene_id, key))
        # A blank row (inserted) got them: no job owns it, so take them back now, each
        # clearing write checked the same way. Rows may move again before that write:
        # with a job_id cell, our cells are found by it wherever they are now.
        hit: list[str] = []
        with contextlib.suppress(PipelineError):
            if row.job_id:
                hit = self._clear_strays(spreadsheet_id, row)
            else:
                cleared = self._update(spreadsheet_id, [row.blank])
                key = _key_in(cleared[0], row.key_at) if cleared else ""
                hit = [key] if key else []
        return RowResult(error=RowMoved(row.scene_id, *dict.fromkeys(hit)))

    def _clear_strays(self, spreadsheet_id: str, row: _Placed) -> list[str]:
        """Clear the rows with no scene_id that show this row's job id (where its
        cells landed, wherever that row is now), each write checked like any other;
        the scenes of rows a clearing write hit instead."""
        sheet = quote_title(row.worksheet)
        key_col, job_col = column_letter(row.key_col + 1), column_letter(row.job_col + 1)
        hit: list[str] = []
        for _ in range(STRAY_ROUNDS):
            answer = self._call(
                self._http.values_batch_get,
                spreadsheet_id,
                [f"{sheet}!{key_col}:{key_col}", f"{sheet}!{job_col}:{job_col}"],
                {"majorDimension": "COLUMNS", "valueRenderOption": "FORMATTED_VALUE"},
            )
            keys, jobs = (_column(r) for r in [*answer.get("valueRanges", []), {}, {}][:2])
            strays = [
                n
                for n in range(2, len(jobs) + 1)
                if jobs[n - 1] == row.job_id and not (keys[n - 1] if n <= len(keys) else "")
            ]
            if not strays:
                break
            for n in strays:
                span = f"{sheet}!{column_letter(row.first + 1)}{n}:{column_letter(row.last + 1)}{n}"
                (cleared,) = self._update(spreadsheet_id, [{**row.blank, "range": span}]) or [{}]
                key = _key_in(cleared, row.key_at)
                if key:
                    hit.append(key)
        return hit

    def _forget(self, spreadsheet_id: str, worksheet: str) -> None:
        with self._lock:
            self._headers.pop((spreadsheet_id, worksheet), None)

    def _update(self, spreadsheet_id: str, data: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # USER_ENTERED so that our =IMAGE() formulas work; every text is
        # apostrophe-prefixed (literal_text) and so never becomes a formula. The
        # answer holds each written row as it was written (the key cell included).
        answer = self._call(
            self._http.values_batch_update,
            spreadsheet_id,
            {
                "valueInputOption": "USER_ENTERED",
                "data": data,
                "includeValuesInResponse": True,
                "responseValueRenderOption": "FORMATTED_VALUE",
            },
        )
        return list(answer.get("responses") or []) if isinstance(answer, dict) else []

    def _layouts(
        self, spreadsheet_id: str, worksheets: list[str]
    ) -> dict[str, SheetLayout | Exception]:
        """Each worksheet's layout, in one read when the headers are cached."""
        found: dict[str, SheetLayout | Exception] = {}
        pending = list(worksheets)
        for round_ in range(2):
            plan: list[tuple[str, list[str] | None]] = []
            ranges: list[str] = []
            for worksheet in pending:
                with self._lock:
                    cached = self._headers.get((spreadsheet_id, worksheet))
                keyed = cached if cached and KEY_COLUMN in cached else None
                ranges.append(f"{quote_title(worksheet)}!1:1")
                if keyed is not None:
                    col = column_letter(keyed.index(KEY_COLUMN) + 1)
                    ranges.append(f"{quote_title(worksheet)}!{col}:{col}")
                plan.append((worksheet, keyed))
            try:
                value_ranges, tabs = self._read(spreadsheet_id, ranges)
            except BadRequest as exc:
                if len(pending) > 1:
                    # One unknown worksheet fails the whole read: ask for each alone.
                    for worksheet in pending:
                        found.update(self._layouts(spreadsheet_id, [worksheet]))
                    return found
                found[pending[0]] = MissingWorksheet(
                    f"no worksheet {pending[0]!r} in the spreadsheet ({exc})"
                )
                return found
            retry: list[str] = []
            for worksheet, keyed in plan:
                header_rows = next(value_ranges, [])
                header = [str(h).strip() for h in (header_rows[0] if header_rows else [])]
                keys_rows = next(value_ranges, []) if keyed is not None else None
                tab = tabs.get(worksheet.casefold())
                with self._lock:
                    self._headers[(spreadsheet_id, worksheet)] = header
                if keys_rows is not None and header == keyed:
                    keys = [str(r[0]) if r else "" for r in keys_rows]
                    found[worksheet] = SheetLayout(header, keys, tab)
                elif KEY_COLUMN not in header:
                    found[worksheet] = SheetLayout(header, [], tab)
                elif round_ == 0:
                    retry.append(worksheet)  # header new or moved: read its keys now
                else:
                    found[worksheet] = TransientError(
                        f"the header of worksheet {worksheet!r} keeps changing"
                    )
            pending = retry
            if not pending:
                break
        return found

    def _read(
        self, spreadsheet_id: str, ranges: list[str]
    ) -> tuple[Iterator[list[list[str]]], dict[str, int]]:
        """The ranges' formatted values (rows of cells) in the order asked, and the
        tabs they are on by name (casefolded) -> sheet id, in one read: the id says
        which tab a name meant at the moment it was read."""
        answer = self._call(
            self._http.fetch_sheet_metadata,
            spreadsheet_id,
            {"ranges": ranges, "includeGridData": "true", "fields": GRID_FIELDS},
        )
        tabs: dict[str, int] = {}
        grids: dict[str, Iterator[dict[str, Any]]] = {}
        for sheet in answer.get("sheets", []):
            props = sheet.get("properties", {})
            title = str(props.get("title", "")).casefold()
            tabs[title] = int(props.get("sheetId", 0))
            grids[title] = iter(sheet.get("data", []))
            with self._lock:
                self._titles[(spreadsheet_id, tabs[title])] = str(props.get("title", ""))
        values = []
        for text in ranges:
            title = unquote_title(text.rsplit("!", 1)[0]).casefold()
            grid = next(grids.get(title, iter([])), {})
            values.append(
                [
                    [str(cell.get("formattedValue", "")) for cell in row.get("values", [])]
                    for row in grid.get("rowData", [])
                ]
            )
        return iter(values), tabs

    def _titles_now(self, spreadsheet_id: str) -> None:
        """Read which tab has which name now (a tab renamed since)."""
        answer = self._call(
            self._http.fetch_sheet_metadata,
            spreadsheet_id,
            {"fields": "sheets.properties(sheetId,title)"},
        )
        with self._lock:
            for key in [k for k in self._titles if k[0] == spreadsheet_id]:
                del self._titles[key]  # a tab deleted since has no name any more
            for sheet in answer.get("sheets", []):
                props = sheet.get("properties", {})
                self._titles[(spreadsheet_id, int(props.get("sheetId", 0)))] = str(
                    props.get("title", "")
                )

    def _title_of(self, spreadsheet_id: str, update: RowUpdate, fresh: bool) -> str | Exception:
        """The name the update's tab has now: the batch named a tab, and renaming it
        (or giving its old name to another tab) does not move the batch's rows."""
        if update.worksheet_id is None:
            return update.worksheet
        key = (spreadsheet_id, update.worksheet_id)
        with self._lock:
            title = None if fresh else self._titles.get(key)
        if title is None:
            self._titles_now(spreadsheet_id)
            with self._lock:
                title = self._titles.get(key)
        if title is None:
            return MissingWorksheet(
                f"the worksheet the batch was sent to (then named {update.worksheet!r}) was deleted"
            )
        return title

    @staticmethod
    def _call(method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except APIError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            message = f"Sheets API {code}: {exc}"
            if code in (408, 429) or code >= 500:
                raise TransientError(message) from exc
            if code in (401, 403, 404):
                raise PermanentError(
                    f"spreadsheet not found or not shared with the service account ({message})"
                ) from exc
            if code == 400:
                raise BadRequest(message) from exc
            raise PermanentError(message) from exc
        except (OSError, TimeoutError) as exc:
            raise TransientError(f"Sheets API unreachable: {exc}") from exc


@dataclass(frozen=True)
class _Placed:
    """One row update as written: one range over the row's cells, key cell included."""

    worksheet: str
    scene_id: str
    data: dict[str, Any]  # the value range written
    blank: dict[str, Any]  # the same range clearing what was written
    key_at: int  # the key cell's place in the range
    note: str | None
    job_id: str  # what the row's job_id cell shows once written ("": no such cell)
    job_at: int  # the job_id cell's place in the range
    first: int  # the range's first and last columns (from 0)
    last: int

    @property
    def key_col(self) -> int:
        return self.first + self.key_at

    @property
    def job_col(self) -> int:
        return self.first + self.job_at


def _place(update: RowUpdate, worksheet: str, layout: SheetLayout) -> _Placed:
    """The value range of one row update on ``worksheet`` (its tab's name now):
    every cell it sets, each image cell it does not fill cleared, and the key cell
    (left as it is) so that the write's answer says whose row it went into."""
    header = layout.header
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise PermanentError(f"worksheet {worksheet!r} has no column {', '.join(missing)}")
    rows = layout.rows_of(update.scene_id)
    if not rows:
        raise PermanentError(f"no row with scene_id {update.scene_id!r} in worksheet {worksheet!r}")
    row, notes = rows[0], []
    if len(rows) > 1:
        notes.append(f"scene_id {update.scene_id!r} is in rows {rows}; only row {row} is updated")
    values: dict[int, str] = {}
    absent = []
    for name, cell in update.cells.items():
        if name not in header:
            if name not in OPTIONAL_COLUMNS:
                absent.append(name)
            continue
        values[header.index(name)] = _value(cell)
    for col, name in enumerate(header):
        if is_image_column(name) and name not in update.cells:
            values[col] = ""
    if absent:
        notes.append(f"worksheet {worksheet!r} has no column {', '.join(absent)}")
    key = header.index(KEY_COLUMN)
    job = update.cells.get(JOB_ID_COLUMN)
    job_id = job.value if isinstance(job, Text) and JOB_ID_COLUMN in header else ""
    first, last = min([key, *values]), max([key, *values])
    cols = f"{column_letter(first + 1)}{row}:{column_letter(last + 1)}{row}"
    span = f"{quote_title(worksheet)}!{cols}"
    line: list[str | None] = [values.get(col) for col in range(first, last + 1)]
    blank = [None if value is None else "" for value in line]
    return _Placed(
        worksheet=worksheet,
        scene_id=update.scene_id,
        data={"range": span, "majorDimension": "ROWS", "values": [line]},
        blank={"range": span, "majorDimension": "ROWS", "values": [blank]},
        key_at=key - first,
        note="; ".join(notes) or None,
        job_id=job_id,
        job_at=header.index(JOB_ID_COLUMN) - first if job_id else 0,
        first=first,
        last=last,
    )


def _column(value_range: dict[str, Any]) -> list[str]:
    """One column's formatted values, from a COLUMNS-major value range."""
    values = value_range.get("values") or [[]]
    return [str(v).strip() for v in (values[0] if values else [])]


def _key_in(answer: dict[str, Any], key_at: int) -> str:
    """The key cell of the row a write went into, from the write's answer."""
    values = (answer.get("updatedData") or {}).get("values") or [[]]
    line = values[0] if values else []
    return str(line[key_at]).strip() if key_at < len(line) else ""


def _value(cell: Cell) -> str:
    if isinstance(cell, Formula):
        return cell.value
    # An empty string clears the cell; anything else stays text whatever it starts with.
    return literal_text(cell.value) if cell.value else ""
