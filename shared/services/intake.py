"""Intake: plan a batch (dry run), record and publish it (live), report status."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel

from shared import jobs as transitions
from shared import pricing
from shared.anchors import problem
from shared.api_models import (
    BatchView,
    Budget,
    GeminiBatchView,
    JobView,
    Plan,
    PlanJob,
    Progress,
    Submitted,
    SubmittedJob,
    VariantView,
    VersionView,
    WaitingView,
    Warning,
)
from shared.catalog import Lane as CatalogLane
from shared.catalog import ModelEntry
from shared.ids import new_id, utcnow
from shared.links import LinkSigner
from shared.models import (
    AssetSize,
    Batch,
    BatchRequest,
    ImageSlot,
    Job,
    JobMessage,
    Lane,
    Version,
    money,
)
from shared.ports import BudgetLedger, IdempotencyStore, JobPublisher, JobStore, Usage
from shared.services.exports import export_view
from shared.services.ledger import JobLedger
from shared.services.once import InProgress, Replay, run_once
from shared.services.preflight import Preflight
from shared.settings import Settings

# A request without an Idempotency-Key is keyed by its content; that key only
# catches double submissions, so it lives much shorter than an explicit key.
DERIVED_KEY_TTL_S = 600
# The catalog's lane of each of ours.
CATALOG_LANES: dict[Lane, CatalogLane] = {"live": "live", "economy": "batch"}
ECONOMY_NOTE = (
    "Economy: Gemini's Batch API at half the live price. Images come within 24 hours "
    "(often much sooner); a batch Gemini lets expire goes on in the live lane at the "
    "live price (or fails, as the deployment is configured)."
)


@dataclass(frozen=True)
class Accepted:
    """The batch was recorded and published (or this replays that first answer)."""

    answer: Submitted
    replay: bool = False


@dataclass(frozen=True)
class OverBudget:
    """The caller's daily caps leave no room for the batch; nothing was recorded."""

    budget: Budget
    message: str


@dataclass(frozen=True)
class ModelUnavailable:
    """The backend does not serve the batch's model (retired, unknown, not allowed)."""

    model: str
    reason: str


Submission = Accepted | OverBudget | InProgress | ModelUnavailable

__all__ = [
    "Accepted",
    "InProgress",
    "Intake",
    "ModelUnavailable",
    "OverBudget",
    "Submission",
    "job_view",
]


