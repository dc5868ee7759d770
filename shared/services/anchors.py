"""Style anchors resolved to images, for the generate function.

Generation reads the newest image of the named variant (``Anchors.resolve``),
waits while it is still being made, and fails the job with the reason when it
will never exist. Which outputs an anchor may name is ``shared.anchors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared.anchors import outputs, parse_anchor
from shared.errors import NotFound, NotReady, PermanentError
from shared.imagecheck import NotAnImage, image_mime
from shared.models import TERMINAL_VARIANT_STATES, ImageSlot, Job
from shared.ports import JobStore, ObjectStore, ReferenceImage


@dataclass(frozen=True)
class Anchors:
    """Reads the images anchors name, for the generate function."""

    store: JobStore
    objects: ObjectStore
    bucket: str
    max_bytes: int
    max_pixels: int
    admins: frozenset[str]

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
            return ReferenceImage(data=data, mime_type=image_mime(data, self.max_pixels))
        except NotFound as exc:
            raise PermanentError(f"style anchor {anchor}: its image is gone") from exc
        except NotAnImage as exc:
            raise PermanentError(f"style anchor {anchor}: not a usable image: {exc}") from exc


def _made_at(slot: ImageSlot, job: Job) -> datetime:
    return slot.generated_at or slot.done_at or job.created_at
