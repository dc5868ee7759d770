"""HTTPS entry point called by the sheet's Apps Script: routes, auth, JSON errors."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import flask
import functions_framework
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import BaseConverter, Map, Rule

from functions import wiring
from shared.adapters.cloud_logging import setup_logging
from shared.adapters.identity import AuthFailure, Identity
from shared.contracts.answers import ReviewAnswer, model_list
from shared.contracts.requests import (
    BatchRequest,
    ExportRequest,
    FieldProblem,
    FinalRequest,
    Limits,
    ModelShape,
    PromoteRequest,
    RerollRequest,
    ReviewRequest,
)
from shared.domain.errors import ConfigError, TransientError
from shared.domain.ids import utcnow
from shared.domain.job import ASSET_SIZES
from shared.services.daily_budget import OverBudget
from shared.services.exports import ExportRefusal
from shared.services.intake import ModelUnavailable, SheetMismatch
from shared.services.once import InProgress
from shared.services.rerolls import Promotion, Queued, Refused, RerollOutcome
from shared.services.reviews import Refusal as ReviewRefusal
from shared.services.views import deployment_limits

log = logging.getLogger(__name__)

OPENAPI_PATH = Path(__file__).with_name("openapi.json")
MAX_IDEMPOTENCY_KEY = 200

Handler = Callable[..., flask.Response]


def error(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, str]] | None = None,
    **extra: Any,
) -> flask.Response:
    body: dict[str, Any] = {"error": code, "message": message}
    body.update({name: value for name, value in extra.items() if value is not None})
    if details:
        body["details"] = details
    return _json(status, body)


def _json(status: int, body: dict[str, Any] | BaseModel) -> flask.Response:
    if isinstance(body, BaseModel):
        body = body.model_dump(mode="json", by_alias=True, exclude_none=True)
    response = flask.make_response(json.dumps(body), status)
    response.mimetype = "application/json"
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
        problem = (err.get("ctx") or {}).get("error")
        if isinstance(problem, FieldProblem):
            loc = (*loc, *problem.path)
        # Model-level checks (such as duplicate scene ids) are about the items.
        field = _field(loc) if loc else "items"
        reason = str(err["msg"]).removeprefix("Value error, ")
        details.append({"field": field, "reason": reason})
    return details


def _identify(request: flask.Request) -> Identity | flask.Response:
    headers = {name: value for name, value in request.headers.items()}
    result = wiring.authenticator().authenticate(headers)
    if isinstance(result, AuthFailure):
        response = error(result.status, result.code, result.message)
        if result.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="image-pipeline"'
        return response
    return result


def healthz(request: flask.Request) -> flask.Response:
    return _json(200, {"ok": True})


def openapi(request: flask.Request) -> flask.Response:
    return _json(200, _openapi_document())


@lru_cache(maxsize=1)
def _openapi_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())
    return document


def _limits(named: object = None, identity: Identity | None = None) -> Limits:
    """What a request may ask for; shapes and the reference limit are the catalog
    entry's of the model the batch names (``named``), else the configured one's;
    the spreadsheets, those of the caller (``identity``)."""
    cfg = wiring.settings()
    model = named if isinstance(named, str) else cfg.gemini_model
    entry = cfg.catalog.entry(model)
    return Limits(
        max_items=cfg.max_items_per_batch,
        max_variants=cfg.max_variants,
        max_prompt_chars=cfg.max_prompt_chars,
        images_bucket=cfg.images_bucket,
        references_prefix=cfg.references_prefix,
        allowed_spreadsheet_ids=tuple(
            cfg.spreadsheets_for(identity.caller, identity.admin)
            if identity is not None
            else cfg.allowed_spreadsheet_ids
        ),
        models=tuple(sorted(cfg.catalog.models)),
        aspect_ratios=entry.aspect_ratios if entry else (),
        image_sizes=entry.image_sizes if entry else (),
        economy_lane=cfg.gemini_backend == "gemini_api",
        max_references=cfg.reference_limit(model),
        max_characters=entry.max_character_references if entry else None,
        max_objects=entry.max_object_references if entry else None,
        shapes={
            name: ModelShape(
                aspect_ratios=each.aspect_ratios,
                image_sizes=each.image_sizes,
                max_references=cfg.reference_limit(name),
                max_characters=each.max_character_references,
                max_objects=each.max_object_references,
            )
            for name, each in cfg.catalog.models.items()
        },
    )


def _json_body(
    request: flask.Request, what: str = "the body", optional: bool = False
) -> dict[str, Any] | flask.Response:
    """The request's JSON object, or the error answer; ``optional``: no body is {}."""
    cfg = wiring.settings()
    if (request.content_length or 0) > cfg.max_body_bytes:
        return error(
            413, "payload_too_large", f"the body must be at most {cfg.max_body_bytes} bytes"
        )
    raw = request.get_data(cache=False)
    if optional and not raw.strip():
        return {}
    if request.mimetype != "application/json":
        return error(415, "unsupported_media_type", f"send {what} as application/json")
    if len(raw) > cfg.max_body_bytes:  # a chunked body has no Content-Length
        return error(
            413, "payload_too_large", f"the body must be at most {cfg.max_body_bytes} bytes"
        )
    try:
        payload = json.loads(raw)
    except RecursionError:
        return error(400, "invalid_json", "the body is nested too deeply")
    except ValueError as exc:
        return error(400, "invalid_json", f"the body is not valid JSON: {exc}")
    if not isinstance(payload, dict):
        return error(400, "invalid_json", "the body must be a JSON object")
    return payload


