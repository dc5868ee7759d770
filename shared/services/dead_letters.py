"""Dead letters: a message Pub/Sub gave up on fails its job, with the last error."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from shared import jobs as transitions
from shared.errors import NotFound, PermanentError
from shared.events import PushMessage, job_message, storage_object
from shared.ids import utcnow
from shared.models import TERMINAL_VARIANT_STATES, Job
from shared.ports import JobStore
from shared.services.completion import log_job_finished
from shared.services.sheet_sync import SheetSync

log = logging.getLogger(__name__)

# Set by Pub/Sub on messages it forwards to a dead-letter topic.
DELIVERY_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"


def last_error(job: Job) -> str:
    """The error recorded on an unfinished variant: what kept the job retrying."""
    errors = [
        v.error for v in job.variants.values() if v.error and v.state not in TERMINAL_VARIANT_STATES
    ]
    return errors[-1] if errors else "no error was recorded"


@dataclass(frozen=True)
class DeadLetters:
    store: JobStore
    sheet: SheetSync
    clock: Callable[[], datetime] = utcnow

    def handle(self, message: PushMessage) -> None:
        attempts = message.attributes.get(DELIVERY_COUNT, "several")
        try:
            if "eventType" in message.attributes:
                self._thumbnail_gave_up(message, attempts)
            else:
                self._job_gave_up(message, attempts)
        except (PermanentError, NotFound) as exc:
            log.error("dead letter dropped: %s", exc)

    def _job_gave_up(self, message: PushMessage, attempts: str) -> None:
        job_id = job_message(message).job_id
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        reason = f"gave up after {attempts} deliveries: {last_error(job)}"
        if self.store.update_job(job_id, lambda j: transitions.fail_job(j, reason, self.clock())):
            self._finished(job_id)
        log.warning("job failed", extra={"job_id": job_id, "state": "failed", "error": reason})
        # Always: the sync writes only if the row differs, and a redelivery after a
        # transient sheet error must still write it.
        self.sheet.sync(job_id)

    def _thumbnail_gave_up(self, message: PushMessage, attempts: str) -> None:
        obj = storage_object(message)
        job_id, variant = obj.metadata.get("job_id"), obj.metadata.get("variant", "")
        if not job_id or not variant.isdigit():
            raise PermanentError(f"notification for {obj.name} names no job")
        n = int(variant)
        reason = f"thumbnail gave up after {attempts} deliveries"
        if self.store.update_job(
            job_id, lambda j: transitions.variant_failed(j, n, reason, self.clock())
        ):
            self._finished(job_id)
        log.warning(
            "variant failed",
            extra={"job_id": job_id, "variant": n, "state": "failed", "error": reason},
        )
        self.sheet.sync(job_id)

    def _finished(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        if job is not None:
            log_job_finished(log, job)
