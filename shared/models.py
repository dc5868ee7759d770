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
# How an image is made: at once (generateContent), or through Gemini's Batch API
# at half the price, within 24 hours.
Lane = Literal["live", "economy"]


class Limits(BaseModel):
    """Request limits, taken from settings and passed as validation context."""

    max_items: int = 500
    max_variants: int = 4
    max_prompt_chars: int = 4000
    images_bucket: str = ""
    # gs:// references must lie under it ("" allows none; None, any object: tests).
    references_prefix: str | None = None
    allowed_spreadsheet_ids: tuple[str, ...] = ("*",)
    # The catalog's models, and the shapes the batch's model accepts (empty: any).
    models: tuple[str, ...] = ()
    aspect_ratios: tuple[str, ...] = ()
    image_sizes: tuple[str, ...] = ()
    # The economy lane needs Gemini's Batch API (the Gemini API backend).
    economy_lane: bool = True
    # The batch's model takes at most this many reference images in all.
    max_references: int = 14


def _lane(value: Lane | None, info: ValidationInfo) -> Lane | None:
    if value == "economy" and not _limits(info).economy_lane:
        raise ValueError(
            "economy needs Gemini's Batch API, which this deployment's backend "
            "(GEMINI_BACKEND=vertex) does not offer; use live"
        )
    return value


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
    lane: Lane | None = Field(default=None, description="This scene's lane; default the batch's")
    # What the batch's model accepts is in its catalog entry (GET /models).
    aspect_ratio: str | None = Field(
        default=None, max_length=10, description="One of the model's aspect ratios, e.g. 16:9"
    )
    image_size: str | None = Field(
        default=None, max_length=10, description="One of the model's sizes, e.g. 1K, 2K, 4K"
    )

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

    _item_lane = field_validator("lane")(_lane)

    @field_validator("aspect_ratio", "image_size")
    @classmethod
    def _shape(cls, value: str | None, info: ValidationInfo) -> str | None:
        limits = _limits(info)
        accepted = limits.aspect_ratios if info.field_name == "aspect_ratio" else limits.image_sizes
        if value is not None and accepted and value not in accepted:
            raise ValueError(f"must be one of the model's {', '.join(accepted)}")
        return value

    @field_validator("ref_pack_public_url")
    @classmethod
    def _ref_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value:
            return None
        limits = _limits(info)
        return check_reference(value, limits.images_bucket, limits.references_prefix)


def _style_ref(value: str, info: ValidationInfo) -> str:
    limits = _limits(info)
    return check_reference(value.strip(), limits.images_bucket, limits.references_prefix)


def check_reference(value: str, bucket: str, prefix: str | None = None) -> str:
    """A reference as a request may name it, or ValueError saying what it may be.

    A gs:// object must lie under ``prefix`` (REFERENCES_PREFIX; "" allows none,
    None any object of the bucket): the rest of the bucket is other callers' images,
    which only an anchor may name (and only the caller's own).
    """
    if is_anchor(value):
        if parse_anchor(value) is None:
            raise ValueError(f"must look like {ANCHOR_FORMS}")
        return value
    if value.startswith("https://") and len(value) > len("https://"):
        return value
    readable = f"gs://{bucket}/{prefix}" if prefix is not None else f"gs://{bucket}/"
    if bucket and prefix != "" and value.startswith(readable) and len(value) > len(readable):
        return value
    gcs = bucket and prefix != ""
    allowed = "an https:// URL" + (f", a {readable} object" if gcs else "")
    raise ValueError(f"must be {allowed} or an earlier output ({ANCHOR_FORMS})")


class BatchRequest(BaseModel):
    """Body of ``POST /batch/images``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    items: list[BatchItem] = Field(min_length=1)
    run_mode: Literal["dry_run", "live"] = Field(default="dry_run", alias="runMode")
    model: str | None = Field(
        default=None, max_length=100, description="An image model of the catalog (GET /models)"
    )
    lane: Lane = Field(
        default="live",
        description="live: now; economy: Gemini's Batch API at half price, within 24 hours",
    )
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

    _batch_lane = field_validator("lane")(_lane)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str | None, info: ValidationInfo) -> str | None:
        models = _limits(info).models
        if value is not None and models and value not in models:
            raise ValueError(f"is not in the model catalog; one of {', '.join(models)}")
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
    BATCHED = "batched"  # submitted in a Gemini batch (economy lane), awaiting its results
    UPLOADED = "uploaded"
    DONE = "done"
    FAILED = "failed"
    # Cancelled before its Gemini call (or returned unmade by its Gemini batch after a
    # cancel): never made, its reserved budget given back.
    CANCELLED = "cancelled"


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
    # The budget reserved for this image was corrected to what it cost, or given
    # back for an image never made (once).
    settled: bool = False
    generated_at: datetime | None = None
    done_at: datetime | None = None
    # What generating this variant cost: model, Gemini's usage_metadata token
    # counts and dollars (a fixed-point string, see ``money``).
    model: str | None = None
    usage: dict[str, int] = Field(default_factory=dict)
    cost_usd: str | None = None
    # A cancel reached the image while its call (or its Gemini batch) may have been
    # running: if that gives it back unmade, it is cancelled instead of retried.
    cancel_requested: bool = False

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
    # The economy batch (our record id) this variant was submitted in.
    gemini_batch: str | None = None
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
GeminiBatchState = Literal[
    "claimed", "pending", "running", "succeeded", "failed", "cancelled", "expired"
]


class GeminiBatchRef(BaseModel):
    """A Gemini batch some of the job's variants were submitted in (economy lane)."""

    record: str  # our record (economy_batches/{record})
    name: str | None = None  # Gemini's batches/..., once created
    state: GeminiBatchState = "claimed"


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
    # The estimate per image the budget reserved (catalog price at the size plus the
    # estimated input tokens), on the UTC day ``budget_day``.
    price_per_image: str
    # The batch's style references, applied before the item's own pack.
    style_refs: list[str] = Field(default_factory=list)
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
    lane: Lane = "live"
    gemini_batches: list[GeminiBatchRef] = Field(default_factory=list)
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


EconomyBatchState = Literal[
    "claiming",  # variants being claimed; not yet sent to Gemini
    "submitted",  # created at Gemini; its name is known
    "pending",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "expired",
    "collected",  # results stored (or unfinished variants sent on): nothing left to do
]
OPEN_ECONOMY_STATES = ("claiming", "submitted", "pending", "running", "succeeded")


class EconomyBatch(BaseModel):
    """Our record of one Gemini batch: what it holds, where it is, who works on it."""

    record_id: str
    model: str
    aspect_ratio: str | None = None
    image_size: str | None = None
    items: list[str]  # "job_id/n", one request line each
    state: EconomyBatchState = "claiming"
    gemini_name: str | None = None
    inline: bool = False
    error: str | None = None
    created_at: datetime
    updated_at: datetime
    # One submitter or collector at a time (a lease that a dead instance loses).
    lease_holder: str | None = None
    lease_expires: datetime | None = None

    @property
    def open(self) -> bool:
        return self.state in OPEN_ECONOMY_STATES


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
