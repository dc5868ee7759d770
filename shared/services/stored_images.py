"""Generated images in the bucket: their names under the configured prefixes, and
storing one create-only with its metadata."""

from __future__ import annotations

from shared.config.settings import Settings
from shared.contracts.objects import ObjectNames, image_metadata
from shared.domain.job import Job
from shared.domain.lifecycle import Spent
from shared.services.ports import GeneratedImage, ObjectStore


def object_names(settings: Settings) -> ObjectNames:
    """The names of images, thumbnails and zips under this deployment's prefixes."""
    return ObjectNames(settings.images_prefix, settings.thumbnails_prefix, settings.exports_prefix)


def store_image(
    objects: ObjectStore,
    bucket: str,
    names: ObjectNames,
    job: Job,
    n: int,
    image: GeneratedImage,
    spent: Spent,
    version: int = 1,
) -> tuple[str, bool]:
    """Upload variant ``n``'s image (version ``version``) create-only with its
    metadata: (its name, whether this call created it — False: an earlier delivery had)."""
    name = names.image(job, n, image.mime_type, version)
    created = objects.create(
        bucket, name, image.data, image.mime_type, image_metadata(job, n, spent, version)
    )
    return name, created
