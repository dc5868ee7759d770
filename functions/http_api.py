"""HTTPS entry point called by the sheet's Apps Script: routes, auth, JSON errors."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import flask
import functions_framework
from pydantic import ValidationError

from functions import wiring
from shared.auth import caller_for_api_key
from shared.logs import setup_logging
from shared.models import BatchRequest, Limits, VariantState

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024

Handler = Callable[..., flask.Response]


def error(
    status: int, code: str, message: str, details: list[dict[str, str]] | None = None
) -> flask.Response:
    body: dict[str, Any] = {"error": code, "message": message}
    if details:
        body["details"] = details
    response = flask.jsonify(body)
    response.status_code = status
    return response


def _json(status: int, body: dict[str, Any]) -> flask.Response:
    response = flask.jsonify(body)
    response.status_code = status
    return response


def _field(loc: tuple[int | str, ...]) -> str:
    """``("items", 0, "variants")`` -> ``items[0].variants``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    details = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        # Model-level checks (such as duplicate scene ids) are about the items.
        field = _field(loc) if loc else "items"
        reason = str(err["msg"]).removeprefix("Value error, ")
        details.append({"field": field, "reason": reason})
    return details


def _caller(request: flask.Request) -> str | None:
    return caller_for_api_key(request.headers.get("X-API-Key"), wiring.settings().api_key_hashes)


def _unauthenticated() -> flask.Response:
    return error(401, "unauthenticated", "send a valid API key in the X-API-Key header")


def healthz(request: flask.Request) -> flask.Response:
    return _json(200, {"ok": True})


def submit_batch(request: flask.Request) -> flask.Response:
    caller = _caller(request)
    if caller is None:
        return _unauthenticated()
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return error(413, "payload_too_large", f"the body must be at most {MAX_BODY_BYTES} bytes")
    if request.mimetype != "application/json":
        return error(415, "unsupported_media_type", "send the batch as application/json")
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        return error(400, "invalid_json", "the body must be a JSON object")
    cfg = wiring.settings()
    limits = Limits(
        max_items=cfg.max_items_per_batch,
        max_variants=cfg.max_variants,
        max_prompt_chars=cfg.max_prompt_chars,
        images_bucket=cfg.images_bucket,
    )
    try:
        batch = BatchRequest.model_validate(payload, context={"limits": limits})
    except ValidationError as exc:
        return error(400, "invalid_request", "the batch is invalid", validation_details(exc))
    service = wiring.intake()
    if batch.run_mode == "dry_run":
        return _json(200, service.plan(batch))
    answer = service.submit(batch, caller)
    log.info(
        "batch accepted",
        extra={"batch_id": answer["batch_id"], "event": "batch_accepted"},
    )
    return _json(202, answer)


def job_status(request: flask.Request, job_id: str) -> flask.Response:
    caller = _caller(request)
    if caller is None:
        return _unauthenticated()
    view = wiring.intake().job_status(job_id, caller)
    if view is None:
        return error(404, "not_found", f"no job {job_id} for this caller")
    return _json(200, view)


def asset(request: flask.Request, job_id: str, variant: str) -> flask.Response:
    """Redirect a durable sheet link to a freshly signed, short-lived URL."""
    size = request.args.get("size", "thumb")
    sig = request.args.get("sig", "")
    if not wiring.link_signer().verify(job_id, int(variant), size, sig):
        return error(403, "forbidden", "the link's signature is missing or wrong")
    job = wiring.job_store().get_job(job_id)
    state = job.variants.get(variant) if job else None
    name = None
    if state is not None and state.state in (VariantState.UPLOADED, VariantState.DONE):
        name = state.thumb_name if size == "thumb" else state.object_name
    if name is None:
        return error(404, "not_found", "this image is not ready")
    cfg = wiring.settings()
    bucket = cfg.thumbs_bucket if size == "thumb" else cfg.images_bucket
    url = wiring.object_store().signed_url(bucket, name, cfg.signed_url_ttl_s)
    response = flask.make_response(flask.redirect(url, code=302))
    # Sheets re-fetches images; let it cache a little less than the URL lives.
    response.headers["Cache-Control"] = f"private, max-age={max(cfg.signed_url_ttl_s - 60, 0)}"
    return response


ROUTES: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
    (re.compile(r"/healthz"), {"GET": healthz}),
    (re.compile(r"/test"), {"GET": healthz}),  # the seed's health check
    (re.compile(r"/batch/images"), {"POST": submit_batch}),
    (re.compile(r"/status/(?P<job_id>[A-Za-z0-9_-]{1,64})"), {"GET": job_status}),
    (
        re.compile(r"/assets/(?P<job_id>[A-Za-z0-9_-]{1,64})/(?P<variant>[0-9]{1,2})"),
        {"GET": asset},
    ),
]


@functions_framework.http
def http_api(request: flask.Request) -> flask.Response:
    setup_logging()
    path = request.path.rstrip("/") or "/"
    for pattern, methods in ROUTES:
        match = pattern.fullmatch(path)
        if match is None:
            continue
        handler = methods.get(request.method)
        if handler is None:
            response = error(405, "method_not_allowed", f"{request.method} is not allowed here")
            response.headers["Allow"] = ", ".join(sorted(methods))
            return response
        return handler(request, **match.groupdict())
    return error(404, "not_found", f"no route {request.path}")