@dataclass(frozen=True)
class Intake:
    """The HTTP function's use cases, wired to their ports."""

    settings: Settings
    store: JobStore
    ledger: JobLedger
    publisher: JobPublisher
    links: LinkSigner
    budget: BudgetLedger
    idempotency: IdempotencyStore
    preflight: Preflight
    clock: Callable[[], datetime] = utcnow
    ids: Callable[[str], str] = new_id

    # ------------------------------------------------------------------ plan
    def plan(self, request: BatchRequest, caller: str) -> Plan | ModelUnavailable:
        """Exactly what ``live`` would do, without writing or publishing anything.

        The batch's model is checked with the backend first: a retired or unknown
        model refuses the batch before anyone pays.
        """
        model = request.model or self.settings.gemini_model
        check = self.preflight.check(model)
        if not check.available:
            return ModelUnavailable(model, check.reason)
        entry = self.settings.model_entry(model)
        most = self.settings.reference_limit(model)
        priced: list[tuple[PlanJob, pricing.Estimate]] = []
        by_lane: dict[Lane, Decimal] = {"live": Decimal(0), "economy": Decimal(0)}
        for item in request.items:
            size = entry.size(item.image_size or self.settings.gemini_image_size or None)
            references, known = pricing.references_of(
                [*request.style_refs, item.ref_pack_public_url], most
            )
            lane = item.lane or request.lane
            estimates = {
                each: pricing.estimate(
                    entry, CATALOG_LANES[each], size, item.prompt, references, known
                )
                for each in by_lane
            }
            for each, estimate in estimates.items():
                by_lane[each] += estimate.per_image * item.variants
            estimate = estimates[lane]
            job = PlanJob(
                scene_id=item.scene_id,
                variants=item.variants,
                lane=lane,
                image_size=size,
                reference_images=references,
                estimated_cost_per_image_usd=money(estimate.per_image),
                estimated_cost_usd=money(estimate.per_image * item.variants),
            )
            priced.append((job, estimate))
        images = sum(item.variants for item in request.items)
        cost = sum((e.per_image * j.variants for j, e in priced), Decimal(0))
        day = self._day()
        notes = estimate_notes(entry, [e for _, e in priced], most)
        if any(job.lane == "economy" for job, _ in priced):
            notes.append(ECONOMY_NOTE)
        return Plan(
            runMode=request.run_mode,
            model=model,
            price_per_image_usd=money(cost / images),
            job_count=len(request.items),
            image_count=images,
            estimated_cost_usd=money(cost),
            lanes={lane: money(total) for lane, total in by_lane.items()},
            economy=ECONOMY_NOTE,
            estimate_notes=notes,
            budget=self._budget(day, self.budget.usage(caller, day), images, cost),
            warnings=self._warnings(request),
            jobs=[job for job, _ in priced],
        )

    def _day(self) -> str:
        return self.clock().strftime("%Y-%m-%d")

    def _budget(self, day: str, used: Usage, images: int, cost: Decimal) -> Budget:
        return budget_view(self.settings, day, used, images, cost)

    def _warnings(self, request: BatchRequest) -> list[Warning]:
        scenes = {item.scene_id for item in request.items}
        active = self.store.active_jobs(request.spreadsheet_id, request.worksheet)
        return [
            Warning(
                scene_id=job.scene_id,
                message=f"job {job.job_id} for this scene is still {job.state.value}",
            )
            for job in sorted(active, key=lambda j: (j.scene_id, j.job_id))
            if job.scene_id in scenes
        ]

    # ------------------------------------------------------------------ live
    def submit(
        self, request: BatchRequest, caller: str, idempotency_key: str | None = None
    ) -> Submission:
        """Run a live batch once per idempotency key; replays get the first answer."""
        ttl = self.settings.idempotency_ttl_s if idempotency_key else DERIVED_KEY_TTL_S
        key = scoped_key(caller, idempotency_key or _content_key(request))
        outcome = run_once(
            self.idempotency,
            key,
            self.clock(),
            ttl,
            lambda: self._submit(request, caller),
            # A refusal (budget, model) is not a first answer to keep: a retry may pass.
            lambda done: kept_answer(done.answer) if isinstance(done, Accepted) else None,
        )
        if isinstance(outcome, Replay):
            return Accepted(Submitted.model_validate(outcome.body), replay=True)
        return outcome

    def _submit(
        self, request: BatchRequest, caller: str
    ) -> Accepted | OverBudget | ModelUnavailable:
        plan = self.plan(request, caller)
        if isinstance(plan, ModelUnavailable):
            return plan
        cost = Decimal(plan.estimated_cost_usd)
        ok, before = self.budget.reserve(
            caller,
            plan.budget.day,
            plan.image_count,
            cost,
            self.settings.daily_image_cap,
            self.settings.daily_cost_cap_usd,
        )
        budget = self._budget(plan.budget.day, before, plan.image_count, cost)
        if not ok:
            return OverBudget(
                budget,
                f"this batch needs {plan.image_count} images (${money(cost)}); "
                f"today {budget.images_remaining} images and "
                f"${budget.cost_remaining_usd} remain",
            )
        try:
            return self._record_and_publish(request, caller, plan, budget)
        except BaseException:
            # Nothing was queued (or we cannot tell what was): give the budget back.
            self.budget.refund(caller, plan.budget.day, plan.image_count, cost)
            raise

    def _record_and_publish(
        self, request: BatchRequest, caller: str, plan: Plan, budget: Budget
    ) -> Accepted:
        now = self.clock()
        batch_id = self.ids("bat")
        jobs = [
            Job(
                job_id=self.ids("job"),
                batch_id=batch_id,
                scene_id=item.scene_id,
                prompt=item.prompt,
                ref_pack_public_url=item.ref_pack_public_url,
                aspect_ratio=item.aspect_ratio,
                image_size=item.image_size,
                variant_count=item.variants,
                caller=caller,
                spreadsheet_id=request.spreadsheet_id,
                worksheet=request.worksheet,
                model=plan.model,
                lane=planned.lane,
                price_per_image=planned.estimated_cost_per_image_usd,
                style_refs=list(request.style_refs),
                budget_day=plan.budget.day,
                created_at=now,
                updated_at=now,
            )
            for item, planned in zip(request.items, plan.jobs, strict=True)
        ]
        self.store.create_batch(
            Batch(
                batch_id=batch_id,
                caller=caller,
                spreadsheet_id=request.spreadsheet_id,
                worksheet=request.worksheet,
                model=plan.model,
                job_ids=[job.job_id for job in jobs],
                image_count=plan.image_count,
                estimated_cost_usd=plan.estimated_cost_usd,
                created_at=now,
            ),
            jobs,
        )
        attributes = {"batch_id": batch_id, "caller": caller, "run_mode": request.run_mode}
        # Economy jobs wait in the store for the economy tick to batch them.
        failed = self.publisher.publish(
            [
                (JobMessage(job_id=j.job_id, batch_id=batch_id, scene_id=j.scene_id), attributes)
                for j in jobs
                if j.lane == "live"
            ]
        )
        for job in jobs:
            if job.job_id in failed:
                # Failed variants give their reserved budget back (the ledger settles them).
                self._fail(job.job_id, f"could not be queued: {failed[job.job_id]}")
        answer = Submitted(
            **plan.model_dump(exclude={"run_mode", "jobs", "budget"}),
            runMode="live",
            budget=budget,
            batch_id=batch_id,
            jobs=[
                SubmittedJob(
                    scene_id=job.scene_id,
                    job_id=job.job_id,
                    variants=job.variant_count,
                    state="failed" if job.job_id in failed else "queued",
                    error=failed.get(job.job_id),
                )
                for job in jobs
            ],
            unpublished=sorted(failed),
        )
        return Accepted(answer)

    def _fail(self, job_id: str, reason: str) -> None:
        self.ledger.apply(job_id, lambda job: transitions.fail_job(job, reason, self.clock()))

    def anchor_problems(
        self, request: BatchRequest, caller: str, admin: bool = False
    ) -> list[dict[str, str]]:
        """Style anchors that name no output this caller may see, by field."""
        named = [(f"style_refs[{i}]", ref) for i, ref in enumerate(request.style_refs)]
        named += [
            (f"items[{i}].ref_pack_public_url", item.ref_pack_public_url)
            for i, item in enumerate(request.items)
            if item.ref_pack_public_url
        ]
        found = []
        for field, ref in named:
            reason = problem(self.store, ref, request.spreadsheet_id, caller, admin)
            if reason is not None:
                found.append({"field": field, "reason": reason})
        return found

    # ---------------------------------------------------------------- status
    def job_status(self, job_id: str, caller: str, admin: bool = False) -> JobView | None:
        """The job as its caller sees it; None if missing or someone else's."""
        job = self.store.get_job(job_id)
        if job is None or (job.caller != caller and not admin):
            return None
        return job_view(job, self.links)

    def batch_status(self, batch_id: str, caller: str, admin: bool = False) -> BatchView | None:
        """Counts per state and every job of the batch; None if not the caller's."""
        batch = self.store.get_batch(batch_id)
        if batch is None or (batch.caller != caller and not admin):
            return None
        jobs = self.store.get_jobs(batch.job_ids)
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
            jobs=[job_view(job, self.links) for job in jobs],
            export=export_view(batch.batch_id, batch.export, self.links),
        )


