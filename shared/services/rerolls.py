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
from shared.domain import lifecycle, pricing, versions
from shared.domain.ids import utcnow
from shared.domain.job import Job, money
from shared.domain.versions import VersionRequest
from shared.services.daily_budget import OverBudget, reserve
from shared.services.ledger import JobLedger
from shared.services.once import InProgress, Replay, kept_answer, run_once, scoped_key
from shared.services.ports import BudgetLedger, IdempotencyStore, JobPublisher, JobStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Queued:
    """The version was recorded and published (or this replays that first answer)."""

    answer: RerollAccepted
    replay: bool = False


@dataclass(frozen=True)
class Refused:
    """The variant cannot take a new version now (still being made, nothing to edit)."""

    message: str


RerollOutcome = Queued | Refused | OverBudget | InProgress


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
    ) -> RerollOutcome | None:
        """A new version of variant ``n``, once per idempotency key; None if the job
        or variant is missing or the job someone else's."""
        job = self.store.get_job(job_id)
        if job is None or (job.caller != caller and not admin) or str(n) not in job.variants:
            return None
        if idempotency_key is None:
            return self._request(job, n, instruction, caller)
        outcome = run_once(
            self.idempotency,
            scoped_key(caller, f"reroll:{job_id}:{n}:{idempotency_key}"),
            self.clock(),
            self.settings.idempotency_ttl_s,
            lambda: self._request(job, n, instruction, caller),
            lambda done: kept_answer(done.answer) if isinstance(done, Queued) else None,
        )
        if isinstance(outcome, Replay):
            return Queued(RerollAccepted.model_validate(outcome.body), replay=True)
        return outcome

    def _price(self, job: Job, instruction: str | None) -> Decimal:
        """The estimate a new version reserves: the catalog's live price at the job's
        size plus its input tokens (an edit sends its instruction and the image)."""
        entry = self.settings.catalog.entry(job.model)
        if entry is None:
            return Decimal(job.price_per_image)  # a model no longer listed: as it was
        size = entry.size(job.image_size or self.settings.gemini_image_size or None)
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

    def _request(
        self, job: Job, n: int, instruction: str | None, caller: str
    ) -> Queued | Refused | OverBudget:
        cfg = self.settings
        price = self._price(job, instruction)
        now = self.clock()
        day = now.strftime("%Y-%m-%d")
        ok, budget = reserve(self.budget, cfg, caller, day, 1, price)
        if not ok:
            return OverBudget(
                budget,
                f"a new version costs ${money(price)}; today {budget.images_remaining} images "
                f"and ${budget.cost_remaining_usd} remain",
            )
        wanted = VersionRequest(instruction, self.seeds(), caller, day, money(price))
        try:
            added = self.ledger.apply(
                job.job_id, lambda j: versions.add_version(j, n, wanted, self.clock())
            ).value
        except BaseException:
            self.budget.refund(caller, day, 1, price)
            raise
        if added.version is None:
            self.budget.refund(caller, day, 1, price)
            return Refused(added.refusal or "no new version now")
        number = added.version
        message = JobMessage(
            job_id=job.job_id,
            batch_id=job.batch_id,
            scene_id=job.scene_id,
            variant=n,
            version=number,
        )
        attributes = {"batch_id": job.batch_id, "caller": caller, "reason": "reroll"}
        error = self.publisher.publish([(message, attributes)]).get(job.job_id)
        if error is not None:
            # The failed version gives its reservation back (the ledger settles it).
            reason = f"could not be queued: {error}"
            self.ledger.apply(
                job.job_id,
                lambda j: lifecycle.variant_failed(j, n, reason, self.clock(), version=number),
            )
        log.info(
            "version requested",
            extra={
                "job_id": job.job_id,
                "variant": n,
                "version": number,
                "event": "version_requested",
                "error": error,
            },
        )
        return Queued(
            RerollAccepted(
                job_id=job.job_id,
                variant=n,
                version=number,
                kind="edit" if instruction else "reroll",
                instruction=instruction,
                state="failed" if error else "queued",
                error=error,
                price_per_image_usd=money(price),
                budget=budget,
            )
        )
