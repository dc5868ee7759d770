"""Intake: plan a batch (dry run), record and publish it (live), report status."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from shared.config.settings import Settings
from shared.contracts.answers import (
    BatchView,
    DeliveryPaths,
    JobView,
    Plan,
    PlanJob,
    Submitted,
    SubmittedJob,
    Warning,
)
from shared.contracts.links import LinkSigner
from shared.contracts.requests import BatchRequest
from shared.domain import pricing, versions
from shared.domain.batch import Batch
from shared.domain.catalog import Lane as CatalogLane
from shared.domain.catalog import ModelEntry
from shared.domain.errors import TransientError
from shared.domain.ids import new_id, utcnow
from shared.domain.job import Job, Lane, money
from shared.domain.rows import row_owner
from shared.services import once
from shared.services.daily_budget import OverBudget, reserve
from shared.services.job_messages import publish_jobs, unstarted
from shared.services.ledger import JobLedger
from shared.services.once import InProgress, kept_answer, scoped_key
from shared.services.ports import (
    BudgetLedger,
    Fence,
    FencedOut,
    IdempotencyStore,
    JobPublisher,
    JobStore,
)
from shared.services.preflight import Preflight
from shared.services.sheet_check import SheetCheck
from shared.services.style_anchors import problem
from shared.services.views import batch_view, budget_view, job_view

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
class ModelUnavailable:
    """The batch's model is not served (shut down, unknown to the backend, not allowed)."""

    model: str
    reason: str
    replacement: str | None = None


@dataclass(frozen=True)
class SheetMismatch:
    """The target worksheet cannot show some of the batch's images (a missing row
    or image column, a tab or spreadsheet we cannot read): refused before anything
    is reserved, each problem named by its request field."""

    problems: list[dict[str, str]]


Refusal = ModelUnavailable | SheetMismatch
Submission = Accepted | OverBudget | InProgress | ModelUnavailable | SheetMismatch