def _idempotency_key(request: flask.Request) -> str | flask.Response | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY):
        return error(
            400,
            "invalid_request",
            "the request is invalid",
            [{"field": "Idempotency-Key", "reason": f"must be 1-{MAX_IDEMPOTENCY_KEY} characters"}],
        )
    return key


def _keyed_json(
    request: flask.Request, what: str, optional: bool = False
) -> tuple[Identity, dict[str, Any], str | None] | flask.Response:
    """Who asks, the JSON body and the Idempotency-Key of a request that creates
    something; or the error answer."""
    identity = _identify(request)
    if isinstance(identity, flask.Response):
        return identity
    payload = _json_body(request, what, optional)
    if isinstance(payload, flask.Response):
        return payload
    key = _idempotency_key(request)
    if isinstance(key, flask.Response):
        return key
    return identity, payload, key


def submit_batch(request: flask.Request) -> flask.Response:
    parsed = _keyed_json(request, "the batch")
    if isinstance(parsed, flask.Response):
        return parsed
    identity, payload, key = parsed
    try:
        batch = BatchRequest.model_validate(
            payload, context={"limits": _limits(payload.get("model"), identity)}
        )
    except ValidationError as exc:
        return error(400, "invalid_request", "the batch is invalid", validation_details(exc))
    problems = wiring.intake().anchor_problems(batch, identity.caller, identity.admin)
    if problems:
        return error(400, "invalid_request", "the batch is invalid", problems)
    service = wiring.intake()
    if batch.run_mode == "dry_run":
        plan = service.plan(batch, identity.caller, identity.admin)
        if isinstance(plan, ModelUnavailable):
            return _model_unavailable(plan, named_in_batch=batch.model is not None)
        if isinstance(plan, SheetMismatch):
            return _sheet_mismatch(plan)
        return _json(200, plan)
    outcome = service.submit(batch, identity.caller, key, identity.admin)
    if isinstance(outcome, ModelUnavailable):
        return _model_unavailable(outcome, named_in_batch=batch.model is not None)
    if isinstance(outcome, SheetMismatch):
        return _sheet_mismatch(outcome)
    if isinstance(outcome, InProgress):
        return error(
            409,
            "in_progress",
            "the same batch is being submitted right now; ask for its status in a moment",
        )
    if isinstance(outcome, OverBudget):
        return error(
            429,
            "budget_exceeded",
            outcome.message,
            budget=outcome.budget.model_dump(mode="json"),
        )
    response = _json(202, outcome.answer)
    if outcome.replay:
        response.headers["Idempotent-Replay"] = "true"
    else:
        log.info(
            "batch accepted",
            extra={"batch_id": outcome.answer.batch_id, "event": "batch_accepted"},
        )
    return response


def _owned(
    request: flask.Request,
    what: str,
    ident: str,
    view: Callable[[str, str, bool], BaseModel | None],
) -> flask.Response:
    """The caller's (or, for an admin, anyone's) job or batch; 404 for the rest."""
    identity = _identify(request)
    if isinstance(identity, flask.Response):
        return identity
    found = view(ident, identity.caller, identity.admin)
    if found is None:
        return error(404, "not_found", f"no {what} {ident} for this caller")
    return _json(200, found)


