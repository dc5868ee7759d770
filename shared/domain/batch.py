"""A submitted batch and its hand-over zip (the records ``handover`` changes)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

ExportState = Literal["queued", "running", "done", "failed"]
# Which images (``shared/domain/reviews.py``) and where to: a zip, or a Drive folder.
ExportSelection = Literal["all", "approved", "final"]
ExportDestination = Literal["zip", "drive"]


class Export(BaseModel):
    """One hand-over zip of a batch: the images kept when it was asked for, at full
    size, and a manifest."""

    export_id: str
    state: ExportState = "queued"
    requested_by: str
    requested_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    deliveries: int = 0
    # When the sweeper (or a second request) last published it again: its message
    # was lost, or never sent.
    republished_at: datetime | None = None
    object_name: str | None = None
    # The images it holds, fixed when it was asked for (``handover.pack``: job id,
    # variant, version; one string, so one index entry however many images). None
    # for an export asked for before contents were recorded.
    contents: str | None = None
    # How many of them: those asked for, then those the zip holds.
    images: int | None = None
    bytes: int | None = None
    error: str | None = None
    only: ExportSelection = "all"
    # File names: a template of the image's and its row's fields (None: the zip's
    # ``{scene_id}/var_{n}[_v{k}]``).
    name_template: str | None = None
    destination: ExportDestination = "zip"
    drive_folder_id: str | None = None
    # A Drive delivery: one delivery at a time (until ``lease_until``), and how many
    # files it put in the folder and found there already.
    holder: str | None = None
    lease_until: datetime | None = None
    added: int | None = None
    present: int | None = None
    # A zip too large for one delivery: the parts written so far (objects, in
    # order), how many of its images they went through and their bytes.
    parts: list[str] = Field(default_factory=list)
    written: int = 0
    offset: int = 0


class Batch(BaseModel):
    """A submitted batch: who sent it and which jobs it made."""

    batch_id: str
    caller: str
    spreadsheet_id: str
    worksheet: str
    worksheet_id: int | None = None  # the tab's id when it was sent (None: by name)
    model: str
    job_ids: list[str]
    image_count: int
    estimated_cost_usd: str
    created_at: datetime
    # The batch's latest hand-over zip (shared/exports.py).
    export: Export | None = None

    def to_doc(self) -> dict[str, Any]:
        return self.model_dump(mode="python")
