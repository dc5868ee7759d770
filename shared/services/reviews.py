"""The team's review over HTTP: approve or reject an image, pick a scene's final one.

Each decision is recorded on the job (who, when, which version) through the job
ledger, so ``/status`` and ``/batches/{id}`` show it and deliveries select by it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from shared.contracts.answers import ReviewAnswer
from shared.contracts.requests import FinalRequest, ReviewRequest
from shared.domain import reviews
from shared.domain.errors import NotFound
from shared.domain.ids import utcnow
from shared.domain.job import Job
from shared.domain.reviews import ReviewRefused
from shared.services.ledger import JobLedger
from shared.services.ports import JobStore
from shared.services.views import final_view


@dataclass(frozen=True)
class Refusal:
    """Why the decision cannot apply (409): the image is not there, or not finished."""

    message: str


@dataclass(frozen=True)
class Reviews:
    store: JobStore
    ledger: JobLedger
    clock: Callable[[], datetime] = utcnow

    def _job(self, job_id: str, caller: str, admin: bool) -> Job | None:
        job = self.store.get_job(job_id)
        return job if job is not None and (job.caller == caller or admin) else None

    def decide(
        self, job_id: str, n: int, body: ReviewRequest, caller: str, admin: bool = False
    ) -> ReviewAnswer | Refusal | None:
        """Approve, reject or clear (``none``) one image; None if the job is missing
        or someone else's."""
        if self._job(job_id, caller, admin) is None:
            return None
        decision = None if body.decision == "none" else body.decision
        now = self.clock()
        try:
            applied = self.ledger.apply(
                job_id, lambda j: reviews.decide(j, n, body.version, decision, caller, now)
            )
        except ReviewRefused as exc:
            return Refusal(str(exc))
        except NotFound:
            return None
        return ReviewAnswer(
            job_id=job_id,
            variant=n,
            version=applied.value,
            decision=body.decision,
            final=final_view(applied.job),
            by=caller,
            at=now.isoformat(),
        )

    def pick(
        self, job_id: str, body: FinalRequest, caller: str, admin: bool = False
    ) -> ReviewAnswer | Refusal | None:
        """Make one image the scene's final pick (approving it), or clear the pick."""
        if self._job(job_id, caller, admin) is None:
            return None
        now = self.clock()
        try:
            applied = self.ledger.apply(
                job_id,
                lambda j: reviews.pick_final(j, body.variant, body.version, caller, now),
            )
        except ReviewRefused as exc:
            return Refusal(str(exc))
        except NotFound:
            return None
        picked = applied.value
        return ReviewAnswer(
            job_id=job_id,
            variant=picked[0] if picked else None,
            version=picked[1] if picked else None,
            decision="final" if picked else "none",
            final=final_view(applied.job),
            by=caller,
            at=now.isoformat(),
        )
