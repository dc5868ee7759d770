"""A scene's row as the sheet shows it: which cells, by header name, and what
each holds (plain text, or one of our own formulas)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from shared.contracts.links import LinkSigner
from shared.contracts.status_words import progress
from shared.domain.job import Job


@dataclass(frozen=True)
class Text:
    """A cell written as plain text, never interpreted as a formula."""

    value: str


@dataclass(frozen=True)
class Formula:
    """A cell holding one of our own formulas."""

    value: str


Cell = Text | Formula

# Sheets holds 50,000 characters a cell; a status should stay readable.
MAX_CELL_CHARS = 1000
ERROR_COLUMN = "error_img"
# Rows are found by this column's value.
KEY_COLUMN = "scene_id"
# Without these a row cannot say anything: its scene, its status.
REQUIRED_COLUMNS = (KEY_COLUMN, "status_img")
# Written when the sheet has them; Refresh, Cancel and Re-roll read the job id.
JOB_ID_COLUMN = "job_id"
# Written when the sheet has it, silently left out when it does not.
OPTIONAL_COLUMNS = frozenset({ERROR_COLUMN})


def image_column(n: int) -> str:
    """The header of variant ``n``'s image cell (from 1)."""
    return f"nano_img_{n}"


_IMAGE_COLUMN = re.compile(r"nano_img_[1-9][0-9]*")


def is_image_column(name: str) -> bool:
    """Whether a header names an image cell: a row's writer clears those it does not
    fill, so that an earlier job's extra images never stand next to this one's."""
    return _IMAGE_COLUMN.fullmatch(name) is not None


def blank_cells() -> dict[str, Cell]:
    """The cells of a row no job owns: what a stray write left there is cleared."""
    return {"status_img": Text(""), JOB_ID_COLUMN: Text(""), ERROR_COLUMN: Text("")}


def row_cells(job: Job, links: LinkSigner) -> dict[str, Cell]:
    """The cells of the job's row, by header name; each image cell shows the
    variant's newest finished version.

    ``error_img`` is written only when the sheet has such a column.
    """
    cells: dict[str, Cell] = {
        "status_img": Text(_clip(progress(job).status)),
        JOB_ID_COLUMN: Text(job.job_id),
        ERROR_COLUMN: Text(_clip(job.error or "")),
    }
    for key in sorted(job.variants, key=int):
        variant = job.variants[key]
        number, shown = variant.current()  # the newest version with a finished image
        if shown.asset_name("thumb") is not None:
            url = links.link(job.job_id, variant.n, "thumb", number).replace('"', '""')
            cells[image_column(variant.n)] = Formula(f'=IMAGE("{url}")')
    return cells


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def row_digest(job: Job, links: LinkSigner) -> str:
    """What identifies the row that shows this state of the job."""
    return cells_digest(row_cells(job, links))


def cells_digest(cells: Mapping[str, Cell]) -> str:
    flat = {name: [type(cell).__name__, cell.value] for name, cell in cells.items()}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]
