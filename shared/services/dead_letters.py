"""Dead letters: a message Pub/Sub gave up on fails its job, with the last error."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from shared.contracts.messages import PushMessage, export_message, job_message, storage_object
from shared.contracts.objects import recorded_spent, variant_key
from shared.domain import handover, lifecycle
from shared.domain.errors import NotFound, PermanentError
from shared.domain.ids import utcnow
from shared.services.ledger import JobLedger

log = logging.getLogger(__name__)

# Set by Pub/Sub on messages it forwards to a dead-letter topic.
DELIVERY_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"


@dataclass(frozen=True)
class DeadLetters:
    ledger: JobLedger
    clock: Callable[[], datetime] = utcnow

    def handle(self, message: PushMessage) -> None:
        """Fail what the message was about (a job, a version, an image's thumbnail, a
        batch's zip); a malformed or unknown one is dropped.

        Transient errors (the store, the sheet) propagate: the dead letter is
        redelivered, and failing a failed job again changes nothing.
        """
        attempts = message.attributes.get(DELIVERY_COUNT, "several")
        try:
            if "eventType" in message.attributes:
                self._thumbnail_gave_up(message, attempts)
            elif "export_id" in message.attributes:
                self._export_gave_up(message, attempts)
            else:
                self._job_gave_up(message, attempts)
        except (PermanentError, NotFound) as exc:
            log.error("dead letter dropped: %s", exc)

    def _job_gave_up(self, message: PushMessage, attempts: str) -> None:
        parsed = job_message(message)
        job_id = parsed.job_id
        job = self.ledger.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        n, version = parsed.variant, parsed.version
        with self.ledger.entry(job) as entry:
            if n is not None and version is not None:
                # A later version's own message: that version fails, the job stays.
                reason = f"gave up after {attempts} deliveries"
                entry.apply(
                    lambda j: lifecycle.gave_up_on(j, n, reason, self.clock(), version=version)
                )
            else:
                reason = f"gave up after {attempts} deliveries: {lifecycle.last_cause(job)}"
                entry.apply(lambda j: lifecycle.fail_job(j, reason, self.clock()))
        log.warning(
            "job failed",
            extra={"job_id": job_id, "version": version, "state": "failed", "error": reason},
        )

    def _export_gave_up(self, message: PushMessage, attempts: str) -> None:
        parsed = export_message(message)
        reason = f"gave up after {attempts} deliveries"
        self.ledger.store.update_batch(
            parsed.batch_id,
            lambda b: handover.fail(b, parsed.export_id, reason, self.clock()),
        )
        log.warning(
            "export failed",
            extra={"batch_id": parsed.batch_id, "export": parsed.export_id, "error": reason},
        )

    def _thumbnail_gave_up(self, message: PushMessage, attempts: str) -> None:
        obj = storage_object(message)
        key = variant_key(obj.metadata)
        if key is None:
            raise PermanentError(f"notification for {obj.name} names no job")
        reason = f"thumbnail gave up after {attempts} deliveries"
        spent = recorded_spent(obj.metadata)
        self.ledger.apply(
            key.job_id,
            lambda j: lifecycle.variant_failed(
                j,
                key.n,
                reason,
                self.clock(),
                spent=spent,
                version=key.version,
                object_name=obj.name,
            ),
        )
        log.warning(
            "variant failed",
            extra={"job_id": key.job_id, "variant": key.n, "state": "failed", "error": reason},
        )
