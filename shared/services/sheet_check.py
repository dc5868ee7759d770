"""The sheet check: can the target worksheet show every image of a batch?

An image is paid for when it is made, so a row that does not exist, or a variant
without its ``nano_img_k`` column, would be paid for and never shown. The check
reads the worksheet's header and ``scene_id`` column once per batch (kept briefly,
per instance, so that an Estimate and the Generate after it cost one read) and
names each problem by the request field it is about. A kept layout that finds a
problem is read again before anyone is refused: the team may just have added the
row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.contracts.answers import Warning
from shared.contracts.requests import BatchRequest
from shared.contracts.sheet_row import JOB_ID_COLUMN, KEY_COLUMN, REQUIRED_COLUMNS, image_column
from shared.domain.errors import MissingWorksheet, PermanentError
from shared.services.ports import SheetLayout, SheetLayouts

# Long enough for an Estimate and the Generate that follows it.
LAYOUT_TTL_S = 60.0


@dataclass(frozen=True)
class SheetFindings:
    """What the worksheet cannot show (refusals, by request field) and what it
    shows only in part (warnings)."""

    problems: list[dict[str, str]] = field(default_factory=list)
    warnings: list[Warning] = field(default_factory=list)


class SheetCheck:
    def __init__(
        self,
        layouts: SheetLayouts,
        ttl_s: float = LAYOUT_TTL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._layouts = layouts
        self._ttl_s = ttl_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._kept: dict[tuple[str, str], tuple[float, SheetLayout]] = {}

    def check(self, request: BatchRequest) -> SheetFindings:
        """The batch against its worksheet; raises TransientError when the sheet
        cannot be read now."""
        where = (request.spreadsheet_id, request.worksheet)
        now = self._monotonic()
        with self._lock:
            kept = self._kept.get(where)
        if kept is not None and now - kept[0] < self._ttl_s:
            findings = findings_of(request, kept[1])
            if not findings.problems:
                return findings
        try:
            layout = self._layouts.layout(*where)
        except PermanentError as exc:
            with self._lock:
                self._kept.pop(where, None)
            return SheetFindings(problems=[_unreadable(request, exc)])
        with self._lock:
            self._kept[where] = (now, layout)
        return findings_of(request, layout)

    def tab_id(self, request: BatchRequest) -> int | None:
        """The id of the tab the batch's worksheet name meant when it was checked."""
        with self._lock:
            kept = self._kept.get((request.spreadsheet_id, request.worksheet))
        return kept[1].sheet_id if kept is not None else None


def findings_of(request: BatchRequest, layout: SheetLayout) -> SheetFindings:
    """Each row the batch names, and each image column it fills, against ``layout``."""
    sheet = f"worksheet {request.worksheet!r}"
    missing = [name for name in REQUIRED_COLUMNS if name not in layout.header]
    if missing:
        reason = f"{sheet} has no column {', '.join(missing)} in its header row (row 1)"
        return SheetFindings(problems=[{"field": "worksheet", "reason": reason}])
    found = SheetFindings()
    images = [name for name in layout.header if name.startswith("nano_img_")]
    for i, item in enumerate(request.items):
        rows = layout.rows_of(item.scene_id)
        if not rows:
            found.problems.append(
                {
                    "field": f"items[{i}].scene_id",
                    "reason": f"no row with {KEY_COLUMN} {item.scene_id!r} in {sheet}: "
                    "its images would be paid for and never shown",
                }
            )
        elif len(rows) > 1:
            found.warnings.append(
                Warning(
                    scene_id=item.scene_id,
                    message=f"{KEY_COLUMN} {item.scene_id!r} is in rows {rows} of {sheet}; "
                    f"only row {rows[0]} shows its images",
                )
            )
        absent = [
            image_column(n)
            for n in range(1, item.variants + 1)
            if image_column(n) not in layout.header
        ]
        if absent:
            has = ", ".join(images) if images else "no image columns"
            found.problems.append(
                {
                    "field": f"items[{i}].variants",
                    "reason": f"{item.variants} variants need column {', '.join(absent)}, "
                    f"which {sheet} lacks (it has {has}): add the column or ask for fewer",
                }
            )
    if JOB_ID_COLUMN not in layout.header:
        found.warnings.append(
            Warning(
                message=f"{sheet} has no {JOB_ID_COLUMN} column: rows show images and status, "
                "but Refresh, Cancel and Edit cannot find their jobs"
            )
        )
    return found


def _unreadable(request: BatchRequest, exc: PermanentError) -> dict[str, str]:
    text = str(exc)
    if isinstance(exc, MissingWorksheet):
        return {"field": "worksheet", "reason": text}
    # Not found, or not shared with our service account.
    return {
        "field": "spreadsheet_id",
        "reason": f"{text}; share it with the API's service account "
        "(Terraform output sheet_reader_emails) and with the row writers (sheet_editor_emails)",
    }