__all__ = [
    "Accepted",
    "InProgress",
    "Intake",
    "ModelUnavailable",
    "OverBudget",
    "SheetMismatch",
    "Submission",
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
    sheets: SheetCheck
    clock: Callable[[], datetime] = utcnow
    ids: Callable[[str], str] = new_id

    # ------------------------------------------------------------------ plan
    def plan(self, request: BatchRequest, caller: str, admin: bool = False) -> Plan | Refusal:
        """Exactly what ``live`` would do, without writing or publishing anything.

        The batch's model is checked with the backend first, then the worksheet: a
        retired or unknown model, images the sheet could not show, or rows another
        caller's jobs show, refuse the batch before anyone pays.
        """
        plan = self._plan(request, caller, admin)
        if isinstance(plan, ModelUnavailable):
            return plan
        findings = self.sheets.check(request)
        problems = findings.problems + ([] if admin else self._rows_of_others(request, caller))
        if problems:
            return SheetMismatch(problems)
        plan.warnings.extend(findings.warnings)
        return plan

    def _rows_of_others(self, request: BatchRequest, caller: str) -> list[dict[str, str]]:
        """The rows the batch names that another caller's job shows: each caller
        writes only its own rows (an admin, any)."""
        scenes = [item.scene_id for item in request.items]
        jobs = self.store.jobs_of_scenes(request.spreadsheet_id, scenes)
        problems = []
        for i, item in enumerate(request.items):
            owner = row_owner(jobs, request.spreadsheet_id, request.worksheet, item.scene_id)
            if owner is not None and owner.caller != caller:
                problems.append(
                    {
                        "field": f"items[{i}].scene_id",
                        "reason": f"the row of {item.scene_id!r} in worksheet "
                        f"{request.worksheet!r} shows another caller's job: each caller "
                        "writes only its own rows (use another scene_id or worksheet)",
                    }
                )
        return problems

    def _plan(
        self, request: BatchRequest, caller: str, admin: bool = False
    ) -> Plan | ModelUnavailable:
        """The plan without the sheet check: what a batch recorded earlier resumes on
        (its rows were checked when it was first asked for)."""
        model = request.model or self.settings.gemini_model
        models = [model, *sorted({i.model for i in request.items if i.model} - {model})]
        entries = {name: self.settings.model_entry(name) for name in models}
        for name, entry in entries.items():
            # Each model the batch uses is checked once, the batch's own first.
            if not entry.served:
                notice = entry.notice(name, self.clock().date()) or "shut down"
                return ModelUnavailable(name, notice, entry.replacement)
            check = self.preflight.check(name)
            if not check.available:
                return ModelUnavailable(name, check.reason, entry.replacement)
        priced: list[tuple[PlanJob, pricing.Estimate]] = []
        by_lane: dict[Lane, Decimal] = {"live": Decimal(0), "economy": Decimal(0)}
        every_final, drafted = Decimal(0), Decimal(0)
        for item in request.items:
            own = item.model or model
            entry = entries[own]
            most = self.settings.reference_limit(own)
            size = entry.size(self.settings.shape_for(own, None, item.image_size)[1])
            references, known = pricing.references_of(
                [*request.style_refs, *(r.ref for r in item.references), item.ref_pack_public_url],
                most,
            )
            lane = item.lane or request.lane
            final = pricing.estimate(
                entry, CATALOG_LANES[lane], size, item.text, references, known
            ).per_image
            draft_model, draft_size = pricing.cheapest(
                self.settings.catalog.models, CATALOG_LANES[lane], item.aspect_ratio, references
            )
            draft_entry = self.settings.model_entry(draft_model)
            draft = pricing.estimate(
                draft_entry, CATALOG_LANES[lane], draft_size, item.text, references, known
            ).per_image
            promotion = pricing.estimate(
                entry, "live", size, versions.PROMOTE_INSTRUCTION, 1
            ).per_image
            every_final += final * item.variants
            drafted += draft * item.variants + promotion
            if request.drafts:
                # Made at the cheapest model and size; the picks are promoted later.
                own, entry, size = draft_model, draft_entry, draft_size
            estimates = {
                each: pricing.estimate(
                    entry, CATALOG_LANES[each], size, item.text, references, known
                )
                for each in by_lane
            }
            for each, estimate in estimates.items():
                by_lane[each] += estimate.per_image * item.variants
            estimate = estimates[lane]
            job = PlanJob(
                scene_id=item.scene_id,
                variants=item.variants,
                model=own,
                prompt=item.text,
                lane=lane,
                image_size=size,
                reference_images=references,
                estimated_cost_per_image_usd=money(estimate.per_image),
                estimated_cost_usd=money(estimate.per_image * item.variants),
                final_model=(item.model or model) if request.drafts else None,
                final_size=entries[item.model or model].size(
                    self.settings.shape_for(item.model or model, None, item.image_size)[1]
                )
                if request.drafts
                else None,
            )
            priced.append((job, estimate))
        scenes = len(request.items)
        paths = DeliveryPaths(
            every_image_final_usd=money(every_final / scenes),
            drafts_then_promote_usd=money(drafted / scenes),
            saving=f"{(1 - drafted / every_final) * 100:.0f} %" if every_final else "0 %",
        )
        images = sum(item.variants for item in request.items)
        cost = sum((e.per_image * j.variants for j, e in priced), Decimal(0))
        day = self._day()
        notes = estimate_notes(
            entries[model], [e for _, e in priced], self.settings.reference_limit(model)
        )
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
            budget=budget_view(self.settings, day, self.budget.usage(caller, day), images, cost),
            warnings=[w for name in models for w in self._model_warnings(name, entries[name])]
            + self._warnings(request, caller, admin),
            jobs=[job for job, _ in priced],
            delivered=paths,
        )

    def _day(self) -> str:
        return self.clock().strftime("%Y-%m-%d")

    def _model_warnings(self, model: str, entry: ModelEntry) -> list[Warning]:
        """A model going away, named with its replacement and date (whole batch)."""
        notice = entry.notice(model, self.clock().date())
        if notice is None:
            return []
        return [
            Warning(
                message=f"{notice}: set GEMINI_MODEL (Terraform models.gemini_model)"
                " or the batch's model"
            )
        ]

    def _warnings(self, request: BatchRequest, caller: str, admin: bool) -> list[Warning]:
        """The caller's jobs of these scenes that still run (an admin: anyone's)."""
        scenes = {item.scene_id for item in request.items}
        active = [
            job
            for job in self.store.active_jobs(request.spreadsheet_id, request.worksheet)
            if admin or job.caller == caller
        ]
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
        self,
        request: BatchRequest,
        caller: str,
        idempotency_key: str | None = None,
        admin: bool = False,
    ) -> Submission:
        """Run a live batch once per idempotency key; replays get the first answer.

        The key names one batch for its whole life: a retry after any failure or
        crash goes on with that batch (publishes what was not published, answers
        with the same batch and jobs) and never makes a second one.
        """
        ttl = self.settings.idempotency_ttl_s if idempotency_key else DERIVED_KEY_TTL_S
        key = scoped_key(caller, idempotency_key or _content_key(request))
        held = once.hold(self.idempotency, key, self.ids("bat"), self.clock(), ttl)
        if isinstance(held, once.Replay):
            return self._replay(held, request, caller)
        if isinstance(held, once.InProgress):
            return held
        # A refusal (budget, model, sheet) commits nothing: a retry may pass.
        return once.run(
            held,
            lambda held: self._submit(request, caller, held, admin),
            lambda outcome: outcome.answer if isinstance(outcome, Accepted) else None,
        )

    def _submit(
        self, request: BatchRequest, caller: str, held: once.Held, admin: bool = False
    ) -> Accepted | OverBudget | Refusal:
        batch_id = held.names
        batch = self.store.get_batch(batch_id)
        if batch is not None:
            # A request before this one recorded the batch: go on from there (and make
            # any job a batch too large for one commit did not get).
            jobs = self.store.get_jobs(batch.job_ids)
            if len(jobs) < len(batch.job_ids):
                resumed = self._plan(request, batch.caller)
                if isinstance(resumed, ModelUnavailable):
                    raise TransientError(f"the batch's model is not available: {resumed.reason}")
                day = str(held.intent.get("day") or resumed.budget.day)
                made = build_jobs(
                    request,
                    batch.caller,
                    resumed,
                    batch.batch_id,
                    day,
                    batch.created_at,
                    batch.worksheet_id,
                )
                self.store.create_batch(batch, made)
                jobs = self.store.get_jobs(batch.job_ids)
            return self._publish(batch, jobs, held, request)
        plan = self.plan(request, caller, admin)
        day = str(held.intent.get("day") or "")
        if isinstance(plan, ModelUnavailable | SheetMismatch):
            if day:  # an earlier run reserved before the model (or the row) went away
                try:
                    self.budget.release(
                        caller, day, reservation_key(batch_id), Fence(held.key, held.holder)
                    )
                except FencedOut as exc:
                    raise TransientError(f"another request took this one over: {exc}") from exc
            return plan
        day = day or plan.budget.day
        # The intent first: whoever finds this record (a retry, the sweeper) knows what
        # the next step reserves, and where to give it back.
        held.note(intent={"kind": "batch", "caller": caller, "day": day})
        cost = Decimal(plan.estimated_cost_usd)
        # Reserved only while this request holds its record: whoever takes it over
        # (a retry, the sweeper) knows nothing is reserved after that.
        try:
            ok, budget = reserve(
                self.budget,
                self.settings,
                caller,
                day,
                reservation_key(batch_id),
                plan.image_count,
                cost,
                Fence(held.key, held.holder),
            )
        except FencedOut as exc:
            raise TransientError(f"another request took this one over: {exc}") from exc
        if not ok:
            return OverBudget(
                budget,
                f"this batch needs {plan.image_count} images (${money(cost)}); "
                f"today {budget.images_remaining} images and "
                f"${budget.cost_remaining_usd} remain",
            )
        now = self.clock()
        tab = self.sheets.tab_id(request)  # as the check just read it
        jobs = build_jobs(request, caller, plan, batch_id, day, now, tab)
        batch = Batch(
            batch_id=batch_id,
            caller=caller,
            spreadsheet_id=request.spreadsheet_id,
            worksheet=request.worksheet,
            worksheet_id=tab,
            model=plan.model,
            job_ids=[job.job_id for job in jobs],
            image_count=plan.image_count,
            estimated_cost_usd=plan.estimated_cost_usd,
            created_at=now,
        )
        # The answer, prepared: whoever finishes this request answers with it.
        answer = Submitted(
            **plan.model_dump(exclude={"run_mode", "jobs", "budget"}),
            runMode="live",
            budget=budget,
            batch_id=batch_id,
            jobs=[
                SubmittedJob(scene_id=job.scene_id, job_id=job.job_id, variants=job.variant_count)
                for job in jobs
            ],
            unpublished=[],
        )
        held.note(body=kept_answer(answer))
        # Recorded only while this request still holds its record: one that lost it
        # (it stalled; the sweeper gave its reservation back) records nothing.
        try:
            self.store.create_batch(batch, jobs, Fence(held.key, held.holder))
        except FencedOut as exc:
            raise TransientError(f"another request took this one over: {exc}") from exc
        return self._publish(batch, jobs, held, request)

    def _replay(self, replay: once.Replay, request: BatchRequest, caller: str) -> Submission:
        if replay.body:
            return Accepted(Submitted.model_validate(replay.body), replay=True)
        # Finished by the sweeper before its answer was prepared: the batch tells it.
        batch = self.store.get_batch(replay.names)
        if batch is None:
            raise TransientError("the batch this key names is not recorded yet")
        answer = self._answer(batch, self.store.get_jobs(batch.job_ids), request)
        return Accepted(answer, replay=True)

    def _answer(self, batch: Batch, jobs: list[Job], request: BatchRequest) -> Submitted:
        """The answer of a recorded batch, for a request that never prepared it."""
        plan = self._plan(request, batch.caller)
        if isinstance(plan, ModelUnavailable):
            raise TransientError(f"the batch's model is not available now: {plan.reason}")
        return Submitted(
            **plan.model_dump(exclude={"run_mode", "jobs"}),
            runMode="live",
            batch_id=batch.batch_id,
            jobs=[
                SubmittedJob(scene_id=j.scene_id, job_id=j.job_id, variants=j.variant_count)
                for j in jobs
            ],
            unpublished=[],
        )

    def _publish(
        self, batch: Batch, jobs: list[Job], held: once.Held, request: BatchRequest
    ) -> Accepted:
        """Publish the batch's live jobs no delivery started yet (economy jobs wait for
        the economy tick); TransientError (the request is retried, or finished by the
        sweeper) when some did not go out."""
        attributes = {"batch_id": batch.batch_id, "caller": batch.caller, "run_mode": "live"}
        failed = publish_jobs(self.publisher, unstarted(jobs), attributes)
        if failed:
            raise TransientError(
                f"{len(failed)} of the batch's jobs could not be queued yet "
                f"({next(iter(failed.values()))}); the same request finishes it"
            )
        if held.record.body:
            return Accepted(Submitted.model_validate(held.record.body))
        # Recorded by a request that died before it kept its answer: answer now.
        return Accepted(self._answer(batch, jobs, request))

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
        return batch_view(
            batch,
            self.store.get_jobs(batch.job_ids),
            self.links,
            self.settings.notify_failure_share,
        )


