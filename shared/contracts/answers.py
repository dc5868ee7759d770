"""Shapes of the HTTP API's answers; the OpenAPI document is generated from them."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.domain.catalog import Catalog


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ErrorDetail(_Answer):
    field: str = Field(description="Path of the offending field, e.g. items[2].variants")
    reason: str


class ErrorBody(_Answer):
    error: str = Field(description="Machine-readable code, e.g. invalid_request")
    message: str
    details: list[ErrorDetail] | None = None
    budget: Budget | None = None
    model: str | None = Field(default=None, description="The model a 422 model_unavailable names")
    replacement: str | None = Field(
        default=None, description="The model Google names instead of a shut-down one"
    )


class Health(_Answer):
    ok: bool


class Budget(_Answer):
    """The caller's daily allowance (UTC day) and what this batch would use of it."""

    day: str
    images_limit: int
    images_used: int
    images_requested: int
    images_remaining: int
    cost_limit_usd: str
    cost_used_usd: str
    cost_requested_usd: str
    cost_remaining_usd: str


class Warning(_Answer):
    scene_id: str | None = Field(
        default=None, description="The scene it is about; none for the whole batch (its model)"
    )
    message: str


class PlanJob(_Answer):
    scene_id: str
    variants: int
    model: str = Field(default="", description="The model this scene is made with")
    prompt: str = Field(
        default="", description="The prompt as sent: composed from the template, with avoid"
    )
    lane: Literal["live", "economy"] = "live"
    image_size: str = Field(description="The size the images are made and priced at")
    reference_images: int = Field(
        description="Reference images each call sends (for a zip or manifest: at most)"
    )
    estimated_cost_per_image_usd: str
    estimated_cost_usd: str
    final_model: str | None = Field(
        default=None, description="A draft's picks are promoted to this model (drafts only)"
    )
    final_size: str | None = Field(default=None, description="... at this size (drafts only)")


class DeliveryPaths(_Answer):
    """Cost per delivered image (one pick per scene), both ways."""

    every_image_final_usd: str = Field(
        description="Every variant made at the final model and size, one delivered per scene"
    )
    drafts_then_promote_usd: str = Field(
        description="Every variant made as a draft (the catalog's cheapest model and size "
        "for the job), and the pick promoted to the final model and size"
    )
    saving: str = Field(description="What the drafts path saves, as a share")


class _Costed(_Answer):
    """What every batch answer says about the model, images, money and budget."""

    delivered: DeliveryPaths | None = Field(
        default=None, description="Cost per delivered image: drafts then promote, or not"
    )
    model: str
    price_per_image_usd: str = Field(description="The estimate per image, on average")
    job_count: int
    image_count: int
    estimated_cost_usd: str
    lanes: dict[str, str] = Field(
        default_factory=dict,
        description="The whole batch's estimate in each lane (live, economy), side by side",
    )
    economy: str = Field(default="", description="What the economy lane means")
    estimate_notes: list[str] = Field(description="Which parts of the estimate are estimates")
    budget: Budget
    warnings: list[Warning]


class Plan(_Costed):
    """What a batch does and costs (dry run), also the base of the live answer."""

    run_mode: Literal["dry_run", "live"] = Field(alias="runMode")
    jobs: list[PlanJob]


class SubmittedJob(_Answer):
    scene_id: str
    job_id: str
    variants: int
    state: Literal["queued", "failed"] = "queued"
    error: str | None = None


class Submitted(_Costed):
    """The 202 answer of a live batch (and of its idempotent replays)."""

    run_mode: Literal["live"] = Field(alias="runMode")
    batch_id: str
    jobs: list[SubmittedJob]
    unpublished: list[str] = Field(
        default_factory=list,
        description="Job ids that could not be queued: none, since a batch whose jobs "
        "cannot all be queued answers 503, and a retry with the same Idempotency-Key "
        "finishes it (as the server does by itself within minutes)",
    )


ImageState = Literal["pending", "generating", "batched", "uploaded", "done", "failed", "cancelled"]
JobStateName = Literal["queued", "generating", "completed", "partial", "failed", "cancelled"]


class ReviewView(_Answer):
    """The team's decision on one image."""

    decision: Literal["approved", "rejected"]
    by: str
    at: str


class FinalView(_Answer):
    """The scene's final pick."""

    variant: int
    version: int
    by: str
    at: str


