"""Dead-letter entry point: jobs and notifications Pub/Sub stopped retrying."""

from __future__ import annotations

import logging

import functions_framework
from cloudevents.http import CloudEvent

from functions import wiring
from shared.adapters.cloud_logging import setup_logging
from shared.contracts.messages import push_message
from shared.domain.errors import PermanentError

log = logging.getLogger(__name__)


@functions_framework.cloud_event
def handle_dead_letters(cloud_event: CloudEvent) -> None:
    """Return acknowledges: the job is failed with its reason, or a malformed
    message dropped; a raised transient error (the store, the sheet) has the
    dead letter redelivered, and failing a failed job again changes nothing."""
    setup_logging()
    try:
        message = push_message(cloud_event.data)
    except PermanentError as exc:
        log.error("dead letter dropped: %s", exc, extra={"event": cloud_event["id"]})
        return
    wiring.dead_letters().handle(message)
