"""Pub/Sub-pushed entry point: the fleet's one sheet writer brings a spreadsheet's
rows up to date."""

from __future__ import annotations

import logging

import functions_framework
from cloudevents.http import CloudEvent

from functions import wiring
from shared.adapters.cloud_logging import setup_logging
from shared.contracts.messages import push_message, rows_message
from shared.domain.errors import PermanentError

log = logging.getLogger(__name__)


@functions_framework.cloud_event
def write_sheet_rows(cloud_event: CloudEvent) -> None:
    """Return acknowledges the message; a raised error has it redelivered."""
    setup_logging()
    try:
        message = rows_message(push_message(cloud_event.data))
    except PermanentError as exc:
        log.error("message dropped: %s", exc, extra={"event": cloud_event["id"]})
        return
    wiring.sheet_rows().flush(message.spreadsheet_id)
