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
from shared.imaging import Thumbnailer, ThumbnailSpec
from shared.models import Job, VariantState
from shared.ports import JobStore, ObjectStore
from shared.services.completion import log_job_finished
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


def thumbnail_spec(settings: Settings) -> ThumbnailSpec:
    return ThumbnailSpec(
        longest_side=settings.thumbnail_size,
        format=settings.thumbnail_format,
        quality=settings.thumbnail_quality,
        max_pixels=settings.thumbnail_max_pixels,
    )


def thumbnail_name(settings: Settings, name: str) -> str:
    """``images/s/j/var_1.png`` -> ``thumbnails/s/j/var_1.jpg`` (outside the notified prefix)."""
    stem = name[len(settings.images_prefix) :].rsplit(".", 1)[0]
    return f"{settings.thumbnails_prefix}{stem}.{thumbnail_spec(settings).extension}"


@dataclass(frozen=True)
class Thumbnails:
    settings: Settings
    store: JobStore
    objects: ObjectStore
    thumbnailer: Thumbnailer
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
        spec = thumbnail_spec(self.settings)
        thumb = thumbnail_name(self.settings, obj.name)
        try:
            data = self.objects.read(obj.bucket, obj.name, MAX_SOURCE_BYTES)
            small = self.thumbnailer(data, spec)
        except (PermanentError, NotFound) as exc:
            reason = f"thumbnail: {exc}"
            finished = self.store.update_job(
                job_id,
                _finishing(lambda j: transitions.variant_failed(j, n, reason, self.clock())),
            )
            log.warning("variant failed", extra={**context, "state": "failed", "error": reason})
            if finished is not None:
                log_job_finished(log, finished)
            self.sheet.sync(job_id)
            return
        # Outside the notified prefix (or in another bucket), and marked: the
        # thumbnail's own notification, if any, is skipped.
        self.objects.create(
            self.settings.thumbs_bucket,
            thumb,
            small,
            spec.content_type,
            {THUMBNAIL_MARKER: "1", "source": obj.name, "job_id": job_id, "variant": str(n)},
        )
        finished = self.store.update_job(
            job_id,
            _finishing(lambda j: transitions.thumbnail_done(j, n, obj.name, thumb, self.clock())),
        )
        log.info("thumbnail done", extra={**context, "state": "done"})
        if finished is not None:
            # Only the delivery whose atomic update finished the job gets here.
            log_job_finished(log, finished)
        self.sheet.sync(job_id)


def _finishing(
    change: Callable[[Job], tuple[Job | None, bool]],
) -> Callable[[Job], tuple[Job | None, Job | None]]:
    """The change, answering the finished job when this very change finished it."""

    def apply(job: Job) -> tuple[Job | None, Job | None]:
        updated, finished = change(job)
        return updated, (updated.model_copy(deep=True) if finished and updated else None)

    return apply