class VersionView(_Answer):
    """One version of a variant: the first image, a re-roll, an edit or a promotion."""

    version: int
    kind: Literal["original", "reroll", "edit", "promote"]
    state: ImageState
    instruction: str | None = Field(default=None, description="What an edit asked for")
    image_size: str | None = Field(
        default=None, description="The size it is made at, when not the job's (a promotion)"
    )
    promotes: int | None = Field(default=None, description="The version a promotion re-makes")
    review: ReviewView | None = None
    error: str | None = None
    image_url: str | None = Field(default=None, description="Durable link to the full image")
    thumbnail_url: str | None = None
    cost_usd: str | None = None
    model: str | None = None
    created_at: str = Field(description="When it was asked for")
    generated_at: str | None = None


class VariantView(_Answer):
    variant: int
    state: ImageState = Field(description="State of the variant's first version")
    error: str | None = None
    failures: int = Field(
        default=0, description="Real failed attempts so far (waits for the quota never count)"
    )
    image_url: str | None = Field(
        default=None, description="The current version's full image (what the sheet shows)"
    )
    thumbnail_url: str | None = None
    cost_usd: str | None = Field(default=None, description="What this image cost, when made")
    current_version: int = Field(
        default=1, description="The newest version with a finished image (else 1)"
    )
    versions: list[VersionView] = Field(
        default_factory=list, description="Every version, oldest first, with its link and cost"
    )


class Progress(_Answer):
    """How many of the job's images are finished, for machines (the sheet script)."""

    done: int = Field(description="Variants with their image and thumbnail")
    failed: int = Field(description="Variants that failed for good")
    total: int


class GeminiBatchView(_Answer):
    """A Gemini batch (economy lane) some of the job's images are in."""

    name: str | None = Field(default=None, description="Gemini's batches/..., once created")
    state: str = Field(
        description="claimed, pending, running, succeeded, failed, cancelled, expired"
    )


class WaitingView(_Answer):
    """Why the job makes no progress for now."""

    reason: Literal["quota", "daily_quota", "spend_cap"] = Field(
        description="quota: Gemini's per-minute quota; daily_quota: paused until midnight "
        "Pacific; spend_cap: the project's Gemini spending cap was reached (tried again now "
        "and then; raising the cap in AI Studio resumes it)"
    )
    until: str = Field(description="About when calls resume (ISO 8601, UTC)")
    since: str


class JobView(_Answer):
    job_id: str
    batch_id: str
    scene_id: str
    state: JobStateName
    status_text: str = Field(description="What the sheet's status_img shows; for people")
    progress: Progress
    lane: Literal["live", "economy"] = "live"
    gemini_batches: list[GeminiBatchView] = Field(default_factory=list)
    waiting: WaitingView | None = None
    error: str | None = None
    sheet_error: str | None = Field(
        default=None,
        description="Why the scene's sheet row could not be (fully) written, e.g. no such row",
    )
    model: str
    prompt: str = Field(default="", description="The prompt sent (composed from the template)")
    template: str | None = Field(default=None, description="The template's name, if any")
    references: list[str] = Field(
        default_factory=list, description="The named references: '<role> <name>' each"
    )
    image_size: str | None = Field(
        default=None, description="The size its images are made at (None: the model's default)"
    )
    final: FinalView | None = Field(default=None, description="The scene's final pick")
    draft: bool = Field(
        default=False, description="Made as a draft: promote its picks to final_model"
    )
    final_model: str | None = None
    final_size: str | None = None
    variants: list[VariantView]
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    cancelled_at: str | None = None
    cost_usd: str = Field(
        description="Real cost so far, every version included (compare with the dry-run estimate)"
    )


class ExportView(_Answer):
    """The batch's latest hand-over zip."""

    export_id: str
    state: Literal["queued", "running", "done", "failed"]
    requested_at: str
    started_at: str | None = None
    finished_at: str | None = None
    images: int | None = Field(default=None, description="Images in the zip (or delivered)")
    bytes: int | None = None
    download_url: str | None = Field(
        default=None, description="Durable link (redirects to a short-lived signed URL) once done"
    )
    error: str | None = None
    only: Literal["all", "approved", "final"] = "all"
    name_template: str | None = None
    destination: Literal["zip", "drive"] = "zip"
    drive_folder_id: str | None = None
    added: int | None = Field(
        default=None, description="Drive: files this export put in the folder"
    )
    present: int | None = Field(
        default=None, description="Drive: files found there already (not made again)"
    )


class BatchView(_Answer):
    batch_id: str
    created_at: str
    image_count: int
    estimated_cost_usd: str
    cost_usd: str = Field(description="What the batch's images actually cost so far")
    counts: dict[str, int]
    events: list[Literal["ended", "failures", "paused_daily_quota", "paused_spend_cap"]] = Field(
        default_factory=list,
        description="What the team is told about now: ended (every job ended), failures "
        "(more than NOTIFY_FAILURE_SHARE of the jobs failed while others run), "
        "paused_daily_quota, paused_spend_cap",
    )
    jobs: list[JobView]
    export: ExportView | None = None


