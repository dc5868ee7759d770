"""Domain records: batch requests, jobs and their variants. No cloud imports here."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.anchors import ANCHOR_FORMS, is_anchor, parse_anchor

SCENE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Limits(BaseModel):
    """Request limits, taken from settings and passed as validation context."""

    max_items: int = 500
    max_variants: int = 4
    max_prompt_chars: int = 4000
    images_bucket: str = ""
    allowed_spreadsheet_ids: tuple[str, ...] = ("*",)
    # The batch's model takes at most this many reference images in all.
    max_references: int = 14


def _limits(info: ValidationInfo) -> Limits:
    context = info.context or {}
    limits = context.get("limits")
    return limits if isinstance(limits, Limits) else Limits()


class BatchItem(BaseModel):
    """One scene row of the sheet."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    scene_id: str = Field(json_schema_extra={"pattern": SCENE_ID_PATTERN.pattern})
    prompt: str = Field(min_length=1, description="At most MAX_PROMPT_CHARS characters")
    ref_pack_public_url: str | None = Field(
        default=None,
        max_length=2048,
        description="An https:// URL, a gs:// object of the images bucket, or an earlier "
        "output: scene:<scene_id>#<variant> or job:<job_id>#<variant>",
    )
    variants: int = Field(ge=1, description="1 to MAX_VARIANTS (default 4)")
    # The values the Gemini image models accept (GUIDE.md, section 3).
    aspect_ratio: Literal["1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9", "21:9"] | None = None
    image_size: Literal["1K", "2K", "4K"] | None = None

    @field_validator("scene_id")
    @classmethod
    def _scene_id(cls, value: str) -> str:
        if not SCENE_ID_PATTERN.fullmatch(value):
            raise ValueError(
                "must be 1-64 characters: letters, digits, '_', '-' or '.', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str, info: ValidationInfo) -> str:
        limit = _limits(info).max_prompt_chars
        if len(value) > limit:
            raise ValueError(f"is {len(value)} characters long; the limit is {limit}")
        return value

    @field_validator("variants")
    @classmethod
    def _variants(cls, value: int, info: ValidationInfo) -> int:
        limit = _limits(info).max_variants
        if value > limit:
            raise ValueError(f"must be between 1 and {limit}")
        return value

    @field_validator("ref_pack_public_url")
    @classmethod
    def _ref_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value:
            return None
        return check_reference(value, _limits(info).images_bucket)


def _style_ref(value: str, info: ValidationInfo) -> str:
    return check_reference(value.strip(), _limits(info).images_bucket)


def check_reference(value: str, bucket: str) -> str:
    """A reference as a request may name it, or ValueError saying what it may be."""
    if is_anchor(value):
        if parse_anchor(value) is None:
            raise ValueError(f"must look like {ANCHOR_FORMS}")
        return value
    if value.startswith("https://") and len(value) > len("https://"):
        return value
    if bucket and value.startswith(f"gs://{bucket}/") and len(value) > len(f"gs://{bucket}/"):
        return value
    allowed = "an https:// URL" + (f", a gs://{bucket}/ object" if bucket else "")
    raise ValueError(f"must be {allowed} or an earlier output ({ANCHOR_FORMS})")


class BatchRequest(BaseModel):
    """Body of ``POST /batch/images``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    items: list[BatchItem] = Field(min_length=1)
    run_mode: Literal["dry_run", "live"] = Field(default="dry_run", alias="runMode")
    spreadsheet_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+$")
    worksheet: str = Field(min_length=1, max_length=100)
    style_refs: list[Annotated[str, AfterValidator(_style_ref)]] = Field(
        default_factory=list,
        description="References applied to every item, before each item's own pack: "
        "https:// URLs, gs:// objects of the images bucket, scene:<scene_id>#<variant> or "
        "job:<job_id>#<variant>; at most the model's reference limit",
    )

    @field_validator("style_refs")
    @classmethod
    def _style_refs(cls, value: list[str], info: ValidationInfo) -> list[str]:
        limits = _limits(info)
        if len(value) > limits.max_references:
            raise ValueError(
                f"has {len(value)} references; the model takes at most {limits.max_references}"
            )
        return value

    @field_validator("spreadsheet_id")
    @classmethod
    def _allowed_sheet(cls, value: str, info: ValidationInfo) -> str:
        allowed = _limits(info).allowed_spreadsheet_ids
        if "*" not in allowed and value not in allowed:
            raise ValueError("is not in this deployment's allowlist of spreadsheets")
        return value

    @field_validator("items")
    @classmethod
    def _count(cls, value: list[BatchItem], info: ValidationInfo) -> list[BatchItem]:
        limit = _limits(info).max_items
        if len(value) > limit:
            raise ValueError(f"has {len(value)} items; the limit is {limit}")
        return value

    @model_validator(mode="after")
    def _unique_scenes(self) -> BatchRequest:
        seen: set[str] = set()
        for item in self.items:
            if item.scene_id in seen:
                raise ValueError(f"scene_id {item.scene_id!r} appears more than once")
            seen.add(item.scene_id)
        return self


class RerollRequest(BaseModel):
    """Body of ``POST /jobs/{job_id}/variants/{n}:reroll`` (may be empty)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    instruction: str | None = Field(
        default=None,
        description="An edit of the current image (at most MAX_PROMPT_CHARS characters); "
        "none: a fresh generation of the variant with a new seed",
    )

    @field_validator("instruction")
    @classmethod
    def _instruction(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value:
            return None
        limit = _limits(info).max_prompt_chars
        if len(value) > limit:
            raise ValueError(f"is {len(value)} characters long; the limit is {limit}")
        return value


class VariantState(StrEnum):
    PENDING = "pending"
    GENERATING = "generating"
    UPLOADED = "uploaded"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # cancelled before its Gemini call: never made, never paid


class JobState(StrEnum):
    QUEUED = "queued"
    GENERATING = "generating"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"  # ended by a cancel: what was made is kept


AssetSize = Literal["thumb", "full"]
ASSET_SIZES: tuple[AssetSize, ...] = ("thumb", "full")

TERMINAL_VARIANT_STATES = frozenset(
    {VariantState.DONE, VariantState.FAILED, VariantState.CANCELLED}
)
TERMINAL_JOB_STATES = frozenset(
    {JobState.COMPLETED, JobState.PARTIAL, JobState.FAILED, JobState.CANCELLED}
)


class ImageSlot(BaseModel):
    """One image to make and pay for once: a variant's first version, or a later one."""

    state: VariantState = VariantState.PENDING
    object_name: str | None = None
    thumb_name: str | None = None
    content_type: str | None = None
    error: str | None = None
    claim_id: str | None = None
    claim_expires: datetime | None = None
    attempts: int = 0
    # Real failed attempts (Gemini errors other than quota, timeouts, a holder that
    # died): the variant fails after GEMINI_FAILURE_BUDGET of them. Waiting (for the
    # quota, a claim, a sheet slot) never counts, however often Pub/Sub redelivers.
    failures: int = 0
    generated_at: datetime | None = None
    done_at: datetime | None = None
    # What generating this variant cost: model, Gemini's usage_metadata token
    # counts and dollars (a fixed-point string, see ``money``).
    model: str | None = None
    usage: dict[str, int] = Field(default_factory=dict)
    cost_usd: str | None = None
    # A cancel reached the image while its call may have been running: if that
    # call gives it back unmade, it is cancelled instead of retried.
    cancel_requested: bool = False
    # The budget reserved for an image that was cancelled unmade was given back.
    refunded: bool = False

    def asset_name(self, size: AssetSize) -> str | None:
        """The object behind the image's ``full`` size or ``thumb``, once it is ready.

        The one readiness rule of ``/status`` links and ``/assets`` redirects.
        """
        if size == "thumb":
            return self.thumb_name if self.state == VariantState.DONE else None
        ready = self.state in (VariantState.UPLOADED, VariantState.DONE)
        return self.object_name if ready else None

    @property
    def kept(self) -> bool:
        """An image that exists (and was paid for)."""
        return self.object_name is not None and self.state in (
            VariantState.UPLOADED,
            VariantState.DONE,
        )


class Version(ImageSlot):
    """A re-roll (new seed) or an edit (an instruction on the current image) of a
    variant; version 1 is the variant itself, so its links and names never change."""

    version: int = Field(ge=2)
    instruction: str | None = None
    seed: int
    # The image an edit starts from: the variant's newest image when it was asked for.
    source_object: str | None = None
    source_version: int | None = None
    requested_at: datetime
    # Whose budget paid for it, on which UTC day, at which price.
    caller: str
    budget_day: str
    price_per_image: str

    @property
    def kind(self) -> Literal["reroll", "edit"]:
        return "edit" if self.instruction else "reroll"


class Variant(ImageSlot):
    """State of one generated image of a job (its version 1) and of its later versions."""

    n: int
    versions: list[Version] = Field(default_factory=list)

    def slot(self, version: int = 1) -> ImageSlot:
        """Version ``version`` of the image; KeyError if there is no such version."""
        if version == 1:
            return self
        for candidate in self.versions:
            if candidate.version == version:
                return candidate
        raise KeyError(version)

    def slots(self) -> list[tuple[int, ImageSlot]]:
        """Every version, oldest first."""
        return [(1, self), *((v.version, v) for v in self.versions)]

    def current(self) -> tuple[int, ImageSlot]:
        """The version the sheet shows: the newest with a finished image, else version 1."""
        for number, slot in reversed(self.slots()):
            if slot.state == VariantState.DONE:
                return number, slot
        return 1, self


WaitReason = Literal["quota", "daily_quota"]


class Waiting(BaseModel):
    """Why a job makes no progress for now, and until when (about)."""

    reason: WaitReason
    until: datetime
    since: datetime


class Job(BaseModel):
    """One scene of a batch: the unit that is published, generated and reported."""

    job_id: str
    batch_id: str
    scene_id: str
    prompt: str
    ref_pack_public_url: str | None = None
    aspect_ratio: str | None = None
    image_size: str | None = None
    variant_count: int
    caller: str
    spreadsheet_id: str
    worksheet: str
    model: str
    price_per_image: str
    # The batch's style references, applied before the item's own pack.
    style_refs: list[str] = Field(default_factory=list)
    # The UTC day whose budget the job's images were reserved on (None: created_at's).
    budget_day: str | None = None
    cancelled_at: datetime | None = None
    cancelled_by: str | None = None
    state: JobState = JobState.QUEUED
    error: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    variants: dict[str, Variant] = Field(default_factory=dict)
    waiting: Waiting | None = None
    sheet_digest: str | None = None
    sheet_error: str | None = None
    # Who is writing the sheet row now (one writer per job, so the final row
    # is written once even under duplicate and concurrent events).
    sheet_claim_id: str | None = None
    sheet_claim_expires: datetime | None = None

    @model_validator(mode="after")
    def _fill_variants(self) -> Job:
        for n in range(1, self.variant_count + 1):
            self.variants.setdefault(str(n), Variant(n=n))
        return self

    def variant(self, n: int) -> Variant:
        return self.variants[str(n)]

    def slot(self, n: int, version: int = 1) -> ImageSlot:
        return self.variant(n).slot(version)

    @property
    def reserved_day(self) -> str:
        return self.budget_day or self.created_at.strftime("%Y-%m-%d")

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_JOB_STATES

    def cost(self) -> Decimal:
        """What the job's generated images (every version) cost."""
        return sum(
            (
                Decimal(slot.cost_usd)
                for v in self.variants.values()
                for _, slot in v.slots()
                if slot.cost_usd
            ),
            Decimal(0),
        )

    def counts(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for v in self.variants.values():
            result[v.state.value] = result.get(v.state.value, 0) + 1
        return result

    def to_doc(self) -> dict[str, Any]:
        return self.model_dump(mode="python")

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Job:
        return cls.model_validate(doc)


class Batch(BaseModel):
    """A submitted batch: who sent it and which jobs it made."""

    batch_id: str
    caller: str
    spreadsheet_id: str
    worksheet: str
    model: str
    job_ids: list[str]
    image_count: int
    estimated_cost_usd: str
    created_at: datetime
    # The batch's latest hand-over zip (shared/exports.py).
    export: Export | None = None

    def to_doc(self) -> dict[str, Any]:
        return self.model_dump(mode="python")


ExportState = Literal["queued", "running", "done", "failed"]


class Export(BaseModel):
    """One hand-over zip of a batch: every kept image at full size and a manifest."""

    export_id: str
    state: ExportState = "queued"
    requested_by: str
    requested_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    deliveries: int = 0
    object_name: str | None = None
    images: int | None = None
    bytes: int | None = None
    error: str | None = None


class ExportMessage(BaseModel):
    """Pub/Sub payload asking the exporter for one zip."""

    batch_id: str
    export_id: str


class JobMessage(BaseModel):
    """Pub/Sub payload of one job; Firestore stays the source of truth.

    With ``variant`` and ``version`` it asks for that one later version (a re-roll
    or an edit) instead of the job's first images.
    """

    job_id: str
    batch_id: str
    scene_id: str
    variant: int | None = None
    version: int | None = None


def money(value: Decimal) -> str:
    """Dollar amounts travel as fixed-point strings so no float rounding creeps in."""
    return f"{value.quantize(Decimal('0.0001'))}"
