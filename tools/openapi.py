"""Generate (or check) functions/openapi.json from the pydantic models.

python -m tools.openapi          # rewrite the document
python -m tools.openapi --check  # exit 1 if it differs from the models
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from functions.http_api import OPENAPI_PATH
from shared.contracts.answers import (
    BatchCancelled,
    BatchView,
    DeploymentLimits,
    ErrorBody,
    ExportView,
    Health,
    JobCancelled,
    JobView,
    ModelList,
    Plan,
    RerollAccepted,
    ReviewAnswer,
    Submitted,
)
from shared.contracts.requests import (
    BatchRequest,
    ExportRequest,
    FinalRequest,
    PromoteRequest,
    RerollRequest,
    ReviewRequest,
)

REQUESTS: tuple[type[BaseModel], ...] = (
    BatchRequest,
    RerollRequest,
    PromoteRequest,
    ReviewRequest,
    FinalRequest,
    ExportRequest,
)
MODELS: list[type[BaseModel]] = [
    BatchRequest,
    RerollRequest,
    PromoteRequest,
    ReviewRequest,
    FinalRequest,
    ExportRequest,
    ReviewAnswer,
    Plan,
    Submitted,
    JobView,
    BatchView,
    JobCancelled,
    BatchCancelled,
    RerollAccepted,
    ExportView,
    ModelList,
    DeploymentLimits,
    ErrorBody,
    Health,
]


_VARIANT = {
    "name": "variant",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": 99},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_response(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Invalid request: every offending field with its reason",
        401: "Missing, malformed, expired or wrongly addressed credential",
        403: "Valid identity that is not allowed",
        404: "Not found, or not the caller's",
        409: "The same idempotency key is being processed right now, or (not_ready) the "
        "variant cannot take a new version yet, or (row_taken) its scene was sent again "
        "as a newer job, which its row shows",
        413: "Body larger than the configured limit",
        415: "Body is not application/json",
        422: "The batch's model is not available (model_unavailable): retired, unknown or "
        "not allowed; or the sheet cannot show some of its images (sheet_mismatch: a "
        "scene without a row, a variant without its nano_img_k column, a worksheet or "
        "spreadsheet we cannot read, a row another caller's job shows; each in `details`). "
        "Nothing was reserved or queued",
        429: "Daily image or cost budget exceeded (figures in `budget`)",
        503: "A backing service is busy; retry",
    }
    return {str(code): _json_response(text[code], "ErrorBody") for code in codes}


def build() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(model, "validation" if model in REQUESTS else "serialization") for model in MODELS],
        ref_template="#/components/schemas/{model}",
    )
    auth: list[dict[str, list[str]]] = [{"apiKey": []}, {"idToken": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sheets image pipeline API",
            "version": "1.0.0",
            "description": (
                "Called by the sheet's Apps Script. Every answer is JSON; every error "
                "is an ErrorBody naming the offending fields."
            ),
        },
        "paths": {
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "security": [],
                    "responses": {"200": _json_response("Alive", "Health")},
                }
            },
            "/batch/images": {
                "post": {
                    "operationId": "submitBatch",
                    "security": auth,
                    "parameters": [_IDEMPOTENCY_KEY],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("BatchRequest")}},
                    },
                    "responses": {
                        "200": _json_response("Dry run: the plan, nothing written", "Plan"),
                        "202": _json_response("Live: batch recorded and jobs queued", "Submitted"),
                        **_errors(400, 401, 403, 409, 413, 415, 422, 429, 503),
                    },
                }
            },
            "/models": {
                "get": {
                    "operationId": "models",
                    "description": (
                        "The model catalog: each model's aspect ratios, sizes, reference "
                        "limit and prices by lane and size (the Generate dialog's choices)."
                    ),
                    "security": auth,
                    "responses": {
                        "200": _json_response("The catalog", "ModelList"),
                        **_errors(401, 403),
                    },
                }
            },
            "/limits": {
                "get": {
                    "operationId": "limits",
                    "description": (
                        "What this deployment accepts: items per batch, variants, prompt "
                        "length, body size, lanes, and each model's sizes, aspect ratios and "
                        "reference limit. The sheet checks rows against it before sending."
                    ),
                    "security": auth,
                    "responses": {
                        "200": _json_response("The limits", "DeploymentLimits"),
                        **_errors(401, 403),
                    },
                }
            },
            "/status/{job_id}": {
                "get": {
                    "operationId": "jobStatus",
                    "security": auth,
                    "parameters": [_id_parameter("job_id")],
                    "responses": {
                        "200": _json_response("The job", "JobView"),
                        **_errors(401, 403, 404, 503),
                    },
                }
            },
            "/batches/{batch_id}": {
                "get": {
                    "operationId": "batchStatus",
                    "security": auth,
                    "parameters": [_id_parameter("batch_id")],
                    "responses": {
                        "200": _json_response(
                            "The batch, its jobs and its latest zip (`export`)", "BatchView"
                        ),
                        **_errors(401, 403, 404, 503),
                    },
                }
            },
            "/batches/{batch_id}:cancel": {
                "post": {
                    "operationId": "cancelBatch",
                    "description": _CANCEL,
                    "security": auth,
                    "parameters": [_id_parameter("batch_id")],
                    "responses": {
                        "200": _json_response("What the cancel did to each job", "BatchCancelled"),
                        **_errors(401, 403, 404, 503),
                    },
                }
            },
            "/jobs/{job_id}:cancel": {
                "post": {
                    "operationId": "cancelJob",
                    "description": _CANCEL,
                    "security": auth,
                    "parameters": [_id_parameter("job_id")],
                    "responses": {
                        "200": _json_response("What the cancel did", "JobCancelled"),
                        **_errors(401, 403, 404, 503),
                    },
                }
            },
            "/jobs/{job_id}/variants/{variant}:reroll": {
                "post": {
                    "operationId": "rerollVariant",
                    "description": (
                        "A new version of the variant: without an instruction a fresh generation "
                        "(new seed), with one an edit of the current image. Stored under a new "
                        "object name (earlier versions stay), budgeted and priced like any image; "
                        "once per Idempotency-Key. The sheet's cell shows the newest finished "
                        "version; /status lists every version."
                    ),
                    "security": auth,
                    "parameters": [
                        _id_parameter("job_id"),
                        {
                            "name": "variant",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 99},
                        },
                        _IDEMPOTENCY_KEY,
                    ],
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": _ref("RerollRequest")}},
                    },
                    "responses": {
                        "202": _json_response("The version was queued", "RerollAccepted"),
                        **_errors(400, 401, 403, 404, 409, 413, 415, 429, 503),
                    },
                }
            },
            "/jobs/{job_id}/variants/{variant}:promote": {
                "post": {
                    "operationId": "promoteVariant",
                    "description": (
                        "A chosen image re-made at a larger size (2K, 4K) as a new version, "
                        "the image itself the reference with an instruction to keep it "
                        "unchanged; a draft's with its final model. Budgeted and priced like "
                        "any image, once per Idempotency-Key; the scene's final pick moves to "
                        "it when it is done, if it promoted the pick."
                    ),
                    "security": auth,
                    "parameters": [_id_parameter("job_id"), _VARIANT, _IDEMPOTENCY_KEY],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("PromoteRequest")}},
                    },
                    "responses": {
                        "202": _json_response("The promotion was queued", "RerollAccepted"),
                        **_errors(400, 401, 403, 404, 409, 413, 415, 429, 503),
                    },
                }
            },
            "/jobs/{job_id}/variants/{variant}:review": {
                "post": {
                    "operationId": "reviewImage",
                    "description": (
                        "Approve or reject one image (a version of the variant: name it), or "
                        "clear the decision; recorded with who and when."
                    ),
                    "security": auth,
                    "parameters": [_id_parameter("job_id"), _VARIANT],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ReviewRequest")}},
                    },
                    "responses": {
                        "200": _json_response("The decision", "ReviewAnswer"),
                        **_errors(400, 401, 403, 404, 409, 413, 415, 503),
                    },
                }
            },
            "/jobs/{job_id}:final": {
                "post": {
                    "operationId": "pickFinal",
                    "description": "The scene's final image (approved too), or none.",
                    "security": auth,
                    "parameters": [_id_parameter("job_id")],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("FinalRequest")}},
                    },
                    "responses": {
                        "200": _json_response("The pick", "ReviewAnswer"),
                        **_errors(400, 401, 403, 404, 409, 413, 415, 503),
                    },
                }
            },
            "/batches/{batch_id}:export": {
                "post": {
                    "operationId": "exportBatch",
                    "description": (
                        "Hands the batch over, in the background: every kept image, the "
                        "approved ones or each scene's final pick (`only`), at full size and "
                        "byte for byte, named by `name_template`, with manifest.csv and "
                        "manifest.json (prompt, references, model, size, lane, cost, decision); "
                        "as one zip (GET /batches/{batch_id} then shows its durable link) or "
                        "into a Google Drive folder shared with the service account (a file "
                        "already there is not made again). While one is being made of the same "
                        "images, this answers that one."
                    ),
                    "security": auth,
                    "parameters": [_id_parameter("batch_id")],
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": _ref("ExportRequest")}},
                    },
                    "responses": {
                        "202": _json_response("The export asked for", "ExportView"),
                        **_errors(400, 401, 403, 404, 503),
                    },
                }
            },
            "/assets/{job_id}/{variant}": {
                "get": {
                    "operationId": "asset",
                    "description": (
                        "The sheet's durable image link: HMAC-checked, 302 to a short-lived "
                        "signed URL. `version` (default 1) names a later version."
                    ),
                    "security": [],
                    "parameters": [
                        _id_parameter("job_id"),
                        {
                            "name": "variant",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 0, "maximum": 99},
                        },
                        _query("size", {"type": "string", "enum": ["thumb", "full"]}),
                        _query("version", {"type": "integer", "minimum": 1, "maximum": 999}),
                        _query("sig", {"type": "string"}, required=True),
                    ],
                    "responses": _redirects(),
                }
            },
            "/exports/{batch_id}/{export_id}": {
                "get": {
                    "operationId": "exportDownload",
                    "description": "A zip's durable link: HMAC-checked, 302 to a signed URL.",
                    "security": [],
                    "parameters": [
                        _id_parameter("batch_id"),
                        _id_parameter("export_id"),
                        _query("sig", {"type": "string"}, required=True),
                    ],
                    "responses": _redirects(),
                }
            },
        },
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "idToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "Google ID token (ScriptApp.getIdentityToken())",
                },
            },
        },
    }


_CANCEL = (
    "Images not yet started never reach Gemini (also those waiting for the quota, and "
    "economy images not yet in a Gemini batch; their reserved budget is given back); "
    "images whose Gemini call is running, or that are in a Gemini batch, finish and are "
    "kept (one the batch gives back unmade is cancelled too). The job ends `cancelled`. "
    "Cancelling twice, or a finished job, changes nothing and says so (`outcome`)."
)
_IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "The same key returns the first answer",
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
}


def _query(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


def _redirects() -> dict[str, Any]:
    return {
        "302": {"description": "Redirect to a short-lived signed URL"},
        "403": _json_response("The link's signature is missing or wrong", "ErrorBody"),
        "404": _json_response("Not ready (or replaced by a newer zip)", "ErrorBody"),
    }


def _id_parameter(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OPENAPI_PATH.read_text() != text:
            print(f"{OPENAPI_PATH} differs from the models; run python -m tools.openapi")
            return 1
        return 0
    OPENAPI_PATH.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
