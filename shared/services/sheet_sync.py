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
from functools import partial

from shared.contracts.links import LinkSigner
from shared.contracts.sheet_row import blank_cells, cells_digest, row_cells, row_digest
from shared.domain import settlement
from shared.domain.errors import NotFound, PermanentError, PipelineError, RowMoved, TransientError
from shared.domain.ids import new_id, utcnow
from shared.domain.job import Job
from shared.domain.rows import row_owner
from shared.services.ports import JobStore, SheetWriter

log = logging.getLogger(__name__)

# Writes of one sync; more are needed only when the job changes while its row
# is being written. Bounded so that a flapping job cannot loop.
MAX_ROUNDS = 3
# Rows a sync gives back to their jobs after its cells landed in them (each may move
# again while it is written).
GIVE_BACK_MAX = 8


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
    # The longest a holder may live (the functions' longest timeout, 600 s, and a
    # margin): after that, one whose claim was taken over can write no more.
    holder_life_s: float = 660.0
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
        recorded, the write happens then), as does a job that keeps changing
        through MAX_ROUNDS writes; permanent ones are recorded on the job as
        ``sheet_error``.
        """
        job = self.store.get_job(job_id)
        if job is None or (self.is_current(job) and job.followups_since is None):
            return True  # the common duplicate: one read, no write
        token = new_id("sheet")
        give_up = self.monotonic() + self.wait_s
        polls = rounds = 0
        while rounds < MAX_ROUNDS:
            claimed_at = self.clock()
            try:
                claim, job = self.store.update_job(
                    job_id,
                    partial(
                        _take_row,
                        links=self.links,
                        token=token,
                        now=claimed_at,
                        lease_s=self.lease_s,
                        holder_life_s=self.holder_life_s,
                    ),
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
            if not self._write(job, token, job.sheet_late_writes, claimed_at):
                return True
            # Written; the job may have moved on meanwhile (however long the write
            # took): look again, and write again, until the row is current.
        raise TransientError(f"the job {job_id} kept changing while its row was written")

    def _write(self, job: Job, token: str, late_writes: int, claimed_at: datetime) -> bool:
        """Write the claimed row; False when this sync is over (a permanent error, or
        a row that a newer job owns), True to look at the job again (it may have
        moved on, or our write may have landed after the claim ran out and over a
        newer one)."""
        cells = row_cells(job, self.links)
        context = {"job_id": job.job_id, "scene_id": job.scene_id}
        owner = self._owner(job, job.scene_id)
        if owner is not None and owner.job_id != job.job_id:
            # Sent again since: the row is the newer job's. Nothing to write, ever.
            newer = f"the row shows job {owner.job_id}, sent later for this scene"
            digest = row_digest(job, self.links)
            self._release(job.job_id, token, digest, newer, late_writes, claimed_at)
            return False
        try:
            note = self.sheets.write_row(
                job.spreadsheet_id, job.worksheet, job.scene_id, cells, job.worksheet_id
            )
        except RowMoved as exc:
            # The rows moved under the write: the cells went to another scene's row.
            self._release(job.job_id, token, None, None, late_writes, claimed_at, keep_error=True)
            log.warning("sheet row moved while written", extra={**context, "error": str(exc)})
            self._give_back(job, *exc.landed_in)
            return True  # written again, where the scene is now
        except PermanentError as exc:
            log.warning("sheet row not written", extra={**context, "error": str(exc)})
            self._release(job.job_id, token, None, str(exc), late_writes, claimed_at)
            return False
        except BaseException:
            try:
                self._release(
                    job.job_id, token, None, None, late_writes, claimed_at, keep_error=True
                )
            except Exception:  # the lease expires by itself
                log.warning("sheet claim not released", extra=context, exc_info=True)
            raise
        if note is not None:
            log.warning("sheet row written without some cells", extra={**context, "error": note})
        self._release(job.job_id, token, cells_digest(cells), note, late_writes, claimed_at)
        owner = self._owner(job, job.scene_id)
        if owner is not None and owner.job_id != job.job_id:
            # Sent again while we wrote: our write may have landed over the newer job's.
            self._give_back(job, job.scene_id)
        return True

    def _owner(self, job: Job, scene_id: str) -> Job | None:
        """The newest job sent for ``scene_id``'s row in the job's worksheet."""
        jobs = self.store.scene_jobs(job.spreadsheet_id, scene_id)
        return row_owner(jobs, job.spreadsheet_id, job.worksheet, scene_id)

    def _give_back(self, job: Job, *scene_ids: str) -> None:
        """``job``'s cells may stand in these scenes' rows: each row's owner writes it
        again, and a row no job owns is cleared (itself a write that may land
        elsewhere: that row is given back in turn, a bounded number of times)."""
        todo = list(scene_ids)
        for _ in range(GIVE_BACK_MAX):
            if not todo:
                return
            scene_id = todo.pop(0)
            context = {"job_id": job.job_id, "scene_id": scene_id}
            try:
                owner = self._owner(job, scene_id)
                if owner is None:
                    sheet = (job.spreadsheet_id, job.worksheet)
                    self.sheets.write_row(*sheet, scene_id, blank_cells(), job.worksheet_id)
                elif owner.job_id != job.job_id:
                    self.store.update_job(owner.job_id, _overwritten)
                    self.sync(owner.job_id, wait=False)
            except RowMoved as exc:
                todo.extend([*exc.landed_in, scene_id])
            except (PipelineError, NotFound):
                # Its next event, or the sweeper's follow-up, writes it.
                log.warning("row not given back to its job", extra=context, exc_info=True)
        if todo:
            log.warning("rows not given back", extra={"job_id": job.job_id, "error": str(todo)})

    def _release(
        self,
        job_id: str,
        token: str,
        digest: str | None,
        error: str | None,
        late_writes: int,
        claimed_at: datetime,
        keep_error: bool = False,
    ) -> None:
        """Release the claim, recording what was written."""
        # Written by a claim taken after an overtaken holder could write no more:
        # nothing can land over this write any more.
        settled = claimed_at - timedelta(seconds=self.holder_life_s)
        self.store.update_job(
            job_id,
            lambda job: _release_row(
                job, self.links, token, digest, error, late_writes, settled, keep_error
            ),
        )


# The row's own bookkeeping on the job (who writes it, what it shows); it never
# touches the job's state, so it does not go through the ledger's transitions.
def _overwritten(job: Job) -> tuple[Job, None]:
    """Another job's write may have landed over this job's row: written again."""
    job.sheet_late_writes += 1
    job.sheet_digest = None
    return job, None


def _take_row(
    job: Job, links: LinkSigner, token: str, now: datetime, lease_s: float, holder_life_s: float
) -> tuple[Job | None, tuple[RowClaim, Job]]:
    """Take the job's row unless it is current or another live claim holds it.

    A claim that ran out unreleased leaves the row unknown: its holder may have
    written it (whatever the recorded digest says), or may still. A row taken over
    so counts as current only until that holder can write no more: then it is
    written once again."""
    overtaken = job.sheet_overtaken_at
    suspect = overtaken is not None and now >= overtaken + timedelta(seconds=holder_life_s)
    current = row_digest(job, links) == job.sheet_digest and not suspect
    other = job.sheet_claim_id not in (None, token) and job.sheet_claim_expires is not None
    if other and job.sheet_claim_expires is not None and job.sheet_claim_expires > now:
        return None, (RowClaim.CURRENT if current else RowClaim.HELD, job)
    if other:
        job.sheet_digest = None
        job.sheet_overtaken_at = now  # its holder may still be writing
    elif current:
        if _followed_up(job):
            job.followups_since = None
            return job, (RowClaim.CURRENT, job)
        return None, (RowClaim.CURRENT, job)
    job.sheet_claim_id = token
    job.sheet_claim_expires = now + timedelta(seconds=lease_s)
    return job, (RowClaim.CLAIMED, job)


def _release_row(
    job: Job,
    links: LinkSigner,
    token: str,
    digest: str | None,
    error: str | None,
    late_writes: int,
    settled: datetime,
    keep_error: bool,
) -> tuple[Job | None, None]:
    """Release our claim, recording what was written (only while the claim is ours,
    and only if no late write landed meanwhile)."""
    if job.sheet_claim_id != token:
        # The lease ran out and another delivery took over. If our write went
        # through, it may have landed over that delivery's newer one: whatever the
        # row shows now is unknown, so the next sync writes it again.
        if digest is None:
            return None, None
        job.sheet_late_writes += 1
        job.sheet_digest = None
        return job, None
    job.sheet_claim_id = None
    job.sheet_claim_expires = None
    if digest is not None and job.sheet_late_writes == late_writes:
        job.sheet_digest = digest
        if job.sheet_overtaken_at is not None and job.sheet_overtaken_at <= settled:
            job.sheet_overtaken_at = None
    if not keep_error:
        job.sheet_error = error
    # A row that cannot be written (a permanent error, recorded) is as done as it gets.
    gave_up = digest is None and error is not None
    if (gave_up or job.sheet_digest == row_digest(job, links)) and _followed_up(job):
        job.followups_since = None
    return job, None


def _followed_up(job: Job) -> bool:
    """Whether a job whose row is current has no follow-up left: its budget settled,
    its batch news told, and no overtaken holder that may still write an old row."""
    return (
        job.followups_since is not None
        and job.sheet_overtaken_at is None
        and job.news_due is None
        and not settlement.settlements(job)
    )
