"""Style anchors: which outputs one may name, and the images they name.

Intake refuses an anchor that names nothing the caller may see (``problem``,
no image code loaded); generation reads the newest image of the named variant
(``Anchors.resolve``), waits while it is still being made, and fails the job
with the reason when it will never exist. Their syntax is ``shared.domain.anchors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared.domain.anchors import Anchor, parse_anchor
from shared.domain.errors import NotAnImage, NotFound, NotReady, PermanentError
from shared.domain.job import TERMINAL_VARIANT_STATES, ImageSlot, Job
from shared.services.ports import ImageProbe, JobStore, ObjectStore, ReferenceImage


def outputs(
    store: JobStore,
    anchor: Anchor,
    spreadsheet_id: str,
    caller: str,
    admin: bool,
    exclude: str = "",
) -> list[Job]:
    """The jobs the anchor may name for this caller: same caller (or an admin),
    for ``scene:`` in the same spreadsheet, with that variant."""
    if anchor.kind == "job":
        found = store.get_job(anchor.ident)
        jobs = [found] if found is not None else []
    else:
        jobs = store.scene_jobs(spreadsheet_id, anchor.ident)
    return [
        job
        for job in jobs
        if (admin or job.caller == caller)
        and job.job_id != exclude
        and anchor.variant <= job.variant_count
    ]


def problem(
    store: JobStore, reference: str, spreadsheet_id: str, caller: str, admin: bool
) -> str | None:
    """Why an anchor cannot name anything for this caller (None: it can, or it is no
    anchor). Missing and not visible read the same, so nothing leaks."""
    anchor = parse_anchor(reference)
    if anchor is None or outputs(store, anchor, spreadsheet_id, caller, admin):
        return None
    if anchor.kind == "scene":
        return (
            f"names no output visible to you: no job of scene {anchor.ident} with "
            f"variant {anchor.variant} in this spreadsheet"
        )
    return f"names no output visible to you: no job {anchor.ident} with variant {anchor.variant}"


@dataclass(frozen=True)
class Anchors:
    """Reads the images anchors name, for the generate function."""

    store: JobStore
    objects: ObjectStore
    bucket: str
    max_bytes: int
    max_pixels: int
    admins: frozenset[str]
    probe: ImageProbe

    def resolve(self, reference: str, job: Job) -> ReferenceImage:
        """The newest image the anchor names, as the job's caller may see it.

        Raises ``NotReady`` while that image is still being made and
        ``PermanentError`` when it will never be there.
        """
        anchor = parse_anchor(reference)
        if anchor is None:
            raise PermanentError(f"style reference {reference} is not an anchor")
        admin = job.caller in self.admins
        jobs = outputs(self.store, anchor, job.spreadsheet_id, job.caller, admin, job.job_id)
        if not jobs:
            raise PermanentError(f"style anchor {anchor} names no output the job's caller may see")
        slots = [
            (slot, source) for source in jobs for _, slot in source.variant(anchor.variant).slots()
        ]
        made = [(slot, source) for slot, source in slots if slot.kept]
        if not made:
            if any(slot.state not in TERMINAL_VARIANT_STATES for slot, _ in slots):
                raise NotReady(f"style anchor {anchor}: its image is not made yet")
            raise PermanentError(f"style anchor {anchor} has no image (it failed or was cancelled)")
        newest, _ = max(made, key=lambda pair: _made_at(*pair))
        name = newest.object_name or ""
        try:
            data = self.objects.read(self.bucket, name, self.max_bytes)
            return ReferenceImage(data=data, mime_type=self.probe(data, self.max_pixels))
        except NotFound as exc:
            raise PermanentError(f"style anchor {anchor}: its image is gone") from exc
        except NotAnImage as exc:
            raise PermanentError(f"style anchor {anchor}: not a usable image: {exc}") from exc


def _made_at(slot: ImageSlot, job: Job) -> datetime:
    return slot.generated_at or slot.done_at or job.created_at
