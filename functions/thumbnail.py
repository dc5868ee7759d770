"""GCS-finalize entry point (notification pushed through Pub/Sub): thumbnail + sheet."""

from __future__ import annotations

import logging

import functions_framework
from cloudevents.http import CloudEvent

from functions import wiring
from shared.adapters.cloud_logging import setup_logging
from shared.contracts.messages import push_message, storage_object
from shared.domain.errors import PermanentError

log = logging.getLogger(__name__)


@functions_framework.cloud_event
def make_thumbnails(cloud_event: CloudEvent) -> None:
    """Return acknowledges the notification; a raised error has it redelivered."""
    setup_logging()
    try:
        obj = storage_object(push_message(cloud_event.data))
    except PermanentError as exc:
        log.error("notification dropped: %s", exc, extra={"event": cloud_event["id"]})
        return
    wiring.thumbnails().handle(obj)
