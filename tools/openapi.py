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
from shared.api_models import BatchView, ErrorBody, Health, JobView, Plan, Submitted
from shared.models import BatchRequest

MODELS: list[type[BaseModel]] = [
    BatchRequest,
    Plan,
    Submitted,
    JobView,
    BatchView,
    ErrorBody,
    Health,
]


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
        409: "The same idempotency key is being processed right now",
        413: "Body larger than the configured limit",
        415: "Body is not application/json",
        429: "Daily image or cost budget exceeded (figures in `budget`)",
        503: "A backing service is busy; retry",
    }
    return {str(code): _json_response(text[code], "ErrorBody") for code in codes}


def build() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(model, "validation" if model is BatchRequest else "serialization") for model in MODELS],
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
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": "The same key returns the first answer",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("BatchRequest")}},
                    },
                    "responses": {
                        "200": _json_response("Dry run: the plan, nothing written", "Plan"),
                        "202": _json_response("Live: batch recorded and jobs queued", "Submitted"),
                        **_errors(400, 401, 403, 409, 413, 415, 429, 503),
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
                        "200": _json_response("The batch and its jobs", "BatchView"),
                        **_errors(401, 403, 404, 503),
                    },
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
