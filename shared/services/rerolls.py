"""Re-roll or edit one variant: a new version, budgeted, priced and made like any image."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from shared.config.settings import Settings
from shared.contracts.answers import RerollAccepted
from shared.contracts.messages import JobMessage
from shared.domain import pricing, versions
from shared.domain.errors import TransientError
from shared.domain.ids import new_id, utcnow
from shared.domain.job import Job, Version, money
from shared.domain.rows import row_owner
from shared.domain.versions import VersionRequest
from shared.services import once
from shared.services.daily_budget import OverBudget, reserve
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
from shared.services.views import budget_view

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Queued:
    """The version was recorded and published (or this replays that first answer)."""

    answer: RerollAccepted
    replay: bool = False


@dataclass(frozen=True)
class Refused:
    """The variant cannot take a new version now (``not_ready``: still being made,
    nothing to edit), or not from this job (``row_taken``: its scene was sent again)."""

    message: str
    code: str = "not_ready"


RerollOutcome = Queued | Refused | OverBudget | InProgress

# Sizes from small to large: a promotion only goes up.
SIZE_ORDER = ("512", "1K", "2K", "4K")


@dataclass(frozen=True)
class Promotion:
    """Re-make version ``version`` (None: the one shown) larger, at ``image_size``."""

    image_size: str
    version: int | None = None


def _seed() -> int:
    return secrets.randbelow(2**31 - 1) + 1


@dataclass(frozen=True)
class Rerolls:
    settings: Settings
    store: JobStore
    ledger: JobLedger
    publisher: JobPublisher
    budget: BudgetLedger
    idempotency: IdempotencyStore
    clock: Callable[[], datetime] = utcnow
    seeds: Callable[[], int] = _seed

    def request(
        self,
        job_id: str,
        n: int,
        instruction: str | None,
        caller: str,
        admin: bool = False,
        idempotency_key: str | None = None,
        promotion: Promotion | None = None,
    ) -> RerollOutcome | None:
        """A new version of variant ``n`` (with ``promotion``: a chosen image re-made
        larger), once per idempotency key (a retry after any failure finishes the
        first request's version); None if the job or variant is missing or the job
        someone else's."""
        job = self.store.get_job(job_id)
        if job is None or (job.caller != caller and not admin) or str(n) not in job.variants:
            return None
        # Without a key, each request is a new version (its record only lets the
        # sweeper finish or undo it).
        asked = idempotency_key or new_id("once")
        kind = "promote" if promotion is not None else "reroll"
        key = scoped_key(caller, f"{kind}:{job_id}:{n}:{asked}")
        # The record names this request's version (a new name for every record: a key
        # whose first request was undone starts afresh).
        held = once.hold(
            self.idempotency, key, new_id("ver"), self.clock(), self.settings.idempotency_ttl_s
        )
        if isinstance(held, once.Replay):
            return Queued(self._replayed(held, key, job_id, n), replay=True)
        if isinstance(held, once.InProgress):
            return held
        return once.run(
            held,
            lambda held: self._request(job, n, instruction, caller, held, promotion),
            lambda outcome: outcome.answer if isinstance(outcome, Queued) else None,
        )

    def _newer(self, job: Job) -> Job | None:
        """The job sent later for this job's row, if any."""
        owner = row_owner(
            self.store.scene_jobs(job.spreadsheet_id, job.scene_id),
            job.spreadsheet_id,
            job.worksheet,
            job.scene_id,
        )
        return owner if owner is not None and owner.job_id != job.job_id else None

    def _replayed(self, replay: once.Replay, key: str, job_id: str, n: int) -> RerollAccepted:
        if replay.body:
            return RerollAccepted.model_validate(replay.body)
        # Finished by the sweeper before its answer was prepared: the version tells it.
        job = self.store.get_job(job_id)
        variant = job.variants.get(str(n)) if job is not None else None
        version = next(
            (v for v in (variant.versions if variant else []) if v.request_key == key), None
        )
        if version is None:
            raise TransientError("the version this key names is not recorded yet")
        price = Decimal(version.price_per_image)
        used = self.budget.usage(version.caller, version.budget_day)
        return RerollAccepted(
            job_id=job_id,
            variant=n,
            version=version.version,
            kind=version.kind,
            instruction=version.instruction,
            state="queued",
            price_per_image_usd=money(price),
            budget=budget_view(self.settings, version.budget_day, used, 1, price),
        )

    def _price(
        self, job: Job, instruction: str | None, model: str | None = None, size: str | None = None
    ) -> Decimal:
        """The estimate a new version reserves: the catalog's live price at its model
        and size (a promotion's; else the job's) plus its input tokens (an edit or a
        promotion sends its instruction and the image)."""
        model = model or job.model
        entry = self.settings.catalog.entry(model)
        if entry is None:
            return Decimal(job.price_per_image)  # a model no longer listed: as it was
        size = entry.size(size or self.settings.shape_for(model, None, job.image_size)[1])
        if instruction:
            references, known = 1, True
        else:
            most = self.settings.reference_limit(job.model)
            references, known = pricing.references_of(
                [*job.style_refs, job.ref_pack_public_url], most
            )
        return pricing.estimate(
            entry, "live", size, instruction or job.prompt, references, known
        ).per_image

    def _promotion(self, job: Job, n: int, promotion: Promotion) -> tuple[int, str] | Refused:
        """The version a promotion re-makes and the model it uses, or why it cannot."""
        model = job.final_model or job.model
        entry = self.settings.catalog.entry(model)
        sizes = entry.image_sizes if entry is not None else ()
        if promotion.image_size not in sizes:
            return Refused(
                f"{model} makes {', '.join(sizes) or 'no sizes'}, not {promotion.image_size}",
                code="bad_size",
            )
        variant = job.variant(n)
        number = promotion.version if promotion.version is not None else variant.current()[0]
        try:
            source = variant.slot(number)
        except KeyError:
            return Refused(f"variant {n} has no version {number}")
        made_at = (
            (source.image_size if isinstance(source, Version) and source.image_size else None)
            or self.settings.shape_for(job.model, None, job.image_size)[1]
            or (entry.default_image_size if entry is not None else None)
        )
        if (
            model == job.model
            and made_at in SIZE_ORDER
            and SIZE_ORDER.index(promotion.image_size) <= SIZE_ORDER.index(made_at)
        ):
            return Refused(
                f"version {number} of variant {n} was made at {made_at}: promote it to a "
                "larger size",
                code="bad_size",
            )
        return number, model

    def _request(
        self,
        job: Job,
        n: int,
        instruction: str | None,
        caller: str,
        held: once.Held,
        promotion: Promotion | None = None,
    ) -> Queued | Refused | OverBudget:
        promotes, target = None, None
        if promotion is not None:
            found = self._promotion(job, n, promotion)
            if isinstance(found, Refused):
                return found
            promotes, target = found
            instruction = versions.PROMOTE_INSTRUCTION
        newer = None if held.intent else self._newer(job)
        if newer is not None:
            # A fresh request only: one that began before the scene was sent again
            # finishes what it began.
            return Refused(
                f"scene {job.scene_id!r} was sent again as job {newer.job_id}, which its "
                "row shows now: a new version of this job would be paid for and never "
                "shown; re-roll that job instead",
                code="row_taken",
            )
        cfg = self.settings
        intent = held.intent
        size = promotion.image_size if promotion is not None else None
        price = (
            Decimal(str(intent["price"])) if intent else self._price(job, instruction, target, size)
        )
        day = str(intent.get("day") or self.clock().strftime("%Y-%m-%d"))
        seed = int(intent.get("seed") or self.seeds())
        # The intent first: whoever finds this record (a retry, the sweeper) knows what
        # the next step reserves, and where to give it back.
        held.note(
            intent={
                "kind": "reroll",
                "caller": caller,
                "day": day,
                "job_id": job.job_id,
                "variant": n,
                "instruction": instruction,
                "seed": seed,
                "price": money(price),
            }
        )
        key = reservation_key(held.names)
        # Reserved only while this request holds its record (see intake).
        try:
            ok, budget = reserve(
                self.budget, cfg, caller, day, key, 1, price, Fence(held.key, held.holder)
            )
        except FencedOut as exc:
            raise TransientError(f"another request took this one over: {exc}") from exc
        if not ok:
            return OverBudget(
                budget,
                f"a new version costs ${money(price)}; today {budget.images_remaining} images "
                f"and ${budget.cost_remaining_usd} remain",
            )
        wanted = VersionRequest(
            instruction,
            seed,
            caller,
            day,
            money(price),
            held.key,
            promotes=promotes,
            image_size=size,
            target_model=target if target != job.model else None,
        )
        # Added only while this request still holds its record: one that lost it (it
        # stalled; the sweeper gave its reservation back) adds nothing.
        try:
            added = self.ledger.apply(
                job.job_id,
                lambda j: versions.add_version(j, n, wanted, self.clock()),
                Fence(held.key, held.holder),
            ).value
        except FencedOut as exc:
            raise TransientError(f"another request took this one over: {exc}") from exc
        if added.version is None:
            try:
                self.budget.release(caller, day, key, Fence(held.key, held.holder))
            except FencedOut as exc:
                raise TransientError(f"another request took this one over: {exc}") from exc
            return Refused(added.refusal or "no new version now")
        number = added.version
        answer = RerollAccepted(
            job_id=job.job_id,
            variant=n,
            version=number,
            kind="promote" if promotes is not None else ("edit" if instruction else "reroll"),
            instruction=instruction,
            state="queued",
            price_per_image_usd=money(price),
            budget=budget,
        )
        held.note(body=kept_answer(answer))
        publish_version(self.publisher, job, n, number, caller)
        log.info(
            "version requested",
            extra={
                "job_id": job.job_id,
                "variant": n,
                "version": number,
                "event": "version_requested",
            },
        )
        return Queued(answer)


def reservation_key(names: str) -> str:
    """Under which key a re-roll's image is reserved on the caller's day (``names``:
    what the request's record names)."""
    return f"reroll:{names}"


def publish_version(publisher: JobPublisher, job: Job, n: int, number: int, caller: str) -> None:
    """Hand version ``number`` of variant ``n`` to the generate function; TransientError
    (the request is retried, or finished by the sweeper) when it did not go out."""
    message = JobMessage(
        job_id=job.job_id, batch_id=job.batch_id, scene_id=job.scene_id, variant=n, version=number
    )
    attributes = {"batch_id": job.batch_id, "caller": caller, "reason": "reroll"}
    error = publisher.publish([(message, attributes)]).get(job.job_id)
    if error is not None:
        raise TransientError(f"the new version could not be queued yet: {error}")
