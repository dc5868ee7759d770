"""Local protocol stub of the Google Sheets API v4 for the dev stack and tests.

Google ships no Sheets emulator, so this speaks just enough of the REST protocol for
the unmodified ``gspread`` client: spreadsheet metadata (with the cells of given
ranges: ``includeGridData``), structural ``batchUpdate`` (addSheet, deleteSheet,
duplicateSheet, updateSheetProperties, updateSpreadsheetProperties, appendDimension,
insertDimension, deleteDimension, sortRange) and the ``values`` family (get, batchGet,
update, batchUpdate, append, clear, batchClear).

Deliberate limits: formulas are stored but never evaluated (their FORMATTED/UNFORMATTED
value is ""); USER_ENTERED parses plain numbers and TRUE/FALSE only (no dates,
percentages or currency); no named ranges, formatting, notes or Drive API.
Stub extensions: ``spreadsheetId`` in a create body picks the id, and ``/_stub/``
control endpoints expose request statistics and the value writes received
(``GET /_stub/writes``), and change the write quota (``POST /_stub/quota``) or
deny a spreadsheet as if it were not shared (``POST /_stub/access``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import io
import json
import logging
import math
import os
import random
import re
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("sheets_stub")

Scalar = str | int | float | bool
# A stored cell is ("f", formula_text) or ("v", literal value).
Cell = tuple[str, Scalar]
Json = dict[str, Any]

_STATUS = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
}
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_PART = re.compile(r"([A-Za-z]{0,3})(\d{0,7})")
_PLAIN_TITLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CELL_LIKE = re.compile(r"[A-Za-z]{1,3}\d+")
_QUOTA_MESSAGE = (
    "Quota exceeded for quota metric 'Write requests' and limit 'Write requests per minute "
    "per user' of service 'sheets.googleapis.com' for consumer 'project_number:0'."
)
READ_OPS = frozenset({"spreadsheets.get", "values.get", "values.batchGet"})


class ApiError(Exception):
    """An error answered in Google's JSON error format."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def payload(self) -> Json:
        status = _STATUS.get(self.code, "UNKNOWN")
        return {"error": {"code": self.code, "message": self.message, "status": status}}


@dataclass
class Mirror:
    """Which worksheet to mirror into a CSV file after every change."""

    csv_path: Path
    spreadsheet_id: str
    worksheet: str


@dataclass
class Sheet:
    sheet_id: int
    title: str
    row_count: int = 1000
    column_count: int = 26
    cells: dict[tuple[int, int], Cell] = field(default_factory=dict)

    def to_json(self) -> Json:
        cells = [[r, c, k, v] for (r, c), (k, v) in sorted(self.cells.items())]
        return {
            "sheetId": self.sheet_id,
            "title": self.title,
            "rowCount": self.row_count,
            "columnCount": self.column_count,
            "cells": cells,
        }

    @classmethod
    def from_json(cls, d: Json) -> Sheet:
        cells = {(int(r), int(c)): (str(k), v) for r, c, k, v in d["cells"]}
        return cls(d["sheetId"], d["title"], d["rowCount"], d["columnCount"], cells)


@dataclass
class Book:
    spreadsheet_id: str
    title: str
    sheets: list[Sheet] = field(default_factory=list)
    locale: str = "en_US"
    time_zone: str = "Etc/GMT"

    def sheet_by_title(self, title: str) -> Sheet | None:
        # Sheets treats sheet names case-insensitively.
        return next((s for s in self.sheets if s.title.lower() == title.lower()), None)

    def sheet_by_id(self, sheet_id: Any) -> Sheet:
        for s in self.sheets:
            if s.sheet_id == sheet_id:
                return s
        raise ApiError(400, f"No grid with id: {sheet_id}")

    def metadata(self) -> Json:
        sheets = [
            {
                "properties": {
                    "sheetId": s.sheet_id,
                    "title": s.title,
                    "index": i,
                    "sheetType": "GRID",
                    "gridProperties": {"rowCount": s.row_count, "columnCount": s.column_count},
                }
            }
            for i, s in enumerate(self.sheets)
        ]
        return {
            "spreadsheetId": self.spreadsheet_id,
            "properties": {
                "title": self.title,
                "locale": self.locale,
                "autoRecalc": "ON_CHANGE",
                "timeZone": self.time_zone,
            },
            "sheets": sheets,
            "spreadsheetUrl": f"https://docs.google.com/spreadsheets/d/{self.spreadsheet_id}/edit",
        }

    def to_json(self) -> Json:
        return {
            "title": self.title,
            "locale": self.locale,
            "timeZone": self.time_zone,
            "sheets": [s.to_json() for s in self.sheets],
        }

    @classmethod
    def from_json(cls, sid: str, d: Json) -> Book:
        return cls(
            sid,
            d["title"],
            [Sheet.from_json(s) for s in d["sheets"]],
            d.get("locale", "en_US"),
            d.get("timeZone", "Etc/GMT"),
        )


# --- A1 notation ---------------------------------------------------------------------


