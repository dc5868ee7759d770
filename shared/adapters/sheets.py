"""SheetWriter on the Google Sheets API through gspread (imported here only)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import gspread
from gspread.exceptions import APIError

from shared.a1 import column_letter, literal_text, quote_title
from shared.errors import PermanentError, TransientError
from shared.ports import Cell, Formula

KEY_COLUMN = "scene_id"
REQUIRED_COLUMNS = ("scene_id", "status_img")


class GspreadSheetWriter:
    """Finds the row by ``scene_id`` and columns by header; one write per row update."""

    def __init__(self, client: gspread.Client) -> None:
        self._http = client.http_client
        self._headers: dict[tuple[str, str], list[str]] = {}
        self._lock = threading.Lock()

    def write_row(
        self, spreadsheet_id: str, worksheet: str, scene_id: str, cells: Mapping[str, Cell]
    ) -> None:
        sheet = quote_title(worksheet)
        header, keys = self._header_and_keys(spreadsheet_id, worksheet)
        missing = [name for name in REQUIRED_COLUMNS if name not in header]
        if missing:
            raise PermanentError(f"worksheet {worksheet!r} has no column {', '.join(missing)}")
        rows = [i for i, key in enumerate(keys, start=1) if i > 1 and key.strip() == scene_id]
        if not rows:
            raise PermanentError(f"no row with scene_id {scene_id!r} in worksheet {worksheet!r}")
        row = rows[0]
        data = []
        for name, cell in cells.items():
            if name not in header:
                continue  # optional column (e.g. nano_img_4) the sheet does not have
            col = column_letter(header.index(name) + 1)
            value = cell.value if isinstance(cell, Formula) else literal_text(cell.value)
            data.append({"range": f"{sheet}!{col}{row}", "values": [[value]]})
        self._call(
            self._http.values_batch_update,
            spreadsheet_id,
            {"valueInputOption": "USER_ENTERED", "data": data},
        )

    def _header_and_keys(self, spreadsheet_id: str, worksheet: str) -> tuple[list[str], list[str]]:
        """Header row and the scene_id column, in one read when the header is cached."""
        sheet = quote_title(worksheet)
        cache_key = (spreadsheet_id, worksheet)
        for _ in range(2):
            with self._lock:
                cached = self._headers.get(cache_key)
            ranges = [f"{sheet}!1:1"]
            if cached and KEY_COLUMN in cached:
                col = column_letter(cached.index(KEY_COLUMN) + 1)
                ranges.append(f"{sheet}!{col}:{col}")
            answer = self._call(
                self._http.values_batch_get,
                spreadsheet_id,
                ranges,
                {"majorDimension": "ROWS", "valueRenderOption": "FORMATTED_VALUE"},
            )
            value_ranges = answer.get("valueRanges", [])
            header_rows = value_ranges[0].get("values", []) if value_ranges else []
            header = [str(h).strip() for h in (header_rows[0] if header_rows else [])]
            with self._lock:
                self._headers[cache_key] = header
            if len(ranges) == 2 and header == cached:
                keys = [str(r[0]) if r else "" for r in value_ranges[1].get("values", [])]
                return header, keys
            if KEY_COLUMN not in header:
                return header, []
        return header, []

    @staticmethod
    def _call(method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except APIError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            message = f"Sheets API {code}: {exc}"
            if code in (408, 429) or code >= 500:
                raise TransientError(message) from exc
            if code in (403, 404):
                raise PermanentError(
                    f"spreadsheet not found or not shared with the service account ({message})"
                ) from exc
            raise PermanentError(message) from exc
        except (OSError, TimeoutError) as exc:
            raise TransientError(f"Sheets API unreachable: {exc}") from exc