def _model_unavailable(refusal: ModelUnavailable, named_in_batch: bool) -> flask.Response:
    """422: nothing was reserved or queued; says which setting picks the model."""
    where = (
        "the batch's model field"
        if named_in_batch
        else "GEMINI_MODEL (Terraform: generation.gemini_model)"
    )
    return error(
        422,
        "model_unavailable",
        f"the image model {refusal.model!r} is not available ({refusal.reason}); "
        f"nothing was reserved or queued. Choose a current model in {where}; "
        "GET /models lists the catalog.",
        model=refusal.model,
        replacement=refusal.replacement,
    )


def _sheet_mismatch(refusal: SheetMismatch) -> flask.Response:
    """422, the same in a dry run and live: nothing was reserved or queued."""
    return error(
        422,
        "sheet_mismatch",
        "the sheet cannot show every image of this batch, and each would be paid for; "
        "nothing was reserved or queued. Fix the rows or columns named in details "
        "(or send only the rows that are ready).",
        refusal.problems,
    )


def models(request: flask.Request) -> flask.Response:
    """The model catalog: what each model accepts and costs (the Generate dialog's choices)."""
    identity = _identify(request)
    if isinstance(identity, flask.Response):
        return identity
    cfg = wiring.settings()
    return _json(200, model_list(cfg.catalog, cfg.gemini_model, utcnow().date()))


def limits(request: flask.Request) -> flask.Response:
    """What this deployment accepts (variants, sizes and shapes per model, prompt
    length, items per batch): the sheet reads it once per run."""
    identity = _identify(request)
    if isinstance(identity, flask.Response):
        return identity
    return _json(200, deployment_limits(wiring.settings()))


def job_status(request: flask.Request, job_id: str) -> flask.Response:
    return _owned(request, "job", job_id, lambda *who: wiring.intake().job_status(*who))


def batch_status(request: flask.Request, batch_id: str) -> flask.Response:
    return _owned(request, "batch", batch_id, lambda *who: wiring.intake().batch_status(*who))


def asset(request: flask.Request, job_id: str, variant: int) -> flask.Response:
    """Redirect a durable sheet link to a freshly signed, short-lived URL."""
    size = request.args.get("size", "thumb")
    sig = request.args.get("sig", "")
    version_text = request.args.get("version", "1")
    version = int(version_text) if version_text.isdigit() and len(version_text) <= 3 else 0
    signer = wiring.link_signer()
    if (
        size not in ASSET_SIZES
        or not version
        or not signer.verify(job_id, variant, size, sig, version)
    ):
        return error(403, "forbidden", "the link's signature is missing or wrong")
    job = wiring.job_store().get_job(job_id)
    try:
        slot = job.slot(variant, version) if job else None
    except KeyError:
        slot = None
    name = slot.asset_name(size) if slot is not None else None
    if name is None:
        return error(404, "not_found", "this image is not ready")
    cfg = wiring.settings()
    bucket = cfg.thumbnails_bucket if size == "thumb" else cfg.images_bucket
    return _redirect(bucket, name)


def _redirect(bucket: str, name: str) -> flask.Response:
    cfg = wiring.settings()
    url = wiring.object_store().signed_url(bucket, name, cfg.signed_url_ttl_s)
    response = flask.make_response(flask.redirect(url, code=302))
    # Sheets re-fetches images; let it cache a little less than the URL lives.
    response.headers["Cache-Control"] = f"private, max-age={max(cfg.signed_url_ttl_s - 60, 0)}"
    return response


def cancel_job(request: flask.Request, job_id: str) -> flask.Response:
    return _owned(request, "job", job_id, lambda *who: wiring.cancels().cancel_job(*who))


def cancel_batch(request: flask.Request, batch_id: str) -> flask.Response:
    return _owned(request, "batch", batch_id, lambda *who: wiring.cancels().cancel_batch(*who))


def reroll(request: flask.Request, job_id: str, variant: int) -> flask.Response:
    parsed = _keyed_json(request, "the body", optional=True)  # no body: a plain re-roll
    if isinstance(parsed, flask.Response):
        return parsed
    identity, payload, key = parsed
    try:
        body = RerollRequest.model_validate(payload, context={"limits": _limits()})
    except ValidationError as exc:
        return error(400, "invalid_request", "the request is invalid", validation_details(exc))
    outcome = wiring.rerolls().request(
        job_id, variant, body.instruction, identity.caller, identity.admin, key
    )
    return _version_answer(outcome, job_id, variant)