def estimate_notes(entry: ModelEntry, estimates: list[pricing.Estimate], most: int) -> list[str]:
    """Which parts of the estimate are estimates, in words for the dialog."""
    notes = [
        "Prices per image are the model catalog's, by size (live lane); an image's actual "
        "cost comes from the tokens Gemini reports and is shown in /status.",
        f"Prompt tokens are estimated at {pricing.PROMPT_CHARS_PER_TOKEN} characters a token.",
    ]
    if any(e.references for e in estimates):
        notes.append(
            f"Reference images are counted at {entry.input_tokens_per_reference_image} input "
            "tokens each."
        )
    if any(not e.references_known for e in estimates):
        notes.append(
            f"A zip or manifest pack is estimated at the most images that are sent ({most}); "
            "fewer cost less."
        )
    return notes


def _content_key(request: BatchRequest) -> str:
    canonical = request.model_dump(mode="json", by_alias=True, exclude={"run_mode"})
    return "content:" + json.dumps(canonical, sort_keys=True)


def scoped_key(caller: str, key: str) -> str:
    """Keys are per caller, so one caller can never replay another's answer."""
    return hashlib.sha256(f"{caller}\0{key}".encode()).hexdigest()


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


def kept_answer(answer: BaseModel) -> dict[str, object]:
    """An answer as an idempotency record keeps it, to replay it unchanged."""
    return answer.model_dump(mode="json", by_alias=True, exclude_none=True)


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
    progress = transitions.progress(job)
    waiting = None
    if transitions.waiting_shown(job) and job.waiting is not None:
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
        status_text=progress.status,
        progress=Progress(done=progress.done, failed=progress.failed, total=progress.total),
        waiting=waiting,
        lane=job.lane,
        gemini_batches=[GeminiBatchView(name=r.name, state=r.state) for r in job.gemini_batches],
        error=job.error,
        sheet_error=job.sheet_error,
        model=job.model,
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
        error=slot.error,
        image_url=_link(links, job, n, number, slot, "full"),
        thumbnail_url=_link(links, job, n, number, slot, "thumb"),
        cost_usd=slot.cost_usd,
        model=slot.model,
        created_at=asked.isoformat(),
        generated_at=slot.generated_at.isoformat() if slot.generated_at else None,
    )
