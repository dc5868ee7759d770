"""A job's reference images for one Gemini call, in the live lane and the economy lane.

The row's named references come first (characters, then products and style images,
each image labelled with what it is), then the batch's style references (labelled
the style when the row names any reference), then the item's own pack, up to the
job's model's ``max_reference_images`` in the catalog (and this deployment's own
cap, ``REFERENCE_MAX_IMAGES``); characters and objects each within the model's
own count where the catalog gives one. A style anchor (``scene:``/``job:``) is read from
the images bucket as the job's caller may see it; anything else goes through the
reference loader with its address checks and limits.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property

from shared.config.settings import Settings
from shared.domain.anchors import is_anchor
from shared.domain.briefs import ROLES, Label, RoleReference
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
        entry = self.settings.catalog.entry(job.model)
        kinds = {
            "character": entry.max_character_references if entry else None,
            "object": entry.max_object_references if entry else None,
        }
        used = {"character": 0, "object": 0}
        # Style images count as objects; they are named in words only beside the
        # row's own named references (a job without any is sent as before).
        style = Label("style") if job.references else None
        named: list[tuple[str, Label | None, str | None]] = [
            *(
                (r.ref, r.label, "character" if r.role == "character" else "object")
                for r in sorted(job.references, key=_characters_first)
            ),
            *((ref, style, "object") for ref in job.style_refs),
            *([(job.ref_pack_public_url, None, None)] if job.ref_pack_public_url else []),
        ]
        images: list[ReferenceImage] = []
        for ref, label, kind in named:
            if len(images) >= limit:
                self._left_out(context, "references_truncated", limit)
                break
            loaded = self._read(ref, job, packs)
            most = kinds[kind] if kind is not None else None
            if kind is not None and most is not None and used[kind] + len(loaded) > most:
                self._left_out(context, f"{kind}_references_truncated", most)
                loaded = loaded[: max(0, most - used[kind])]
            if kind is not None:
                used[kind] += len(loaded)
            if label is not None:
                loaded = [replace(image, label=label) for image in loaded]
            images += loaded
        return images[:limit]

    def _read(
        self, ref: str, job: Job, packs: dict[str, list[ReferenceImage]] | None
    ) -> list[ReferenceImage]:
        if is_anchor(ref):
            return [self.anchors.resolve(ref, job)]
        if packs is not None and ref in packs:
            return packs[ref]
        try:
            pack = self.loader.load(ref)
        except PermanentError as exc:
            raise PermanentError(f"reference pack: {exc}") from exc
        if packs is not None:
            packs[ref] = pack
        return pack

    @staticmethod
    def _left_out(context: Mapping[str, object] | None, event: str, limit: int) -> None:
        log.warning(
            "references beyond the model's limit left out",
            extra={**(context or {}), "event": event, "limit": limit},
        )


def _characters_first(ref: RoleReference) -> int:
    """Characters, then products, then style images (a stable sort keeps table order)."""
    return ROLES.index(ref.role)
