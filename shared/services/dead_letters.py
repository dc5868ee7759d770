"""Dead letters: a message Pub/Sub gave up on fails its job, with the last error;
an image that was made meanwhile is kept (and charged once), never failed for free."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.config.settings import Settings
from shared.contracts.messages import PushMessage, export_message, job_message, storage_object
from shared.contracts.objects import recorded_spent, variant_key
from shared.domain import handover, lifecycle
from shared.domain.errors import NotFound, PermanentError
from shared.domain.ids import utcnow
from shared.domain.job import TERMINAL_VARIANT_STATES, Job, VariantState, Version
from shared.domain.lifecycle import Spent
from shared.services.ledger import JobEntry, JobLedger
from shared.services.ports import ObjectStore
from shared.services.stored_images import object_names
from shared.services.thumbnails import not_its_image

log = logging.getLogger(__name__)

# Set by Pub/Sub on messages it forwards to a dead-letter topic.
DELIVERY_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"


@dataclass(frozen=True)
class DeadLetters:
    ledger: JobLedger
    settings: Settings
    # The images bucket, looked in before an image is failed: one stored there was
    # made and paid for (its holder stopped before recording it), so it is kept.
    objects: ObjectStore
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
        if n is not None and version is not None:
            try:
                job.slot(n, version)
            except KeyError:
                raise NotFound(f"job {job_id} has no variant {n} version {version}") from None
        with self.ledger.entry(job) as entry:
            if n is not None and version is not None:
                # A later version's own message: that version fails, the job stays.
                self._keep_stored(entry, job, [(n, version)])
                reason = f"gave up after {attempts} deliveries"
                entry.apply(
                    lambda j: lifecycle.gave_up_on(j, n, reason, self.clock(), version=version)
                )
            else:
                self._keep_stored(entry, job, [(int(key), 1) for key in job.variants])
                reason = f"gave up after {attempts} deliveries: {lifecycle.last_cause(job)}"
                entry.apply(lambda j: lifecycle.fail_job(j, reason, self.clock()))
        log.warning(
            "job failed",
            extra={"job_id": job_id, "version": version, "state": "failed", "error": reason},
        )

    def _keep_stored(self, entry: JobEntry, job: Job, images: Sequence[tuple[int, int]]) -> None:
        """Record as uploaded each unfinished image of ``images`` ((variant, version)
        pairs) that is stored all the same: it is kept, charged once, and its
        notification makes its thumbnail; only the others fail."""
        for n, version in images:
            slot = job.slot(n, version)
            if slot.state not in (VariantState.UPLOADED, *TERMINAL_VARIANT_STATES):
                self._keep_if_stored(entry, job, n, version)

    def _keep_if_stored(
        self,
        entry: JobEntry,
        job: Job,
        n: int,
        version: int,
    ) -> None:
        """Record variant ``n``'s image (version ``version``) if it is stored."""
        names = object_names(self.settings)
        found = self.objects.find(self.settings.images_bucket, names.image_stem(job, n, version))
        if found is None:
            return
        parsed = names.parse_image(found.name)
        mime = (parsed.mime_type if parsed else None) or ""
        # As generation records an image a stopped holder stored: its recorded cost,
        # else the estimate its budget reserved.
        slot = job.slot(n, version)
        estimate = slot.price_per_image if isinstance(slot, Version) else job.price_per_image
        spent = recorded_spent(found.metadata) or Spent(job.model, estimate)
        entry.apply(
            lambda j: lifecycle.uploaded(j, n, found.name, mime, self.clock(), spent, version)
        )
        log.warning(
            "image stored but not recorded; kept",
            extra={"job_id": job.job_id, "variant": n, "version": version, "object": found.name},
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
        # Only the variant's own image fails (and charges) it, as in ``Thumbnails``.
        job = self.ledger.get(key.job_id)
        if job is None:
            raise NotFound(f"job {key.job_id} does not exist")
        try:
            foreign = not_its_image(job, key, obj.name, object_names(self.settings))
        except KeyError:
            raise NotFound(f"job {key.job_id} has no such variant or version") from None
        if foreign is not None:
            raise PermanentError(foreign)
        reason = f"thumbnail gave up after {attempts} deliveries"
        spent = recorded_spent(obj.metadata)
        self.ledger.apply(
            key.job_id,
            lambda j: lifecycle.thumbnail_gave_up(
                j, key.n, reason, self.clock(), obj.name, spent, key.version
            ),
        )
        log.warning(
            "variant failed",
            extra={"job_id": key.job_id, "variant": key.n, "state": "failed", "error": reason},
        )
