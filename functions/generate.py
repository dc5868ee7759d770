"""Pub/Sub-pushed entry point: generate the variants of one job."""

from __future__ import annotations

import logging

import functions_framework
from cloudevents.http import CloudEvent

from functions import wiring
from shared.adapters.cloud_logging import setup_logging
from shared.contracts.messages import job_message, push_message
from shared.domain.errors import PermanentError

log = logging.getLogger(__name__)


@functions_framework.cloud_event
def generate_images(cloud_event: CloudEvent) -> None:
    """Return acknowledges the message; a raised error has it redelivered."""
    setup_logging()
    try:
        push = push_message(cloud_event.data)
        message = job_message(push)
    except PermanentError as exc:
        log.error("message dropped: %s", exc, extra={"event": cloud_event["id"]})
        return
    wiring.generation().handle(message, push.published_at)
