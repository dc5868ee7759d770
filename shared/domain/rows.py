"""Who a scene's sheet row belongs to: the newest job sent for it.

A team may send a scene again while its earlier job still runs. The row then
shows the newer job, whatever order the two finish in: the earlier one's events
never write it again.
"""

from __future__ import annotations

from collections.abc import Iterable

from shared.domain.job import Job


def same_row(job: Job, spreadsheet_id: str, worksheet: str, scene_id: str) -> bool:
    """Whether ``job`` writes that row (tab names are case-insensitive in Sheets)."""
    return (
        job.spreadsheet_id == spreadsheet_id
        and job.worksheet.casefold() == worksheet.casefold()
        and job.scene_id.strip() == scene_id.strip()
    )


def row_owner(
    jobs: Iterable[Job], spreadsheet_id: str, worksheet: str, scene_id: str
) -> Job | None:
    """The newest job sent for the row among ``jobs`` (None: no job writes it)."""
    mine = [job for job in jobs if same_row(job, spreadsheet_id, worksheet, scene_id)]
    return max(mine, key=lambda job: (job.created_at, job.job_id), default=None)