def promote(request: flask.Request, job_id: str, variant: int) -> flask.Response:
    parsed = _keyed_json(request, "the body")
    if isinstance(parsed, flask.Response):
        return parsed
    identity, payload, key = parsed
    try:
        body = PromoteRequest.model_validate(payload)
    except ValidationError as exc:
        return error(400, "invalid_request", "the request is invalid", validation_details(exc))
    outcome = wiring.rerolls().request(
        job_id,
        variant,
        None,
        identity.caller,
        identity.admin,
        key,
        promotion=Promotion(body.image_size, body.version),
    )
    return _version_answer(outcome, job_id, variant)


def _version_answer(outcome: RerollOutcome | None, job_id: str, variant: int) -> flask.Response:
    """A re-roll's, an edit's or a promotion's answer."""
    if outcome is None:
        return error(404, "not_found", f"no job {job_id} with variant {variant} for this caller")
    if isinstance(outcome, InProgress):
        return error(409, "in_progress", "the same request is being handled right now")
    if isinstance(outcome, Refused) and outcome.code == "bad_size":
        details = [{"field": "image_size", "reason": outcome.message}]
        return error(400, "invalid_request", outcome.message, details)
    if isinstance(outcome, Refused):
        return error(409, outcome.code, outcome.message)
    if isinstance(outcome, OverBudget):
        return error(
            429, "budget_exceeded", outcome.message, budget=outcome.budget.model_dump(mode="json")
        )
    response = _json(202, outcome.answer)
    if isinstance(outcome, Queued) and outcome.replay:
        response.headers["Idempotent-Replay"] = "true"
    return response


def review(request: flask.Request, job_id: str, variant: int) -> flask.Response:
    parsed = _decision(request, ReviewRequest)
    if isinstance(parsed, flask.Response):
        return parsed
    identity, body = parsed
    assert isinstance(body, ReviewRequest)
    return _reviewed(wiring.reviews().decide(job_id, variant, body, *identity), job_id)


def final_pick(request: flask.Request, job_id: str) -> flask.Response:
    parsed = _decision(request, FinalRequest)
    if isinstance(parsed, flask.Response):
        return parsed
    identity, body = parsed
    assert isinstance(body, FinalRequest)
    return _reviewed(wiring.reviews().pick(job_id, body, *identity), job_id)


def _decision(
    request: flask.Request, model: type[ReviewRequest] | type[FinalRequest]
) -> tuple[tuple[str, bool], BaseModel] | flask.Response:
    identity = _identify(request)
    if isinstance(identity, flask.Response):
        return identity
    payload = _json_body(request, "the decision")
    if isinstance(payload, flask.Response):
        return payload
    try:
        body = model.model_validate(payload)
    except ValidationError as exc:
        return error(400, "invalid_request", "the request is invalid", validation_details(exc))
    return (identity.caller, identity.admin), body


def _reviewed(outcome: ReviewAnswer | ReviewRefusal | None, job_id: str) -> flask.Response:
    if outcome is None:
        return error(404, "not_found", f"no job {job_id} for this caller")
    if isinstance(outcome, ReviewRefusal):
        return error(409, "not_ready", outcome.message)
    return _json(200, outcome)


def export_batch(request: flask.Request, batch_id: str) -> flask.Response:
    identity = _identify(request)
    if isinstance(identity, flask.Response):
        return identity
    payload = _json_body(request, "the export", optional=True)  # no body: a zip of all
    if isinstance(payload, flask.Response):
        return payload
    try:
        body = ExportRequest.model_validate(payload)
    except ValidationError as exc:
        return error(400, "invalid_request", "the request is invalid", validation_details(exc))
    view = wiring.exports().request(batch_id, identity.caller, identity.admin, body)
    if view is None:
        return error(404, "not_found", f"no batch {batch_id} for this caller")
    if isinstance(view, ExportRefusal):
        details = [{"field": view.field, "reason": view.reason}]
        return error(400, "invalid_request", view.reason, details)
    return _json(202, view)


def export_download(request: flask.Request, batch_id: str, export_id: str) -> flask.Response:
    """Redirect a durable zip link to a freshly signed, short-lived URL."""
    sig = request.args.get("sig", "")
    if not wiring.link_signer().verify_export(batch_id, export_id, sig):
        return error(403, "forbidden", "the link's signature is missing or wrong")
    name = wiring.exports().finished_zip(batch_id, export_id)
    if name is None:
        return error(404, "not_found", "this zip is not ready (or a newer one replaced it)")
    return _redirect(wiring.settings().images_bucket, name)


