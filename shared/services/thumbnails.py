"""Thumbnails: one per finished image, then the scene's row in the sheet."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from shared import jobs as transitions
from shared.errors import NotFound, PermanentError
from shared.events import StorageObject
from shared.ids import utcnow
from shared.models import VariantState
from shared.ports import JobStore, ObjectStore
from shared.services.sheet_sync import SheetSync
from shared.settings import Settings

log = logging.getLogger(__name__)

THUMBNAIL_MARKER = "pipeline-thumbnail"
MAX_SOURCE_BYTES = 64 * 1024 * 1024


def skip_reason(obj: StorageObject, settings: Settings) -> str | None:
    """Why this notification is not ours to thumbnail (None if it is)."""
    if obj.event_type and obj.event_type != "OBJECT_FINALIZE":
        return f"event type {obj.event_type}"
    if obj.bucket != settings.images_bucket:
        return f"bucket {obj.bucket} is not the images bucket"
    if not obj.name.startswith(settings.images_prefix):
        return f"object {obj.name} is outside {settings.images_prefix}"
    if obj.metadata.get(THUMBNAIL_MARKER):
        return "object is a thumbnail"
    if not obj.metadata.get("job_id") or not obj.metadata.get("variant", "").isdigit():
        return "object has no job_id/variant metadata"
    return None


def thumbnail_name(settings: Settings, name: str) -> str:
    stem = name[len(settings.images_prefix) :].rsplit(".", 1)[0]
    return f"{settings.thumbnails_prefix}{stem}.jpg"


@dataclass(frozen=True)
class Thumbnails:
    settings: Settings
    store: JobStore
    objects: ObjectStore
    thumbnailer: Callable[[bytes, int], bytes]
    sheet: SheetSync
    clock: Callable[[], datetime] = utcnow

    def handle(self, obj: StorageObject) -> None:
        reason = skip_reason(obj, self.settings)
        if reason is not None:
            log.info("notification skipped: %s", reason, extra={"object": obj.name})
            return
        job_id, n = obj.metadata["job_id"], int(obj.metadata["variant"])
        context = {"job_id": job_id, "variant": n, "object": obj.name}
        job = self.store.get_job(job_id)
        if job is None or str(n) not in job.variants:
            log.error("no such job or variant; notification dropped", extra=context)
            return
        if job.variant(n).state in (VariantState.DONE, VariantState.FAILED):
            # A redelivered event: the row may still need the write that failed.
            self.sheet.sync(job_id)
            return
        thumb = thumbnail_name(self.settings, obj.name)
        try:
            data = self.objects.read(obj.bucket, obj.name, MAX_SOURCE_BYTES)
            jpeg = self.thumbnailer(data, self.settings.thumbnail_size)
        except (PermanentError, NotFound) as exc:
            reason = f"thumbnail: {exc}"
            self.store.update_job(
                job_id, lambda j: transitions.variant_failed(j, n, reason, self.clock())
            )
            log.warning("variant failed", extra={**context, "state": "failed", "error": reason})
            self.sheet.sync(job_id)
            return
        self.objects.create(
            self.settings.thumbs_bucket,
            thumb,
            jpeg,
            "image/jpeg",
            {THUMBNAIL_MARKER: "1", "source": obj.name, "job_id": job_id, "variant": str(n)},
        )
        finished = self.store.update_job(
            job_id, lambda j: transitions.thumbnail_done(j, n, obj.name, thumb, self.clock())
        )
        log.info("thumbnail done", extra={**context, "state": "done"})
        if finished:
            log.info("job finished", extra={"job_id": job_id, "event": "job_finished"})
        self.sheet.sync(job_id)
