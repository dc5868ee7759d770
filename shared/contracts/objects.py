"""The contract between stages about stored objects: their names and their metadata.

Generation names an image and writes its metadata; the finalize notification
carries both to the thumbnail function; the dead-letter handler and
``/assets`` read them again. All of them build and parse through this module.

``images/{scene_id}/{job_id}/var_{n}.{ext}`` is the image of variant ``n``
(its version 1, so names and links made before versions existed stay valid);
``var_{n}_v{k}.{ext}`` its version ``k`` (a re-roll or an edit). A thumbnail
keeps the image's path under the thumbnails prefix. A batch's hand-over zip is
``{exports prefix}{batch_id}/{export_id}.zip``, outside the notified prefix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from shared.domain.job import Job
from shared.domain.lifecycle import Spent

# The file name extension of each image type we store, and back.
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
MIME_TYPES = {extension: mime for mime, extension in EXTENSIONS.items()}

# Object metadata keys.
JOB_ID = "job_id"
BATCH_ID = "batch_id"
SCENE_ID = "scene_id"
VARIANT = "variant"
VERSION = "version"
MODEL = "model"
COST_USD = "cost_usd"
# Token counts of the generation, one key each (Gemini's usage_metadata).
TOKEN_KEYS = (
    "prompt_tokens",
    "output_tokens",
    "output_image_tokens",
    "thought_tokens",
    "total_tokens",
)
# On thumbnails: the marker that keeps a thumbnail from being thumbnailed, and its image.
THUMBNAIL_MARKER = "pipeline-thumbnail"
SOURCE = "source"

_IMAGE_TAIL = re.compile(
    r"(?P<scene>[^/]+)/(?P<job>[^/]+)/var_(?P<n>[0-9]+)(?:_v(?P<k>[0-9]+))?\.(?P<ext>[a-z]+)"
)


@dataclass(frozen=True)
class VariantKey:
    """Which variant (and version) of which job an object belongs to."""

    job_id: str
    n: int
    version: int = 1


@dataclass(frozen=True)
class ImageName:
    """The parts of an image object's name."""

    scene_id: str
    job_id: str
    n: int
    extension: str
    version: int = 1

    @property
    def mime_type(self) -> str | None:
        return MIME_TYPES.get(self.extension)


@dataclass(frozen=True)
class ObjectNames:
    """Builds and parses the names under the configured prefixes."""

    images_prefix: str
    thumbnails_prefix: str
    exports_prefix: str = "exports/"

    def image_stem(self, job: Job, n: int, version: int = 1) -> str:
        """The image's name without its extension (which depends on the format)."""
        return f"{self.images_prefix}{job.scene_id}/{job.job_id}/{variant_file(n, version)}."

    def image(self, job: Job, n: int, mime_type: str, version: int = 1) -> str:
        return self.image_stem(job, n, version) + EXTENSIONS[mime_type]

    def parse_image(self, name: str) -> ImageName | None:
        """The parts of an image name, or None if ``name`` is not one."""
        if not name.startswith(self.images_prefix):
            return None
        match = _IMAGE_TAIL.fullmatch(name[len(self.images_prefix) :])
        if match is None or match["k"] == "1":
            return None
        version = int(match["k"]) if match["k"] else 1
        return ImageName(match["scene"], match["job"], int(match["n"]), match["ext"], version)

    def thumbnail(self, image_name: str, thumbnail_mime: str) -> str:
        """``images/s/j/var_1.png`` -> ``thumbnails/s/j/var_1.jpg``, outside the notified prefix."""
        stem = image_name.removeprefix(self.images_prefix).rsplit(".", 1)[0]
        return f"{self.thumbnails_prefix}{stem}.{EXTENSIONS[thumbnail_mime]}"

    def export(self, batch_id: str, export_id: str, delivery: int) -> str:
        """A batch's hand-over zip, outside the notified prefix: one per delivery that
        writes it, so the zip an export records is one its writer saw to the end."""
        return f"{self.exports_prefix}{batch_id}/{export_id}-{delivery}.zip"

    def export_joined(self, batch_id: str, export_id: str, delivery: int) -> str:
        """A zip written in parts, joined by the delivery that wrote its last one."""
        return f"{self.exports_prefix}{batch_id}/{export_id}-{delivery}-joined.zip"

    @staticmethod
    def zip_member(scene_id: str, n: int, version: int, image_name: str) -> str:
        """An image's path inside the zip: ``{scene_id}/var_{n}[_v{k}].{ext}``."""
        extension = image_name.rsplit(".", 1)[-1]
        return f"{scene_id}/{variant_file(n, version)}.{extension}"


def variant_file(n: int, version: int = 1) -> str:
    """``var_2`` for version 1, ``var_2_v3`` for version 3 (no extension)."""
    return f"var_{n}" if version == 1 else f"var_{n}_v{version}"


def image_metadata(job: Job, n: int, spent: Spent, version: int = 1) -> dict[str, str]:
    """What generation writes on an image: whose it is and what it cost."""
    return {
        JOB_ID: job.job_id,
        SCENE_ID: job.scene_id,
        BATCH_ID: job.batch_id,
        VARIANT: str(n),
        **({VERSION: str(version)} if version != 1 else {}),
        MODEL: spent.model,
        COST_USD: spent.cost_usd,
        **{key: str(value) for key, value in spent.usage.items() if key in TOKEN_KEYS},
    }


def thumbnail_metadata(image_name: str, key: VariantKey) -> dict[str, str]:
    return {
        THUMBNAIL_MARKER: "1",
        SOURCE: image_name,
        JOB_ID: key.job_id,
        VARIANT: str(key.n),
        **({VERSION: str(key.version)} if key.version != 1 else {}),
    }


def is_thumbnail(metadata: Mapping[str, str]) -> bool:
    return bool(metadata.get(THUMBNAIL_MARKER))


def variant_key(metadata: Mapping[str, str]) -> VariantKey | None:
    """The job and variant an object's metadata names, if it names them well."""
    job_id, n = metadata.get(JOB_ID, ""), metadata.get(VARIANT, "")
    version = metadata.get(VERSION, "1")
    if not job_id or not n.isdigit() or not version.isdigit() or int(version) < 1:
        return None
    return VariantKey(job_id, int(n), int(version))


def recorded_spent(metadata: Mapping[str, str]) -> Spent | None:
    """The cost recorded on an image, if generation wrote one."""
    model, cost = metadata.get(MODEL), metadata.get(COST_USD)
    if not model or not cost:
        return None
    try:
        if not Decimal(cost).is_finite():
            return None
    except InvalidOperation:
        return None
    usage = {key: int(metadata[key]) for key in TOKEN_KEYS if metadata.get(key, "").isdigit()}
    return Spent(model=model, cost_usd=cost, usage=usage)