class JobCancelled(_Answer):
    """What a cancel did to one job."""

    job_id: str
    scene_id: str
    outcome: Literal["cancelled", "cancelling", "already_cancelled", "already_finished"] = Field(
        description="cancelled: nothing runs any more; cancelling: ends when the images whose "
        "Gemini call is running are made (they are kept); already_*: nothing was changed"
    )
    state: JobStateName
    status_text: str
    stopped: int = Field(description="Images stopped before their Gemini call (budget given back)")
    running: int = Field(description="Images whose Gemini call is running: they finish, kept")
    kept: int = Field(description="Variants with an image")


class BatchCancelled(_Answer):
    batch_id: str
    stopped: int
    running: int
    kept: int
    jobs: list[JobCancelled]


class ReviewAnswer(_Answer):
    """What a review decision or a final pick did."""

    job_id: str
    variant: int | None
    version: int | None
    decision: Literal["approved", "rejected", "none", "final"]
    final: FinalView | None = None
    by: str
    at: str


class RerollAccepted(_Answer):
    """A new version of a variant was queued (or this replays that first answer)."""

    job_id: str
    variant: int
    version: int
    kind: Literal["reroll", "edit", "promote"]
    instruction: str | None = None
    state: Literal["queued", "failed"]
    error: str | None = None
    price_per_image_usd: str
    budget: Budget


class ModelView(_Answer):
    """One image model of the catalog."""

    name: str
    label: str = Field(description="Google's name for it, e.g. Nano Banana 2.1")
    default: bool = Field(description="The deployment's GEMINI_MODEL")
    status: Literal["ga", "preview", "deprecated", "shut_down"]
    replacement: str | None = Field(
        default=None, description="The model Google recommends instead (deprecated, shut down)"
    )
    shutdown_date: str | None = Field(default=None, description="Announced by Google (ISO date)")
    notice: str | None = Field(default=None, description="What is going away, and when, in words")
    checked_on: str = Field(description="When this entry was checked against Google's pages")
    aspect_ratios: list[str]
    image_sizes: list[str]
    default_image_size: str
    max_reference_images: int
    max_object_references: int | None = None
    max_character_references: int | None = None
    price_per_image_usd: dict[str, dict[str, str]] = Field(
        description="By lane (live, batch: Gemini's Batch API), then by image size"
    )


class ModelList(_Answer):
    models: list[ModelView]


def model_list(catalog: Catalog, default: str, today: date) -> ModelList:
    return ModelList(
        models=[
            ModelView(
                name=name,
                label=entry.label or name,
                default=name == default,
                status=entry.status,
                replacement=entry.replacement,
                shutdown_date=entry.shutdown_date.isoformat() if entry.shutdown_date else None,
                notice=entry.notice(name, today),
                checked_on=entry.checked_on.isoformat(),
                aspect_ratios=list(entry.aspect_ratios),
                image_sizes=list(entry.image_sizes),
                default_image_size=entry.default_image_size,
                max_reference_images=entry.max_reference_images,
                max_object_references=entry.max_object_references,
                max_character_references=entry.max_character_references,
                price_per_image_usd={
                    lane: {size: str(price) for size, price in prices.items()}
                    for lane, prices in entry.price_per_image.items()
                },
            )
            for name, entry in sorted(catalog.models.items())
        ]
    )


class ModelLimits(_Answer):
    """What one model of the catalog accepts in this deployment."""

    aspect_ratios: list[str]
    image_sizes: list[str]
    default_image_size: str
    max_reference_images: int = Field(
        description="The model's limit, within the deployment's REFERENCE_MAX_IMAGES"
    )
    max_character_references: int | None = Field(
        default=None, description="Characters a call may name (None: only the total binds)"
    )
    max_object_references: int | None = Field(
        default=None,
        description="Products and style images a call may name (None: only the total binds)",
    )


class DeploymentLimits(_Answer):
    """What this deployment accepts: the sheet checks rows against it before sending."""

    max_items_per_batch: int
    max_variants: int
    max_prompt_chars: int
    max_body_bytes: int
    default_model: str = Field(description="The deployment's GEMINI_MODEL")
    lanes: list[Literal["live", "economy"]] = Field(
        description="economy needs Gemini's Batch API (not offered with GEMINI_BACKEND=vertex)"
    )
    models: dict[str, ModelLimits]


ErrorBody.model_rebuild()