def build_jobs(
    request: BatchRequest,
    caller: str,
    plan: Plan,
    batch_id: str,
    day: str,
    now: datetime,
    worksheet_id: int | None = None,
) -> list[Job]:
    """The batch's jobs, one per item, as every run of the request makes them."""
    return [
        Job(
            job_id=job_id_of(batch_id, index),
            batch_id=batch_id,
            scene_id=item.scene_id,
            prompt=item.text,
            template=item.template,
            avoid=item.avoid,
            references=list(item.references),
            ref_pack_public_url=item.ref_pack_public_url,
            aspect_ratio=item.aspect_ratio,
            # A draft is made at its draft size (its row's size is the final one).
            image_size=planned.image_size if planned.final_model else item.image_size,
            variant_count=item.variants,
            caller=caller,
            spreadsheet_id=request.spreadsheet_id,
            worksheet=request.worksheet,
            worksheet_id=worksheet_id,
            model=planned.model or plan.model,
            lane=planned.lane,
            final_model=planned.final_model,
            final_size=planned.final_size,
            fields=dict(item.fields),
            price_per_image=planned.estimated_cost_per_image_usd,
            style_refs=list(request.style_refs),
            budget_day=day,
            created_at=now,
            updated_at=now,
        )
        for index, (item, planned) in enumerate(zip(request.items, plan.jobs, strict=True), start=1)
    ]


def reservation_key(batch_id: str) -> str:
    """Under which key a batch's images are reserved on the caller's day."""
    return f"batch:{batch_id}"


def job_id_of(batch_id: str, index: int) -> str:
    """The id of a batch's ``index``-th job (from 1): the same in every run of the
    request, so a resumed one finds the jobs an earlier run recorded."""
    return f"job_{batch_id.removeprefix('bat_')}_{index}"


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
