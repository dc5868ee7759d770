"""The OpenAPI document in the repo equals what the pydantic models say."""

from __future__ import annotations

import json
import re

from functions.http_api import OPENAPI_PATH, ROUTES
from tools.openapi import build, render


def test_committed_document_matches_the_models() -> None:
    assert OPENAPI_PATH.read_text() == render(), "run: python -m tools.openapi"


def test_document_is_openapi_3_1_with_every_route() -> None:
    document = json.loads(OPENAPI_PATH.read_text())
    assert document["openapi"] == "3.1.0"
    # Every route the function answers, in OpenAPI's spelling of its parameters.
    routed = {
        re.sub(r"<(?:[^:>]+:)?(\w+)>", r"{\1}", rule.rule) for rule in ROUTES.iter_rules()
    } - {"/test", "/openapi.json"}
    assert set(document["paths"]) == routed
    assert {
        "/jobs/{job_id}:cancel",
        "/batches/{batch_id}:cancel",
        "/jobs/{job_id}/variants/{variant}:reroll",
        "/batches/{batch_id}:export",
        "/exports/{batch_id}/{export_id}",
    } <= routed
    schemas = document["components"]["schemas"]
    assert {"BatchRequest", "BatchItem", "Plan", "Submitted", "JobView", "ErrorBody"} <= set(
        schemas
    )
    # The request schema carries the validation the function applies.
    assert schemas["BatchItem"]["additionalProperties"] is False
    assert "pattern" in schemas["BatchItem"]["properties"]["scene_id"]


def test_every_error_status_is_documented_as_json() -> None:
    for path in build()["paths"].values():
        for operation in path.values():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}
