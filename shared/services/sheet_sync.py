"""Keeps a scene's sheet row equal to its job: one writer at a time, as few writes as possible.

The job ledger calls ``sync`` when a change left the row stale. A digest of the row's cells,
recorded on the job after each write, makes duplicate and redelivered events
free (one read, no write). A short claim on the job, taken with the store's
atomic update, lets only one delivery write a job's row at a time: under
duplicate and concurrent events the final row is written once, and a write
can never land after a newer one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from shared.contracts.links import LinkSigner
from shared.contracts.sheet_row import cells_digest, row_cells, row_digest
from shared.domain.errors import NotFound, PermanentError, TransientError
from shared.domain.ids import new_id, utcnow
from shared.domain.job import Job
from shared.services.ports import JobStore, SheetWriter

log = logging.getLogger(__name__)

# Writes of one sync; more are needed only when the job changes while its row
# is being written. Bounded so that a flapping job cannot loop.
MAX_ROUNDS = 3


class RowClaim(StrEnum):
    CURRENT = "current"  # the row already shows the job
    HELD = "held"  # another delivery is writing it
    CLAIMED = "claimed"  # ours to write


@dataclass(frozen=True)
class SheetSync:
    store: JobStore
    sheets: SheetWriter
    links: LinkSigner
    # Longer than any one write can take (coalescing window, quota wait, retries).
    lease_s: float = 180.0
    # How long a sync waits for another delivery's write of the same row.
    wait_s: float = 30.0
    clock: Callable[[], datetime] = utcnow
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic

    def is_current(self, job: Job) -> bool:
        """Whether the row already shows this state of the job."""
        return row_digest(job, self.links) == job.sheet_digest

    def sync(self, job_id: str, wait: bool = True) -> bool:
        """Write the row if it differs from what was last written for this job.

        Returns False only when ``wait`` is off and another delivery is writing
        the row (it looks at the job again after its write). Transient sheet
        errors propagate (the event is retried and, since the digest was not
        recorded, the write happens then); permanent ones are recorded on the
        job as ``sheet_error``.
        """
        job = self.store.get_job(job_id)
        if job is None or self.is_current(job):
            return True  # the common duplicate: one read, no write
        token = new_id("sheet")
        give_up = self.monotonic() + self.wait_s
        polls = rounds = 0
        while rounds < MAX_ROUNDS:
            try:
                claim, job = self.store.update_job(
                    job_id, lambda j: _take_row(j, self.links, token, self.clock(), self.lease_s)
                )
            except NotFound:
                return True
            if claim == RowClaim.CURRENT:
                return True
            if claim == RowClaim.HELD:
                if not wait:
                    return False
                if self.monotonic() >= give_up:
                    raise TransientError(f"another delivery is still writing the row of {job_id}")
                self.sleep(min(0.1 * 2**polls, 2.0))
                polls += 1
                continue
            rounds += 1
            if not self._write(job, token) or self.monotonic() >= give_up:
                return True
        return True

    def _write(self, job: Job, token: str) -> bool:
        """Write the claimed row; False when this sync is over (a permanent
        error, or the claim ran out and another delivery writes the row now)."""
        cells = row_cells(job, self.links)
        context = {"job_id": job.job_id, "scene_id": job.scene_id}
        try:
            note = self.sheets.write_row(job.spreadsheet_id, job.worksheet, job.scene_id, cells)
        except PermanentError as exc:
            log.warning("sheet row not written", extra={**context, "error": str(exc)})
            self._release(job.job_id, token, None, str(exc))
            return False
        except BaseException:
            try:
                self._release(job.job_id, token, None, None, keep_error=True)
            except Exception:  # the lease expires by itself
                log.warning("sheet claim not released", extra=context, exc_info=True)
            raise
        if note is not None:
            log.warning("sheet row written without some cells", extra={**context, "error": note})
        return self._release(job.job_id, token, cells_digest(cells), note)

    def _release(
        self,
        job_id: str,
        token: str,
        digest: str | None,
        error: str | None,
        keep_error: bool = False,
    ) -> bool:
        """Release the claim; False if it was no longer ours."""
        return self.store.update_job(
            job_id, lambda job: _release_row(job, token, digest, error, keep_error)
        )


# The row's own bookkeeping on the job (who writes it, what it shows); it never
# touches the job's state, so it does not go through the ledger's transitions.
def _take_row(
    job: Job, links: LinkSigner, token: str, now: datetime, lease_s: float
) -> tuple[Job | None, tuple[RowClaim, Job]]:
    """Take the job's row unless it is current or another live claim holds it."""
    if row_digest(job, links) == job.sheet_digest:
        return None, (RowClaim.CURRENT, job)
    if (
        job.sheet_claim_id not in (None, token)
        and job.sheet_claim_expires is not None
        and job.sheet_claim_expires > now
    ):
        return None, (RowClaim.HELD, job)
    job.sheet_claim_id = token
    job.sheet_claim_expires = now + timedelta(seconds=lease_s)
    return job, (RowClaim.CLAIMED, job)


def _release_row(
    job: Job, token: str, digest: str | None, error: str | None, keep_error: bool
) -> tuple[Job | None, bool]:
    """Release our claim, recording what was written (only while the claim is ours)."""
    if job.sheet_claim_id != token:
        return None, False  # the lease ran out and another delivery took over
    job.sheet_claim_id = None
    job.sheet_claim_expires = None
    if digest is not None:
        job.sheet_digest = digest
    if not keep_error:
        job.sheet_error = error
    return job, True
