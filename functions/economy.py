"""Scheduled entry point (Cloud Scheduler, OIDC-authenticated; a loop in the dev
stack): a sweep (ends what nobody retried: requests, lost messages, jobs past their
age limit, follow-ups a dead delivery left), then one tick of the economy lane
(submits pending economy variants in Gemini batches, collects the batches Gemini
finished)."""

from __future__ import annotations

import json
import logging

import flask
import functions_framework

from functions import wiring
from shared.adapters.cloud_logging import setup_logging

log = logging.getLogger(__name__)


@functions_framework.http
def run_economy(request: flask.Request) -> flask.Response:
    """Always answers: 200 with what the tick did (an error of one batch is in the
    report and retried by the next tick); 500 only for a bug, which is logged."""
    setup_logging()
    try:
        # The sweep first: it is short and bounded, and must not wait on a long tick.
        swept = wiring.sweeper().sweep()
        report = wiring.economy().tick()
    except Exception:
        log.exception("economy tick failed")
        return _json(500, {"error": "internal", "message": "the tick failed; it has been logged"})
    return _json(200, {**report.__dict__, "sweep": swept.__dict__})


def _json(status: int, body: dict[str, object]) -> flask.Response:
    response = flask.make_response(json.dumps(body), status)
    response.mimetype = "application/json"
    return response
