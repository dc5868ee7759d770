"""Row writes on the Google Sheets API through gspread (imported here only).

Rows are found by ``scene_id`` and columns by header name, with one
``values:batchGet`` (header row plus the ``scene_id`` column, the header
cached) and one ``values:batchUpdate`` per call, however many rows it carries.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import gspread
from gspread.exceptions import APIError

from shared.adapters.a1 import column_letter, literal_text, quote_title
from shared.contracts.sheet_row import (
    KEY_COLUMN,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    Cell,
    Formula,
)
from shared.domain.errors import MissingWorksheet, PermanentError, TransientError
from shared.services.ports import RowResult, RowUpdate, SheetLayout


class BadRequest(PermanentError):
    """A 400: one malformed or unknown range spoils the whole call."""


class GspreadSheetWriter:
    """SheetWriter, RowsWriter and SheetLayouts on one gspread client."""

    def __init__(self, client: gspread.Client) -> None:
        self._http = client.http_client
        self._headers: dict[tuple[str, str], list[str]] = {}
        self._lock = threading.Lock()

    def write_row(
        self, spreadsheet_id: str, worksheet: str, scene_id: str, cells: Mapping[str, Cell]
    ) -> str | None:
        (result,) = self.write_rows(spreadsheet_id, [RowUpdate(worksheet, scene_id, cells)])
        if result.error is not None:
            raise result.error
        return result.note

    def layout(self, spreadsheet_id: str, worksheet: str) -> SheetLayout:
        found = self._layouts(spreadsheet_id, [worksheet])[worksheet]
        if isinstance(found, Exception):
            raise found
        return found

    def write_rows(self, spreadsheet_id: str, updates: Sequence[RowUpdate]) -> list[RowResult]:
        layouts = self._layouts(spreadsheet_id, sorted({u.worksheet for u in updates}))
        results: list[RowResult] = [RowResult() for _ in updates]
        placed: list[tuple[int, list[dict[str, Any]]]] = []
        for i, update in enumerate(updates):
            layout = layouts[update.worksheet]
            if isinstance(layout, Exception):
                results[i] = RowResult(error=layout)
                continue
            try:
                data, note = _row_data(update, layout)
            except PermanentError as exc:
                results[i] = RowResult(error=exc)
                continue
            results[i] = RowResult(note=note)
            placed.append((i, data))
        if not placed:
            return results
        try:
            self._update(spreadsheet_id, [entry for _, data in placed for entry in data])
        except BadRequest:
            if len(placed) == 1:
                raise
            # Find the row that spoils the batch: the others still get written.
            for i, data in placed:
                try:
                    self._update(spreadsheet_id, data)
                except PermanentError as exc:
                    results[i] = RowResult(error=exc)
        except PermanentError as exc:
            for i, _ in placed:
                results[i] = RowResult(error=exc)
        return results

    def _update(self, spreadsheet_id: str, data: list[dict[str, Any]]) -> None:
        # USER_ENTERED so that our =IMAGE() formulas work; every text is
        # apostrophe-prefixed (literal_text) and so never becomes a formula.
        self._call(
            self._http.values_batch_update,
            spreadsheet_id,
            {"valueInputOption": "USER_ENTERED", "data": data},
        )

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
                answer = self._call(
                    self._http.values_batch_get,
                    spreadsheet_id,
                    ranges,
                    {"majorDimension": "ROWS", "valueRenderOption": "FORMATTED_VALUE"},
                )
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
            value_ranges: Iterator[dict[str, Any]] = iter(answer.get("valueRanges", []))
            retry: list[str] = []
            for worksheet, keyed in plan:
                header_rows = next(value_ranges, {}).get("values", [])
                header = [str(h).strip() for h in (header_rows[0] if header_rows else [])]
                keys_range: dict[str, Any] | None = (
                    next(value_ranges, {}) if keyed is not None else None
                )
                with self._lock:
                    self._headers[(spreadsheet_id, worksheet)] = header
                if keys_range is not None and header == keyed:
                    keys = [str(r[0]) if r else "" for r in keys_range.get("values", [])]
                    found[worksheet] = SheetLayout(header, keys)
                elif KEY_COLUMN not in header:
                    found[worksheet] = SheetLayout(header, [])
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


def _row_data(update: RowUpdate, layout: SheetLayout) -> tuple[list[dict[str, Any]], str | None]:
    """The value ranges of one row update, and a note about cells left out."""
    header, worksheet = layout.header, update.worksheet
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise PermanentError(f"worksheet {worksheet!r} has no column {', '.join(missing)}")
    rows = layout.rows_of(update.scene_id)
    if not rows:
        raise PermanentError(f"no row with scene_id {update.scene_id!r} in worksheet {worksheet!r}")
    row, notes = rows[0], []
    if len(rows) > 1:
        notes.append(f"scene_id {update.scene_id!r} is in rows {rows}; only row {row} is updated")
    sheet = quote_title(worksheet)
    data, absent = [], []
    for name, cell in update.cells.items():
        if name not in header:
            if name not in OPTIONAL_COLUMNS:
                absent.append(name)
            continue
        col = column_letter(header.index(name) + 1)
        data.append({"range": f"{sheet}!{col}{row}", "values": [[_value(cell)]]})
    if absent:
        notes.append(f"worksheet {worksheet!r} has no column {', '.join(absent)}")
    return data, "; ".join(notes) or None


def _value(cell: Cell) -> str:
    if isinstance(cell, Formula):
        return cell.value
    # An empty string clears the cell; anything else stays text whatever it starts with.
    return literal_text(cell.value) if cell.value else ""