class IdConverter(BaseConverter):
    """Our ids (``job_<hex>``, ``bat_<hex>``): letters, digits, ``_`` and ``-``."""

    regex = "[A-Za-z0-9_-]{1,64}"


HANDLERS: dict[str, Handler] = {
    "healthz": healthz,
    "openapi": openapi,
    "submit_batch": submit_batch,
    "job_status": job_status,
    "batch_status": batch_status,
    "asset": asset,
    "models": models,
    "limits": limits,
    "cancel_job": cancel_job,
    "cancel_batch": cancel_batch,
    "reroll": reroll,
    "promote": promote,
    "review": review,
    "final_pick": final_pick,
    "export_batch": export_batch,
    "export_download": export_download,
}
ROUTES = Map(
    [
        Rule("/healthz", methods=["GET"], endpoint="healthz"),
        Rule("/test", methods=["GET"], endpoint="healthz"),  # the seed's health check
        Rule("/openapi.json", methods=["GET"], endpoint="openapi"),
        Rule("/batch/images", methods=["POST"], endpoint="submit_batch"),
        Rule("/models", methods=["GET"], endpoint="models"),
        Rule("/limits", methods=["GET"], endpoint="limits"),
        Rule("/status/<id:job_id>", methods=["GET"], endpoint="job_status"),
        Rule("/batches/<id:batch_id>", methods=["GET"], endpoint="batch_status"),
        Rule("/assets/<id:job_id>/<int(max=99):variant>", methods=["GET"], endpoint="asset"),
        Rule("/jobs/<id:job_id>:cancel", methods=["POST"], endpoint="cancel_job"),
        Rule("/batches/<id:batch_id>:cancel", methods=["POST"], endpoint="cancel_batch"),
        Rule(
            "/jobs/<id:job_id>/variants/<int(min=1,max=99):variant>:reroll",
            methods=["POST"],
            endpoint="reroll",
        ),
        Rule(
            "/jobs/<id:job_id>/variants/<int(min=1,max=99):variant>:promote",
            methods=["POST"],
            endpoint="promote",
        ),
        Rule(
            "/jobs/<id:job_id>/variants/<int(min=1,max=99):variant>:review",
            methods=["POST"],
            endpoint="review",
        ),
        Rule("/jobs/<id:job_id>:final", methods=["POST"], endpoint="final_pick"),
        Rule("/batches/<id:batch_id>:export", methods=["POST"], endpoint="export_batch"),
        Rule("/exports/<id:batch_id>/<id:export_id>", methods=["GET"], endpoint="export_download"),
    ],
    converters={"id": IdConverter},
    strict_slashes=False,
    merge_slashes=False,
)


def route(request: flask.Request) -> flask.Response:
    # Werkzeug lets HEAD match GET rules, as HTTP expects; nothing else is added.
    urls = ROUTES.bind("api", path_info=request.path.rstrip("/") or "/")
    try:
        endpoint, arguments = urls.match(method=request.method)
    except MethodNotAllowed as exc:
        response = error(405, "method_not_allowed", f"{request.method} is not allowed here")
        response.headers["Allow"] = ", ".join(sorted(exc.valid_methods or ()))
        return response
    except NotFound:
        return error(404, "not_found", f"no route {request.path}")
    return HANDLERS[str(endpoint)](request, **arguments)


def _http_error(exc: HTTPException) -> flask.Response:
    """Errors raised before our handler runs (e.g. an unroutable path) as JSON too."""
    code = exc.code or 500
    name = (exc.name or "error").lower().replace(" ", "_")
    return error(code, name, exc.description or name)


# functions-framework loads this module inside its app's context: errors that
# Flask itself answers (no route matched the raw path) get the JSON shape too.
if flask.has_app_context():
    flask.current_app.register_error_handler(HTTPException, _http_error)


@functions_framework.http
def http_api(request: flask.Request) -> flask.Response:
    setup_logging()
    try:
        return route(request)
    except ConfigError as exc:
        # The deployment's settings are wrong: every request says which one (an
        # operator's fix brings the service back), not only the log.
        log.error("misconfigured: %s", exc)
        return error(503, "misconfigured", f"this deployment is misconfigured: {exc}")
    except TransientError as exc:
        log.warning("request failed, retry later: %s", exc)
        response = error(503, "unavailable", "a backing service is busy; try again shortly")
        response.headers["Retry-After"] = "5"
        return response
    except Exception:
        # Always answer JSON, even for a bug; the log has the traceback.
        log.exception("request failed")
        return error(500, "internal", "the request failed; it has been logged")
