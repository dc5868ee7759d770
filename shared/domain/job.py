"""A job (one scene of a batch), its variants and their versions: the records every
rule of the pipeline is about. Plain data; the transitions live beside it."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from shared.domain.briefs import RoleReference, Template

# How an image is made: at once (generateContent), or through Gemini's Batch API
# at half the price, within 24 hours.
Lane = Literal["live", "economy"]


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


Decision = Literal["approved", "rejected"]


class Review(BaseModel):
    """The team's decision on one image: what, who, when (``shared/domain/reviews.py``)."""

    decision: Decision
    by: str
    at: datetime


class FinalPick(BaseModel):
    """The scene's final image: version ``version`` of variant ``variant``."""

    variant: int
    version: int
    by: str
    at: datetime


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
    # back for an image never made (once); ``settled_unmade`` says it was given
    # back, so an image that lands after all (a stalled holder's) is charged again.
    settled: bool = False
    settled_unmade: bool = False
    recharged: bool = False
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
    review: Review | None = None

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
    # The request (its idempotency record) that asked for it.
    request_key: str | None = None
    # A promotion: the version it re-makes larger (its image the reference), at
    # ``image_size`` with ``target_model`` (a draft's final model; None: the job's).
    promotes: int | None = None
    image_size: str | None = None
    target_model: str | None = None

    @property
    def kind(self) -> Literal["reroll", "edit", "promote"]:
        if self.promotes is not None:
            return "promote"
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


# quota: a per-minute quota; daily_quota: until midnight Pacific; spend_cap: the
# project's spending cap, which does not pass in a minute.
WaitReason = Literal["quota", "daily_quota", "spend_cap"]
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
    # The prompt sent: composed from ``template`` and the row's columns, with ``avoid``.
    prompt: str
    template: Template | None = None
    avoid: str | None = None
    # Characters, products and a style by name, sent labelled before the pack.
    references: list[RoleReference] = Field(default_factory=list)
    # The row's columns when it was sent (file names of a delivery use them).
    fields: dict[str, str] = Field(default_factory=dict)
    # A draft: made at the cheapest model and size; its picks are promoted to these.
    final_model: str | None = None
    final_size: str | None = None
    # The scene's final pick (``shared/domain/reviews.py``).
    final: FinalPick | None = None
    ref_pack_public_url: str | None = None
    aspect_ratio: str | None = None
    image_size: str | None = None
    variant_count: int
    caller: str
    spreadsheet_id: str
    worksheet: str
    # The tab's id when the batch was sent: its rows follow the tab through a
    # rename, and never go to another tab given its old name (None: by name).
    worksheet_id: int | None = None
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
    # When the sweeper last published it again (a live job no delivery had started).
    republished_at: datetime | None = None
    sheet_digest: str | None = None
    sheet_error: str | None = None
    # Who is writing the sheet row now (one writer per job, so the final row
    # is written once even under duplicate and concurrent events).
    sheet_claim_id: str | None = None
    sheet_claim_expires: datetime | None = None
    # Row writes that landed after their writer's claim ran out (a write that took
    # longer than the lease): a holder that sees this count move while it writes
    # does not trust its own write to be the last one, and writes again.
    sheet_late_writes: int = 0
    # When a claim on the row was taken from a holder that never released it: that
    # holder may still land a write (an old row) until it surely cannot (the end of
    # its function's timeout); the row is written again after that.
    sheet_overtaken_at: datetime | None = None
    # Since when a change's follow-ups (its budget settlement, its sheet row) may
    # not have run; cleared once both are done. The sweeper runs them for a job
    # left so too long (its delivery died between the change and them).
    followups_since: datetime | None = None
    # Batch news (``shared/domain/batch_news.py``): a change that can make news
    # (the job ended, or waits for a lasting quota) sets ``news_due`` to its
    # signature in the same write; telling the team clears it and keeps the
    # signature in ``news_told``. A follow-up like the row and the budget.
    news_due: str | None = None
    news_told: str | None = None

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


def money(value: Decimal) -> str:
    """Dollar amounts travel as fixed-point strings so no float rounding creeps in."""
    return f"{value.quantize(Decimal('0.0001'))}"