@dataclass(frozen=True)
class A1Range:
    """A parsed A1 range: 0-based start, exclusive end, ``None`` end = to the grid edge."""

    title: str | None
    r1: int = 0
    c1: int = 0
    r2: int | None = None
    c2: int | None = None
    single: bool = False  # one cell such as "B2": writes may extend from it


def col_letters(index: int) -> str:
    letters, n = "", index + 1
    while n:
        n, rem = divmod(n - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def _col_index(letters: str) -> int:
    n = 0
    for ch in letters.upper():
        n = n * 26 + ord(ch) - 64
    return n - 1


def _quote_title(title: str) -> str:
    if _PLAIN_TITLE.fullmatch(title) and not _CELL_LIKE.fullmatch(title):
        return title
    return "'" + title.replace("'", "''") + "'"


def format_range(title: str, r1: int, c1: int, r2: int, c2: int) -> str:
    """Render a resolved range the way the API echoes it, e.g. ``'My Sheet'!A1:B2``."""
    start = f"{col_letters(c1)}{r1 + 1}"
    cells = start if (r2 - r1, c2 - c1) == (1, 1) else f"{start}:{col_letters(c2 - 1)}{r2}"
    return f"{_quote_title(title)}!{cells}"


def _split_title(text: str) -> tuple[str | None, str | None]:
    """Split ``'Sheet'!A1`` into title and cell part; raise ValueError if malformed."""
    if text.startswith("'"):
        i, chars = 1, []
        while i < len(text):
            if text[i] == "'":
                if text[i + 1 : i + 2] == "'":  # '' escapes a quote inside the title
                    chars.append("'")
                    i += 2
                    continue
                break
            chars.append(text[i])
            i += 1
        else:
            raise ValueError(text)
        rest = text[i + 1 :]
        if rest and not rest.startswith("!"):
            raise ValueError(text)
        return "".join(chars), (rest[1:] or None) if rest else None
    if "!" in text:
        title, _, cells = text.rpartition("!")
        return title, cells
    return None, text


def _parse_cells(cells: str) -> tuple[int, int, int | None, int | None, bool]:
    parts = [_PART.fullmatch(p) for p in cells.split(":")]
    if len(parts) > 2 or any(m is None or not m.group(0) for m in parts):
        raise ValueError(cells)
    (sc, sr), *rest = [cast(re.Match[str], m).groups() for m in parts]
    if any(r and int(r) == 0 for r in (sr, *(e[1] for e in rest))):
        raise ValueError(cells)
    if not rest:
        if not (sc and sr):
            raise ValueError(cells)
        r, c = int(sr) - 1, _col_index(sc)
        return r, c, r + 1, c + 1, True
    ec, er = rest[0]
    # Allowed: A:B, 1:2, A1:B2, A2:B, A1:2, A:B2.
    if (bool(sc), bool(sr), bool(ec), bool(er)) not in {
        (True, False, True, False),
        (False, True, False, True),
        (True, True, True, True),
        (True, True, True, False),
        (True, True, False, True),
        (True, False, True, True),
    }:
        raise ValueError(cells)
    r1, c1 = (int(sr) - 1 if sr else 0), (_col_index(sc) if sc else 0)
    r2, c2 = (int(er) if er else None), (_col_index(ec) + 1 if ec else None)
    if r2 is not None and r2 <= r1:  # reversed corners, e.g. B2:A1
        r1, r2 = r2 - 1, r1 + 1
    if c2 is not None and c2 <= c1:
        c1, c2 = c2 - 1, c1 + 1
    return r1, c1, r2, c2, False


def parse_a1(text: str) -> A1Range:
    """Parse A1 notation; a bare name that is not a cell range is a whole-sheet title."""
    title, cells = _split_title(text)
    if cells is None:
        return A1Range(title)
    try:
        return A1Range(title, *_parse_cells(cells))
    except ValueError:
        if title is None:
            return A1Range(text)
        raise


@dataclass
class Span:
    """An A1 range resolved against a concrete sheet."""

    sheet: Sheet
    a1: A1Range
    text: str

    @property
    def r2(self) -> int:
        return self.sheet.row_count if self.a1.r2 is None else self.a1.r2

    @property
    def c2(self) -> int:
        return self.sheet.column_count if self.a1.c2 is None else self.a1.c2

    def check_grid(self) -> None:
        s, a = self.sheet, self.a1
        if (
            a.r1 >= s.row_count
            or a.c1 >= s.column_count
            or self.r2 > s.row_count
            or self.c2 > s.column_count
        ):
            raise self.grid_error()

    def grid_error(self) -> ApiError:
        return ApiError(
            400,
            f"Range ({self.text}) exceeds grid limits. "
            f"Max rows: {self.sheet.row_count}, max columns: {self.sheet.column_count}",
        )

    def label(self) -> str:
        return format_range(self.sheet.title, self.a1.r1, self.a1.c1, self.r2, self.c2)


def resolve(book: Book, text: str) -> Span:
    """Resolve A1 text against a spreadsheet; unknown sheets give Google's 400."""
    try:
        a1 = parse_a1(text)
    except ValueError:
        a1 = None
    if a1 is not None and a1.title is None:
        named = book.sheet_by_title(text)  # a sheet called e.g. "A1" wins over the cell
        return Span(named, A1Range(named.title), text) if named else Span(book.sheets[0], a1, text)
    sheet = book.sheet_by_title(a1.title) if a1 and a1.title is not None else None
    if a1 is None or sheet is None:
        raise ApiError(400, f"Unable to parse range: {text}")
    return Span(sheet, a1, text)


# --- cell values ---------------------------------------------------------------------


def parse_input(value: Any, option: str) -> Cell | None:
    """Turn one input value into a stored cell; ``None`` means clear the cell."""
    if isinstance(value, bool):
        return ("v", value)
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ApiError(400, f"Invalid value: {value}")
        return ("v", int(value) if float(value).is_integer() and abs(value) < 2**53 else value)
    if not isinstance(value, str):
        raise ApiError(400, f"Invalid value at 'data.values': {json.dumps(value)}")
    if value == "":
        return None
    if option == "RAW":
        return ("v", value)
    if value.startswith("="):
        return ("f", value)
    if value.startswith("'"):
        return ("v", value[1:])
    if value.upper() in ("TRUE", "FALSE"):
        return ("v", value.upper() == "TRUE")
    if _NUMBER.fullmatch(value.strip()):
        return parse_input(float(value), option)
    return ("v", value)


def formatted(value: Scalar) -> str:
    """Sheets' default "General" number format, approximately."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(value, ".15g").upper()
    return value


def render(cell: Cell, option: str) -> Scalar:
    kind, value = cell
    if kind == "f":
        return value if option == "FORMULA" else ""  # formulas are never evaluated
    return formatted(value) if option == "FORMATTED_VALUE" else value


def read_block(span: Span, option: str, major: str = "ROWS") -> list[list[Scalar]]:
    """Rendered values of a range, trailing empty cells and rows omitted like the API."""
    a = span.a1
    out: dict[int, dict[int, Scalar]] = {}
    for (r, c), cell in span.sheet.cells.items():
        if a.r1 <= r < span.r2 and a.c1 <= c < span.c2:
            value = render(cell, option)
            if value != "":
                i, j = (r - a.r1, c - a.c1) if major == "ROWS" else (c - a.c1, r - a.r1)
                out.setdefault(i, {})[j] = value
    if not out:
        return []
    return [
        [row.get(j, "") for j in range(max(row) + 1)] if (row := out.get(i)) else []
        for i in range(max(out) + 1)
    ]


def _grid_data(span: Span) -> Json:
    """One range as the API's GridData: a row per sheet row up to the last one with
    a value, a cell per column up to its last value (``{}`` for an empty one)."""
    rows = read_block(span, "FORMATTED_VALUE")
    return {
        "startRow": span.a1.r1,
        "startColumn": span.a1.c1,
        "rowData": [
            {"values": [{"formattedValue": v} if v != "" else {} for v in row]} if row else {}
            for row in rows
        ],
    }


def _matrix(values: Any, major: Any) -> list[list[Any]]:
    if not isinstance(values, list) or not all(isinstance(r, list) for r in values):
        raise ApiError(400, "Invalid value at 'data.values': expected a list of lists")
    if major == "COLUMNS":
        height = max((len(c) for c in values), default=0)
        return [[c[i] if i < len(c) else None for c in values] for i in range(height)]
    return values


def _plan_write(span: Span, values: list[list[Any]], option: str) -> dict[str, Any]:
    """Validate a write against the range and grid; return what ``_apply`` needs."""
    span.check_grid()
    a = span.a1
    rows, cols = len(values), max((len(r) for r in values), default=0)
    if not a.single:
        if rows and a.r1 + rows > span.r2 and a.r2 is not None:
            raise ApiError(
                400,
                f"Requested writing within range [{span.text}], but tried "
                f"writing to row [{a.r1 + rows}]",
            )
        if cols and a.c1 + cols > span.c2 and a.c2 is not None:
            raise ApiError(
                400,
                f"Requested writing within range [{span.text}], but tried "
                f"writing to column [{col_letters(a.c1 + cols - 1)}]",
            )
    if a.r1 + rows > span.sheet.row_count or a.c1 + cols > span.sheet.column_count:
        raise span.grid_error()
    cells = [
        (a.r1 + i, a.c1 + j, parse_input(v, option))
        for i, row in enumerate(values)
        for j, v in enumerate(row)
        if v is not None
    ]
    return {"span": span, "rows": rows, "cols": cols, "cells": cells}


def _apply(plan: dict[str, Any], sid: str) -> Json:
    span: Span = plan["span"]
    for r, c, cell in plan["cells"]:
        if cell is None:
            span.sheet.cells.pop((r, c), None)
        else:
            span.sheet.cells[(r, c)] = cell
    a, rows, cols = span.a1, plan["rows"], plan["cols"]
    updated = (
        format_range(span.sheet.title, a.r1, a.c1, a.r1 + rows, a.c1 + cols)
        if rows and cols
        else span.label()
    )
    return {
        "spreadsheetId": sid,
        "updatedRange": updated,
        "updatedRows": len({r for r, _, _ in plan["cells"]}),
        "updatedColumns": len({c for _, c, _ in plan["cells"]}),
        "updatedCells": len(plan["cells"]),
    }


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, f"Invalid {name}: {value!r}")
    return value


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --- the store -----------------------------------------------------------------------


class Store:
    """All spreadsheets plus stats; every public method holds the one lock."""

    def __init__(
        self, data_file: Path | None, mirror: Mirror | None, write_quota_per_minute: int | None
    ) -> None:
        self.lock = threading.Lock()
        self.data_file, self.mirror, self.quota = data_file, mirror, write_quota_per_minute
        self.books: dict[str, Book] = {}
        self.window: deque[float] = deque()
        self.reads = self.writes = self.rejected = 0
        self.write_calls: dict[str, int] = {}
        # Control endpoints: the value writes as received, and spreadsheets
        # "not shared" with the caller (403, as for an unshared sheet).
        self.write_log: deque[Json] = deque(maxlen=10_000)
        self.denied: set[str] = set()
        if data_file is not None and data_file.exists():
            doc = json.loads(data_file.read_text(encoding="utf-8"))
            self.books = {k: Book.from_json(k, v) for k, v in doc["spreadsheets"].items()}
        self._write_mirror()

    # stats and quota
    def admit(self, op: str) -> None:
        """Count a request; reject a write beyond the sliding 60 s quota."""
        with self.lock:
            if op in READ_OPS:
                self.reads += 1
                return
            if op == "spreadsheets.create":
                return
            now = time.monotonic()
            while self.window and now - self.window[0] >= 60.0:
                self.window.popleft()
            if self.quota is not None and len(self.window) >= self.quota:
                self.rejected += 1
                raise ApiError(429, _QUOTA_MESSAGE)
            self.window.append(now)
            self.writes += 1
            self.write_calls[op] = self.write_calls.get(op, 0) + 1

    def stats(self) -> Json:
        with self.lock:
            return {
                "reads": self.reads,
                "writes": self.writes,
                "rejected_writes": self.rejected,
                "write_calls": dict(self.write_calls),
            }

    def control(self, what: str, body: Json) -> Json:
        """``quota``: {"write_quota_per_minute": n or null}; ``access``:
        {"spreadsheetId": id, "allowed": bool} (False answers 403 for it)."""
        with self.lock:
            if what == "quota":
                quota = body.get("write_quota_per_minute")
                self.quota = None if quota is None else _positive_int(quota, "quota")
                self.window.clear()
                return {"write_quota_per_minute": self.quota}
            sid = str(body.get("spreadsheetId", ""))
            if body.get("allowed", True):
                self.denied.discard(sid)
            else:
                self.denied.add(sid)
            return {"denied": sorted(self.denied)}

    def reset_stats(self) -> None:
        """Zero the counters and the quota window so a test starts from a clean slate."""
        with self.lock:
            self.reads = self.writes = self.rejected = 0
            self.write_calls.clear()
            self.write_log.clear()
            self.window.clear()

    # persistence
    def _commit(self) -> None:
        if self.data_file is not None:
            doc = {"spreadsheets": {k: b.to_json() for k, b in self.books.items()}}
            _atomic_write(self.data_file, json.dumps(doc, indent=1))
        self._write_mirror()

    def _write_mirror(self) -> None:
        m = self.mirror
        book = self.books.get(m.spreadsheet_id) if m else None
        sheet = book.sheet_by_title(m.worksheet) if m and book else None
        if m is None or sheet is None:
            return
        rows = read_block(Span(sheet, A1Range(sheet.title), sheet.title), "FORMULA")
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(
            [[v if isinstance(v, str) else formatted(v) for v in row] for row in rows]
        )
        _atomic_write(m.csv_path, buf.getvalue())

    def _book(self, sid: str) -> Book:
        if sid in self.denied:
            raise ApiError(403, "The caller does not have permission")
        book = self.books.get(sid)
        if book is None:
            raise ApiError(404, "Requested entity was not found.")
        return book

    # spreadsheets
    def create(self, body: Json) -> Json:
        with self.lock:
            sid = body.get("spreadsheetId") or secrets.token_urlsafe(33)
            if sid in self.books:
                raise ApiError(409, f"Spreadsheet {sid} already exists.")
            props = body.get("properties") or {}
            book = Book(sid, props.get("title") or "Untitled spreadsheet")
            book.locale = props.get("locale", book.locale)
            book.time_zone = props.get("timeZone", book.time_zone)
            for s in body.get("sheets") or [{}]:
                _add_sheet(book, s.get("properties") or {})
            self.books[sid] = book
            self._commit()
            return book.metadata()

    def metadata(self, sid: str, ranges: Sequence[str] = (), grid: bool = False) -> Json:
        """The spreadsheet's properties; with ``ranges``, only the sheets they are on,
        and with ``grid`` each sheet's cells in those ranges (formatted values), one
        GridData per range in the order asked, as the API answers."""
        with self.lock:
            book = self._book(sid)
            answer = book.metadata()
            if not ranges:
                return answer
            spans = [resolve(book, text) for text in ranges]
            wanted = {span.sheet.sheet_id for span in spans}
            answer["sheets"] = [s for s in answer["sheets"] if s["properties"]["sheetId"] in wanted]
            if grid:
                for entry in answer["sheets"]:
                    entry["data"] = [
                        _grid_data(span)
                        for span in spans
                        if span.sheet.sheet_id == entry["properties"]["sheetId"]
                    ]
            return answer

    def batch_update(self, sid: str, body: Json) -> Json:
        with self.lock:
            # Work on a copy so a failing request leaves nothing half-applied, like the API.
            book = copy.deepcopy(self._book(sid))
            requests = body.get("requests") or []
            if not isinstance(requests, list):
                raise ApiError(400, "Invalid value at 'requests': expected a list")
            replies = [_structural(book, i, req) for i, req in enumerate(requests)]
            self.books[sid] = book
            self._commit()
            return {"spreadsheetId": sid, "replies": replies}

    # values
    def values_get(self, sid: str, ranges: Sequence[str], params: dict[str, str]) -> list[Json]:
        option = params.get("valueRenderOption") or "FORMATTED_VALUE"
        major = params.get("majorDimension") or "ROWS"
        with self.lock:
            book, out = self._book(sid), []
            for text in ranges:
                span = resolve(book, text)
                span.check_grid()
                vr: Json = {"range": span.label(), "majorDimension": major}
                if values := read_block(span, option, major):
                    vr["values"] = values
                out.append(vr)
            return out

    def values_update(self, sid: str, data: list[Json], option: Any, params: Json) -> Json:
        if option not in ("RAW", "USER_ENTERED"):
            raise ApiError(400, "Invalid valueInputOption: INPUT_VALUE_OPTION_UNSPECIFIED")
        with self.lock:
            book = self._book(sid)
            plans = [
                _plan_write(
                    resolve(book, str(d.get("range"))),
                    _matrix(d.get("values", []), d.get("majorDimension")),
                    option,
                )
                for d in data
            ]
            responses = [_apply(p, sid) for p in plans]
            self.write_log.append(
                {"spreadsheetId": sid, "valueInputOption": option, "data": copy.deepcopy(data)}
            )
            if str(params.get("includeValuesInResponse")).lower() == "true":
                render_opt = params.get("responseValueRenderOption") or "FORMATTED_VALUE"
                for resp in responses:
                    span = resolve(book, resp["updatedRange"])
                    resp["updatedData"] = {
                        "range": resp["updatedRange"],
                        "majorDimension": "ROWS",
                        "values": read_block(span, render_opt),
                    }
            self._commit()
        return {
            "spreadsheetId": sid,
            "totalUpdatedRows": sum(r["updatedRows"] for r in responses),
            "totalUpdatedColumns": sum(r["updatedColumns"] for r in responses),
            "totalUpdatedCells": sum(r["updatedCells"] for r in responses),
            "totalUpdatedSheets": len({p["span"].sheet.sheet_id for p in plans}),
            "responses": responses,
        }

    def values_append(self, sid: str, text: str, params: dict[str, str], body: Json) -> Json:
        option = params.get("valueInputOption")
        if option not in ("RAW", "USER_ENTERED"):
            raise ApiError(400, "Invalid valueInputOption: INPUT_VALUE_OPTION_UNSPECIFIED")
        values = _matrix(body.get("values", []), body.get("majorDimension"))
        with self.lock:
            span = resolve(self._book(sid), text)
            sheet, a = span.sheet, span.a1
            c_end = a.c2 if a.c2 is not None and not a.single else 1 << 30
            below = {(r, c) for (r, c) in sheet.cells if r >= a.r1 and a.c1 <= c < c_end}
            occupied = {r for r, _ in below}
            # Like Sheets, the "table" is the first run of contiguous non-empty rows; appends
            # land right after it (even into a gap). An empty anchor cell is written in place,
            # which is what gspread's insert_rows relies on.
            first = None if a.single and a.r1 not in occupied else min(occupied, default=None)
            start_r, table = a.r1, []
            if first is not None:
                start_r = first + 1
                while start_r in occupied:
                    start_r += 1
                table = [(r, c) for r, c in below if r < start_r]
            start_c = min(c for _, c in table) if table and a.c2 is None else a.c1
            rows, cols = len(values), max((len(r) for r in values), default=0)
            for row in values:  # validate before the grid is touched
                for v in row:
                    if v is not None:
                        parse_input(v, option)
            if params.get("insertDataOption") == "INSERT_ROWS" and rows:
                _shift(sheet, True, start_r, rows)
            # Unlike values.update, append grows the grid to fit.
            sheet.row_count = max(sheet.row_count, start_r + max(rows, 1))
            sheet.column_count = max(sheet.column_count, start_c + max(cols, 1))
            target = A1Range(sheet.title, start_r, start_c, None, None, single=True)
            updates = _apply(_plan_write(Span(sheet, target, text), values, option), sid)
            self._commit()
        answer: Json = {"spreadsheetId": sid, "updates": updates}
        if table:
            answer["tableRange"] = format_range(
                sheet.title,
                min(r for r, _ in table),
                start_c,
                start_r,
                max(c for _, c in table) + 1,
            )
        return answer

    def values_clear(self, sid: str, ranges: Sequence[str]) -> list[str]:
        with self.lock:
            book = self._book(sid)
            spans = [resolve(book, text) for text in ranges]
            for span in spans:
                span.check_grid()
            for span in spans:
                a = span.a1
                span.sheet.cells = {
                    k: v
                    for k, v in span.sheet.cells.items()
                    if not (a.r1 <= k[0] < span.r2 and a.c1 <= k[1] < span.c2)
                }
            self._commit()
            return [span.label() for span in spans]


def _add_sheet(book: Book, props: Json) -> Sheet:
    taken = {s.sheet_id for s in book.sheets}
    title = props.get("title") or next(
        f"Sheet{n}" for n in range(1, 10_000) if not book.sheet_by_title(f"Sheet{n}")
    )
    if book.sheet_by_title(title):
        raise ApiError(
            400,
            f'Invalid addSheet: A sheet with the name "{title}" '
            "already exists. Please enter another name.",
        )
    sheet_id = props.get("sheetId")
    if sheet_id is None:
        sheet_id = 0 if not taken else random.randint(1, 2**31 - 1)
        while sheet_id in taken:
            sheet_id = random.randint(1, 2**31 - 1)
    elif sheet_id in taken:
        raise ApiError(400, f"A sheet with id {sheet_id} already exists.")
    grid = props.get("gridProperties") or {}
    sheet = Sheet(
        sheet_id,
        title,
        _positive_int(grid.get("rowCount", 1000), "rowCount"),
        _positive_int(grid.get("columnCount", 26), "columnCount"),
    )
    index = props.get("index")
    book.sheets.insert(len(book.sheets) if index is None else int(index), sheet)
    return sheet


def _resize(sheet: Sheet, rows: int, cols: int) -> None:
    sheet.row_count, sheet.column_count = rows, cols
    sheet.cells = {k: v for k, v in sheet.cells.items() if k[0] < rows and k[1] < cols}


def _shift(sheet: Sheet, rows: bool, start: int, count: int) -> None:
    """Insert (``count`` > 0) or delete (< 0) rows or columns at ``start``, moving cells."""
    moved: dict[tuple[int, int], Cell] = {}
    for (r, c), cell in sheet.cells.items():
        k = r if rows else c
        if count < 0 and start <= k < start - count:
            continue
        k += count if k >= start else 0
        moved[(k, c) if rows else (r, k)] = cell
    sheet.cells = moved
    if rows:
        sheet.row_count += count
    else:
        sheet.column_count += count


def _structural(book: Book, i: int, request: Json) -> Json:
    """Apply one spreadsheets.batchUpdate request to ``book``; return its reply."""
    if not isinstance(request, dict) or len(request) != 1:
        raise ApiError(400, "Each request must set exactly one kind.")
    kind, body = next(iter(request.items()))
    if kind == "addSheet":
        sheet = _add_sheet(book, body.get("properties") or {})
        props = next(
            s for s in book.metadata()["sheets"] if s["properties"]["sheetId"] == sheet.sheet_id
        )
        return {"addSheet": props}
    if kind == "deleteSheet":
        sheet = book.sheet_by_id(body.get("sheetId"))
        if len(book.sheets) == 1:
            raise ApiError(
                400,
                f"Invalid requests[{i}].deleteSheet: You can't remove all the sheets "
                "in a document.",
            )
        book.sheets.remove(sheet)
        return {}
    if kind == "updateSheetProperties":
        props = body.get("properties") or {}
        sheet = book.sheet_by_id(props.get("sheetId"))
        fields = {f.strip().replace("/", ".") for f in str(body.get("fields", "")).split(",")}
        every = "*" in fields
        if (every or "title" in fields) and "title" in props:
            other = book.sheet_by_title(props["title"])
            if other is not None and other is not sheet:
                raise ApiError(400, f'A sheet with the name "{props["title"]}" already exists.')
            sheet.title = props["title"]
        if (every or "index" in fields) and "index" in props:
            book.sheets.remove(sheet)
            book.sheets.insert(int(props["index"]), sheet)
        grid, rows, cols = props.get("gridProperties") or {}, sheet.row_count, sheet.column_count
        if every or fields & {"gridProperties", "gridProperties.rowCount"}:
            rows = _positive_int(grid.get("rowCount", rows), "rowCount")
        if every or fields & {"gridProperties", "gridProperties.columnCount"}:
            cols = _positive_int(grid.get("columnCount", cols), "columnCount")
        _resize(sheet, rows, cols)
        return {}
    if kind == "updateSpreadsheetProperties":
        props = body.get("properties") or {}
        book.title = props.get("title", book.title)
        book.locale = props.get("locale", book.locale)
        book.time_zone = props.get("timeZone", book.time_zone)
        return {}
    if kind == "appendDimension":
        sheet, length = (
            book.sheet_by_id(body.get("sheetId")),
            _positive_int(body.get("length"), "length"),
        )
        if body.get("dimension") == "COLUMNS":
            sheet.column_count += length
        else:
            sheet.row_count += length
        return {}
    if kind in ("insertDimension", "deleteDimension"):
        rng = body.get("range") or {}
        sheet, rows = book.sheet_by_id(rng.get("sheetId")), rng.get("dimension") == "ROWS"
        start, end = rng.get("startIndex", 0), rng.get("endIndex")
        size = sheet.row_count if rows else sheet.column_count
        deleting = kind == "deleteDimension"
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end):
            raise ApiError(400, f"Invalid requests[{i}].{kind}: invalid range {rng}")
        if (end if deleting else start) > size:
            raise ApiError(400, f"Invalid requests[{i}].{kind}: range is outside the grid")
        if deleting and end - start >= size:
            what = "rows" if rows else "columns"
            raise ApiError(400, f"Invalid requests[{i}].{kind}: You can't delete all the {what}")
        _shift(sheet, rows, start, start - end if deleting else end - start)
        return {}
    if kind == "sortRange":
        _sort(book, i, body)
        return {}
    if kind == "duplicateSheet":
        source = book.sheet_by_id(body.get("sourceSheetId"))
        copied: Json = {
            "title": body.get("newSheetName") or f"Copy of {source.title}",
            "gridProperties": {"rowCount": source.row_count, "columnCount": source.column_count},
        }
        if body.get("newSheetId") is not None:
            copied["sheetId"] = body["newSheetId"]
        if body.get("insertSheetIndex") is not None:
            copied["index"] = body["insertSheetIndex"]
        sheet = _add_sheet(book, copied)
        sheet.cells = dict(source.cells)
        reply = next(
            s for s in book.metadata()["sheets"] if s["properties"]["sheetId"] == sheet.sheet_id
        )
        return {"duplicateSheet": reply}
    raise ApiError(
        400,
        f"Invalid requests[{i}]: request kind '{kind}' is not supported by the local Sheets stub.",
    )


def _sort(book: Book, i: int, body: Json) -> None:
    """sortRange: the range's rows reordered by their cells in the sort columns
    (numbers before text, empty cells last, as Sheets does); the cells of the
    range move with their rows."""
    rng = body.get("range") or {}
    sheet = book.sheet_by_id(rng.get("sheetId"))
    r1, r2 = rng.get("startRowIndex", 0), rng.get("endRowIndex", sheet.row_count)
    c1, c2 = rng.get("startColumnIndex", 0), rng.get("endColumnIndex", sheet.column_count)
    specs = body.get("sortSpecs") or []
    if not specs or not (0 <= r1 <= r2 <= sheet.row_count and 0 <= c1 <= c2):
        raise ApiError(400, f"Invalid requests[{i}].sortRange: invalid range or sort specs")

    def sort_key(row: int, spec: Json) -> tuple[int, Any]:
        cell = sheet.cells.get((row, int(spec.get("dimensionIndex", 0))))
        value = render(cell, "UNFORMATTED_VALUE") if cell else ""
        if value == "":
            return (2, "")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (0, value)
        return (1, str(value).lower())

    order = list(range(r1, r2))
    for spec in reversed(specs):  # the first spec decides, later ones break ties
        descending = spec.get("sortOrder") == "DESCENDING"
        filled = [r for r in order if sort_key(r, spec)[0] < 2]
        empty = [r for r in order if sort_key(r, spec)[0] == 2]
        filled.sort(key=lambda r, spec=spec: sort_key(r, spec), reverse=descending)  # type: ignore[misc]
        order = filled + empty
    moved = {
        (r1 + new, c): sheet.cells[(old, c)]
        for new, old in enumerate(order)
        for c in range(c1, c2)
        if (old, c) in sheet.cells
    }
    for key in [k for k in sheet.cells if r1 <= k[0] < r2 and c1 <= k[1] < c2]:
        del sheet.cells[key]
    sheet.cells.update(moved)


# --- HTTP ----------------------------------------------------------------------------

_ID = r"/v4/spreadsheets/([^/:]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"/v4/spreadsheets"), "spreadsheets.create"),
    ("GET", re.compile(_ID), "spreadsheets.get"),
    ("POST", re.compile(_ID + r":batchUpdate"), "spreadsheets.batchUpdate"),
    ("GET", re.compile(_ID + r"/values:batchGet"), "values.batchGet"),
    ("POST", re.compile(_ID + r"/values:batchGet"), "values.batchGet"),
    ("POST", re.compile(_ID + r"/values:batchUpdate"), "values.batchUpdate"),
    ("POST", re.compile(_ID + r"/values:batchClear"), "values.batchClear"),
    ("POST", re.compile(_ID + r"/values/([^/]+?):append"), "values.append"),
    ("POST", re.compile(_ID + r"/values/([^/]+?):clear"), "values.clear"),
    ("GET", re.compile(_ID + r"/values/([^/]+)"), "values.get"),
    ("PUT", re.compile(_ID + r"/values/([^/]+)"), "values.update"),
]


def _route(method: str, path: str) -> tuple[str, list[str]]:
    for verb, pattern, op in _ROUTES:
        if verb == method and (m := pattern.fullmatch(path)):
            # Decode after matching: gspread percent-encodes ":" and "!" inside ranges.
            return op, [unquote(g) for g in m.groups()]
    raise ApiError(404, f"Method not found: {method} {path}")


def _dispatch(
    store: Store, op: str, args: list[str], query: dict[str, list[str]], body: Json
) -> Json:
    params = {k: v[0] for k, v in query.items()}
    sid = args[0] if args else ""
    if op == "spreadsheets.create":
        return store.create(body)
    if op == "spreadsheets.get":
        grid = params.get("includeGridData", "").lower() == "true"
        return store.metadata(sid, query.get("ranges") or [], grid)
    if op == "spreadsheets.batchUpdate":
        return store.batch_update(sid, body)
    if op == "values.get":
        return store.values_get(sid, [args[1]], params)[0]
    if op == "values.batchGet":
        ranges = query.get("ranges") or body.get("ranges") or []
        merged = {**{k: v for k, v in body.items() if isinstance(v, str)}, **params}
        return {"spreadsheetId": sid, "valueRanges": store.values_get(sid, ranges, merged)}
    if op == "values.update":
        out = store.values_update(
            sid, [{**body, "range": args[1]}], params.get("valueInputOption"), params
        )
        return cast(Json, out["responses"][0])
    if op == "values.batchUpdate":
        data = body.get("data") or []
        if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
            raise ApiError(400, "Invalid value at 'data': expected a list of ValueRange")
        return store.values_update(sid, data, body.get("valueInputOption"), body)
    if op == "values.append":
        return store.values_append(sid, args[1], params, body)
    if op == "values.clear":
        return {"spreadsheetId": sid, "clearedRange": store.values_clear(sid, [args[1]])[0]}
    ranges = body.get("ranges") or []
    return {"spreadsheetId": sid, "clearedRanges": store.values_clear(sid, ranges)}


class StubServer(ThreadingHTTPServer):
    daemon_threads = True
    store: Store


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as requests' session expects
    # Headers and body are separate writes; without TCP_NODELAY each keep-alive
    # request stalls ~40 ms on Nagle plus delayed ACK.
    disable_nagle_algorithm = True
    server: StubServer
    _raw = b""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        # Always drain the body so the keep-alive connection stays in sync.
        raw = self._raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        store = self.server.store
        status, payload = 200, cast(Json, {})
        try:
            if url.path.startswith("/_stub/"):
                payload = self._control(method, url.path)
            else:
                op, args = _route(method, url.path)
                store.admit(op)
                try:
                    body = json.loads(raw) if raw.strip() else {}
                except ValueError as exc:
                    raise ApiError(400, f"Invalid JSON payload received. {exc}") from exc
                if not isinstance(body, dict):
                    raise ApiError(400, "Invalid JSON payload received. Expected an object.")
                payload = _dispatch(store, op, args, parse_qs(url.query), body)
        except ApiError as exc:
            status, payload = exc.code, exc.payload()
        except Exception:  # a stub bug must still answer, or the client hangs
            log.exception("internal error on %s %s", method, self.path)
            status, payload = 500, ApiError(500, "Internal error in sheets stub.").payload()
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _control_body(self) -> Json:
        try:
            body = json.loads(self._raw or b"{}")
        except ValueError as exc:
            raise ApiError(400, f"Invalid JSON payload received. {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "Expected a JSON object.")
        return body

    def _control(self, method: str, path: str) -> Json:
        store = self.server.store
        if (method, path) == ("GET", "/_stub/healthz"):
            return {"ok": True}
        if (method, path) == ("GET", "/_stub/stats"):
            return store.stats()
        if (method, path) == ("GET", "/_stub/writes"):
            with store.lock:
                return {"writes": list(store.write_log)}
        if (method, path) in (("POST", "/_stub/quota"), ("POST", "/_stub/access")):
            return store.control(path.rsplit("/", 1)[1], self._control_body())
        if (method, path) == ("POST", "/_stub/reset_stats"):
            store.reset_stats()
            return {"ok": True}
        raise ApiError(404, f"Unknown control endpoint: {method} {path}")


def make_server(
    host: str,
    port: int,
    data_file: Path | None,
    mirror: Mirror | None = None,
    write_quota_per_minute: int | None = None,
) -> ThreadingHTTPServer:
    """Build (not start) the stub server; call ``serve_forever`` on it."""
    server = StubServer((host, port), _Handler)
    server.store = Store(data_file, mirror, write_quota_per_minute)
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.sheets_stub",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--data", type=Path, help="JSON state file (in-memory if omitted)")
    parser.add_argument("--mirror-csv", type=Path)
    parser.add_argument("--mirror-spreadsheet")
    parser.add_argument("--mirror-worksheet")
    parser.add_argument("--write-quota-per-minute", type=int)
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    mirror_args = (args.mirror_csv, args.mirror_spreadsheet, args.mirror_worksheet)
    if any(a is not None for a in mirror_args) and None in mirror_args:
        parser.error("--mirror-csv, --mirror-spreadsheet and --mirror-worksheet go together")
    mirror = Mirror(*mirror_args) if args.mirror_csv is not None else None
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    server = make_server(args.host, args.port, args.data, mirror, args.write_quota_per_minute)

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever, which runs on this very thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    print(f"sheets stub listening on http://{host!s}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
