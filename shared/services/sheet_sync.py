"""Keeps a scene's sheet row equal to its job, with as few writes as possible."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from shared import jobs as transitions
from shared.errors import PermanentError
from shared.ids import utcnow
from shared.links import LinkSigner
from shared.models import Job, VariantState
from shared.ports import Cell, Formula, JobStore, SheetWriter, Text

log = logging.getLogger(__name__)

# Each write is re-checked against the job afterwards; a concurrent stale
# write is thereby repaired by whoever wrote last. Bounded so a flapping job
# cannot loop forever.
MAX_ROUNDS = 3


def row_cells(job: Job, links: LinkSigner) -> dict[str, Cell]:
    """The cells of the job's row, by header name."""
    cells: dict[str, Cell] = {
        "status_img": Text(transitions.progress(job).status),
        "job_id": Text(job.job_id),
    }
    for key in sorted(job.variants, key=int):
        variant = job.variants[key]
        if variant.state == VariantState.DONE:
            url = links.link(job.job_id, variant.n, "thumb").replace('"', '""')
            cells[f"nano_img_{variant.n}"] = Formula(f'=IMAGE("{url}")')
    return cells


def _digest(cells: Mapping[str, Cell]) -> str:
    flat = {name: [type(cell).__name__, cell.value] for name, cell in cells.items()}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SheetSync:
    store: JobStore
    sheets: SheetWriter
    links: LinkSigner

    def sync(self, job_id: str) -> None:
        """Write the row if it differs from what was last written for this job.

        Transient sheet errors propagate (the event is retried and, since the
        digest was not recorded, the write happens then); permanent ones are
        recorded on the job.
        """
        written: str | None = None
        for _ in range(MAX_ROUNDS):
            job = self.store.get_job(job_id)
            if job is None:
                return
            cells = row_cells(job, self.links)
            digest = _digest(cells)
            # First round: skip what some sync already wrote (duplicate events).
            # Later rounds: our own write may have landed after a newer one, so
            # only what *we* wrote tells whether the sheet shows the job.
            if digest == (job.sheet_digest if written is None else written):
                return
            try:
                self.sheets.write_row(job.spreadsheet_id, job.worksheet, job.scene_id, cells)
            except PermanentError as exc:
                log.warning(
                    "sheet row not written",
                    extra={"job_id": job_id, "scene_id": job.scene_id, "error": str(exc)},
                )
                self._record(job_id, None, str(exc))
                return
            written = digest
            self._record(job_id, digest, None)

    def _record(self, job_id: str, digest: str | None, error: str | None) -> None:
        self.store.update_job(job_id, lambda job: _record(job, digest, error))


def _record(job: Job, digest: str | None, error: str | None) -> tuple[Job | None, None]:
    if job.sheet_digest == digest and job.sheet_error == error:
        return None, None
    if digest is not None:
        job.sheet_digest = digest
    job.sheet_error = error
    job.updated_at = utcnow()
    return job, None
