"""Thumbnails: one per finished image; the ledger then writes the scene's row."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from shared.config.settings import Settings
from shared.contracts.messages import StorageObject
from shared.contracts.objects import (
    ObjectNames,
    VariantKey,
    is_thumbnail,
    recorded_spent,
    thumbnail_metadata,
    variant_key,
)
from shared.domain import lifecycle
from shared.domain.errors import NotFound, PermanentError
from shared.domain.ids import utcnow
from shared.domain.job import TERMINAL_VARIANT_STATES, Job, VariantState
from shared.services.ledger import JobLedger
from shared.services.ports import ObjectStore, Thumbnailer, ThumbnailSpec
from shared.services.stored_images import object_names

log = logging.getLogger(__name__)

MAX_SOURCE_BYTES = 64 * 1024 * 1024


def skip_reason(obj: StorageObject, settings: Settings) -> str | None:
    """Why this notification is not ours to thumbnail (None if it is)."""
    if obj.event_type and obj.event_type != "OBJECT_FINALIZE":
        return f"event type {obj.event_type}"
    if obj.bucket != settings.images_bucket:
        return f"bucket {obj.bucket} is not the images bucket"
    if not obj.name.startswith(settings.images_prefix):
        return f"object {obj.name} is outside {settings.images_prefix}"
    if is_thumbnail(obj.metadata):
        return "object is a thumbnail"
    if variant_key(obj.metadata) is None:
        return "object has no job_id/variant metadata"
    return None


def not_its_image(job: Job, key: VariantKey, name: str, names: ObjectNames) -> str | None:
    """Why object ``name`` is not the image of the variant (version) ``key`` (None if
    it is): the image the variant records, or, before it records one, an object
    under the one name generation gives that image.

    Metadata alone proves nothing: a stray upload under the images prefix, or another
    variant's object, may carry any job and variant.
    """
    recorded = job.slot(key.n, key.version).object_name
    if recorded is not None:
        return None if name == recorded else f"{name} is not the variant's image {recorded}"
    parsed = names.parse_image(name)
    if parsed is None or parsed.mime_type is None:
        return f"{name} is not named as an image"
    if (parsed.scene_id, parsed.job_id, parsed.n, parsed.version) != (
        job.scene_id,
        job.job_id,
        key.n,
        key.version,
    ):
        return f"{name} is not the name of variant {key.n} version {key.version}"
    return None


def thumbnail_spec(settings: Settings) -> ThumbnailSpec:
    return ThumbnailSpec(
        longest_side=settings.thumbnail_size,
        format=settings.thumbnail_format,
        quality=settings.thumbnail_quality,
        max_pixels=settings.thumbnail_max_pixels,
    )


@dataclass(frozen=True)
class Thumbnails:
    settings: Settings
    ledger: JobLedger
    objects: ObjectStore
    thumbnailer: Thumbnailer
    clock: Callable[[], datetime] = utcnow

    @cached_property
    def names(self) -> ObjectNames:
        return object_names(self.settings)

    def handle(self, obj: StorageObject) -> None:
        reason = skip_reason(obj, self.settings)
        key = variant_key(obj.metadata)
        if reason is not None or key is None:
            log.info("notification skipped: %s", reason, extra={"object": obj.name})
            return
        n, version = key.n, key.version
        context = {"job_id": key.job_id, "variant": n, "version": version, "object": obj.name}
        # The image's cost travels in its metadata: recorded here too, so it is
        # never lost whichever of generation and this path records the variant first.
        spent = recorded_spent(obj.metadata)
        job = self.ledger.get(key.job_id)
        try:
            variant = job.slot(n, version) if job is not None else None
        except KeyError:
            variant = None
        if job is None or variant is None:
            log.error("no such job, variant or version; notification dropped", extra=context)
            return
        # Only the variant's own image makes its thumbnail, records it or charges it;
        # another object naming the variant (a stray upload) is acknowledged untouched.
        foreign = not_its_image(job, key, obj.name, self.names)
        if foreign is not None:
            log.warning("notification skipped: %s", foreign, extra=context)
            return
        with self.ledger.entry(job) as entry:
            made = variant.state == VariantState.DONE or (
                variant.state == VariantState.FAILED and variant.object_name is not None
            )
            if made:
                # A redelivered event: the ledger writes the row if a write failed.
                if variant.cost_usd is None and spent is not None:
                    entry.apply(
                        lambda j: lifecycle.uploaded(
                            j, n, obj.name, obj.content_type, self.clock(), spent, version
                        )
                    )
                return
            if variant.state in TERMINAL_VARIANT_STATES:
                # Given up on (its holder stalled past its lease), yet the image exists:
                # it is kept and charged, and gets its thumbnail like any other.
                entry.apply(
                    lambda j: lifecycle.uploaded(
                        j, n, obj.name, obj.content_type, self.clock(), spent, version
                    )
                )
            spec = thumbnail_spec(self.settings)
            thumb = self.names.thumbnail(obj.name, spec.content_type)
            try:
                data = self.objects.read(obj.bucket, obj.name, MAX_SOURCE_BYTES)
                small = self.thumbnailer(data, spec)
            except (PermanentError, NotFound) as exc:
                reason = f"thumbnail: {exc}"
                entry.apply(
                    lambda j: lifecycle.variant_failed(
                        j,
                        n,
                        reason,
                        self.clock(),
                        spent=spent,
                        version=version,
                        object_name=obj.name,
                    )
                )
                log.warning("variant failed", extra={**context, "state": "failed", "error": reason})
                return
            # Outside the notified prefix (or in another bucket), and marked: the
            # thumbnail's own notification, if any, is skipped.
            self.objects.create(
                self.settings.thumbnails_bucket,
                thumb,
                small,
                spec.content_type,
                thumbnail_metadata(obj.name, key),
            )
            entry.apply(
                lambda j: lifecycle.thumbnail_done(
                    j, n, obj.name, thumb, self.clock(), spent, version
                )
            )
            log.info("thumbnail done", extra={**context, "state": "done"})
