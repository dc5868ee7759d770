"""The read side: jobs, batches, zips and the day's budget as answers show them
(``/status``, ``/batches/{id}``, cancels, re-rolls and batch answers)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from shared.config.settings import Settings
from shared.contracts.answers import (
    BatchView,
    Budget,
    DeploymentLimits,
    ExportView,
    FinalView,
    GeminiBatchView,
    JobView,
    ModelLimits,
    Progress,
    ReviewView,
    VariantView,
    VersionView,
    WaitingView,
)
from shared.contracts.links import LinkSigner
from shared.contracts.status_words import progress, waiting_shown
from shared.domain.batch import Batch, Export
from shared.domain.batch_news import batch_events
from shared.domain.job import AssetSize, ImageSlot, Job, Version, money
from shared.services.ports import Usage


def batch_view(
    batch: Batch, jobs: Sequence[Job], links: LinkSigner, failure_share: float = 0.2
) -> BatchView:
    """Counts per state, cost, what the team is told about now, and every job of the
    batch, with its latest zip."""
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.state.value] = counts.get(job.state.value, 0) + 1
    return BatchView(
        batch_id=batch.batch_id,
        created_at=batch.created_at.isoformat(),
        image_count=batch.image_count,
        estimated_cost_usd=batch.estimated_cost_usd,
        cost_usd=money(sum((job.cost() for job in jobs), Decimal(0))),
        counts=counts,
        events=[event.kind for event in batch_events(jobs, failure_share)],
        jobs=[job_view(job, links) for job in jobs],
        export=export_view(batch.batch_id, batch.export, links),
    )


def export_view(batch_id: str, export: Export | None, links: LinkSigner) -> ExportView | None:
    if export is None:
        return None
    done = export.state == "done" and export.destination == "zip"
    return ExportView(
        export_id=export.export_id,
        state=export.state,
        requested_at=export.requested_at.isoformat(),
        started_at=export.started_at.isoformat() if export.started_at else None,
        finished_at=export.finished_at.isoformat() if export.finished_at else None,
        images=export.images,
        bytes=export.bytes,
        download_url=links.export_link(batch_id, export.export_id) if done else None,
        error=export.error,
        only=export.only,
        name_template=export.name_template,
        destination=export.destination,
        drive_folder_id=export.drive_folder_id,
        added=export.added,
        present=export.present,
    )


def budget_view(cfg: Settings, day: str, used: Usage, images: int, cost: Decimal) -> Budget:
    """The caller's day as an answer shows it, with what this request asks for."""
    return Budget(
        day=day,
        images_limit=cfg.daily_image_cap,
        images_used=used.images,
        images_requested=images,
        images_remaining=max(cfg.daily_image_cap - used.images, 0),
        cost_limit_usd=money(cfg.daily_cost_cap_usd),
        cost_used_usd=money(used.cost),
        cost_requested_usd=money(cost),
        cost_remaining_usd=money(max(cfg.daily_cost_cap_usd - used.cost, Decimal(0))),
    )


def job_view(job: Job, links: LinkSigner) -> JobView:
    """Public view of a job, with durable links to finished images (every version)."""
    variants = []
    for key in sorted(job.variants, key=int):
        v = job.variants[key]
        current, shown = v.current()
        variants.append(
            VariantView(
                variant=v.n,
                state=v.state.value,
                error=v.error,
                image_url=_link(links, job, v.n, current, shown, "full"),
                thumbnail_url=_link(links, job, v.n, current, shown, "thumb"),
                cost_usd=v.cost_usd,
                failures=v.failures,
                current_version=current,
                versions=[_version_view(links, job, v.n, k, slot) for k, slot in v.slots()],
            )
        )
    words = progress(job)
    waiting = None
    if waiting_shown(job) and job.waiting is not None:
        waiting = WaitingView(
            reason=job.waiting.reason,
            until=job.waiting.until.isoformat(),
            since=job.waiting.since.isoformat(),
        )
    duration = (
        (job.finished_at - job.created_at).total_seconds() if job.finished_at is not None else None
    )
    return JobView(
        job_id=job.job_id,
        batch_id=job.batch_id,
        scene_id=job.scene_id,
        state=job.state.value,
        status_text=words.status,
        progress=Progress(done=words.done, failed=words.failed, total=words.total),
        waiting=waiting,
        lane=job.lane,
        gemini_batches=[GeminiBatchView(name=r.name, state=r.state) for r in job.gemini_batches],
        error=job.error,
        sheet_error=job.sheet_error,
        model=job.model,
        prompt=job.prompt,
        template=job.template.name if job.template else None,
        references=[f"{r.role} {r.name}" for r in job.references],
        image_size=job.image_size,
        final=final_view(job),
        draft=job.final_model is not None,
        final_model=job.final_model,
        final_size=job.final_size,
        variants=variants,
        created_at=job.created_at.isoformat(),
        started_at=job.started_at.isoformat() if job.started_at else None,
        finished_at=job.finished_at.isoformat() if job.finished_at else None,
        duration_s=duration,
        cancelled_at=job.cancelled_at.isoformat() if job.cancelled_at else None,
        cost_usd=money(job.cost()),
    )


def _link(
    links: LinkSigner, job: Job, n: int, version: int, slot: ImageSlot, size: AssetSize
) -> str | None:
    return links.link(job.job_id, n, size, version) if slot.asset_name(size) else None


def _version_view(links: LinkSigner, job: Job, n: int, number: int, slot: ImageSlot) -> VersionView:
    asked = slot.requested_at if isinstance(slot, Version) else job.created_at
    return VersionView(
        version=number,
        kind=slot.kind if isinstance(slot, Version) else "original",
        state=slot.state.value,
        instruction=slot.instruction if isinstance(slot, Version) else None,
        image_size=slot.image_size if isinstance(slot, Version) else None,
        promotes=slot.promotes if isinstance(slot, Version) else None,
        review=ReviewView(
            decision=slot.review.decision, by=slot.review.by, at=slot.review.at.isoformat()
        )
        if slot.review
        else None,
        error=slot.error,
        image_url=_link(links, job, n, number, slot, "full"),
        thumbnail_url=_link(links, job, n, number, slot, "thumb"),
        cost_usd=slot.cost_usd,
        model=slot.model,
        created_at=asked.isoformat(),
        generated_at=slot.generated_at.isoformat() if slot.generated_at else None,
    )


def deployment_limits(settings: Settings) -> DeploymentLimits:
    """The limits and choices a deployment can change, as the sheet reads them."""
    return DeploymentLimits(
        max_items_per_batch=settings.max_items_per_batch,
        max_variants=settings.max_variants,
        max_prompt_chars=settings.max_prompt_chars,
        max_body_bytes=settings.max_body_bytes,
        default_model=settings.gemini_model,
        lanes=["live", "economy"] if settings.gemini_backend == "gemini_api" else ["live"],
        models={
            name: ModelLimits(
                aspect_ratios=list(entry.aspect_ratios),
                image_sizes=list(entry.image_sizes),
                default_image_size=entry.default_image_size,
                max_reference_images=settings.reference_limit(name),
                max_character_references=entry.max_character_references,
                max_object_references=entry.max_object_references,
            )
            for name, entry in sorted(settings.catalog.models.items())
        },
    )


def final_view(job: Job) -> FinalView | None:
    """The scene's final pick, if the team made one."""
    final = job.final
    if final is None:
        return None
    return FinalView(
        variant=final.variant, version=final.version, by=final.by, at=final.at.isoformat()
    )
