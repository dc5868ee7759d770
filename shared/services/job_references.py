"""A job's reference images for one Gemini call, in the live lane and the economy lane.

The batch's style references come first, then the item's own pack, up to the
job's model's ``max_reference_images`` in the catalog (and this deployment's own
cap, ``REFERENCE_MAX_IMAGES``). A style anchor (``scene:``/``job:``) is read from
the images bucket as the job's caller may see it; anything else goes through the
reference loader with its address checks and limits.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from shared.config.settings import Settings
from shared.domain.anchors import is_anchor
from shared.domain.errors import PermanentError
from shared.domain.job import Job
from shared.services.ports import (
    ImageProbe,
    JobStore,
    ObjectStore,
    ReferenceImage,
    ReferenceLoader,
)
from shared.services.style_anchors import Anchors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobReferences:
    settings: Settings
    store: JobStore
    objects: ObjectStore
    loader: ReferenceLoader
    probe: ImageProbe

    @cached_property
    def anchors(self) -> Anchors:
        cfg = self.settings
        return Anchors(
            self.store,
            self.objects,
            cfg.images_bucket,
            cfg.reference_max_bytes,
            cfg.image_max_pixels,
            frozenset(cfg.admin_callers),
            self.probe,
        )

    def load(
        self,
        job: Job,
        context: Mapping[str, object] | None = None,
        packs: dict[str, list[ReferenceImage]] | None = None,
    ) -> list[ReferenceImage]:
        """The job's references. Raises PermanentError (the job fails with it),
        NotReady (an anchored image still being made: wait) or TransientError (a
        pack could not be read in time: a real failure, worth another try).
        ``packs`` keeps the packs already fetched (one economy tick's batch)."""
        limit = self.settings.reference_limit(job.model)
        images: list[ReferenceImage] = []
        for ref in [
            *job.style_refs,
            *([job.ref_pack_public_url] if job.ref_pack_public_url else []),
        ]:
            if len(images) >= limit:
                log.warning(
                    "references beyond the model's limit left out",
                    extra={**(context or {}), "event": "references_truncated", "limit": limit},
                )
                break
            if is_anchor(ref):
                images.append(self.anchors.resolve(ref, job))
                continue
            if packs is not None and ref in packs:
                images += packs[ref]
                continue
            try:
                pack = self.loader.load(ref)
            except PermanentError as exc:
                raise PermanentError(f"reference pack: {exc}") from exc
            if packs is not None:
                packs[ref] = pack
            images += pack
        return images[:limit]
