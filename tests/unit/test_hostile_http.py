"""The HTTP function against hostile requests (issue 11): a 4xx or a 503, never a 500."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import functions_framework
import pytest
from flask.testing import FlaskClient

import functions
from shared.adapters.identity import hash_key

MAIN = Path(__file__).resolve().parents[2] / "main.py"
API_KEY = "alice-api-key"


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> FlaskClient:
    for name, value in {
        "GOOGLE_CLOUD_PROJECT": "test-project",
        "IMAGES_BUCKET": "images-bucket",
        "API_KEY_HASHES": f"alice:{hash_key(API_KEY)}",
        "ID_TOKEN_AUDIENCES": "1234-script.apps.googleusercontent.com",
        # Nothing listens there: Google's certificates cannot be fetched.
        "ID_TOKEN_CERTS_URL": "http://127.0.0.1:9/oauth2/v1/certs",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("main", "functions.http_api"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.delattr(functions, "http_api", raising=False)
    app = functions_framework.create_app(target="http_api", source=str(MAIN))
    test_client: FlaskClient = app.test_client()
    return test_client


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"items": ' * 50_000,
        b'{"items": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
    ],
    ids=["open-lists", "open-objects", "closed"],
)
def test_deeply_nested_json_is_400(client: FlaskClient, body: bytes) -> None:
    response = client.post(
        "/batch/images",
        data=body,
        headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.get_json() == {
        "error": "invalid_json",
        "message": "the body is nested too deeply",
    }


def unsigned_token(kid: str) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'kid': kid})}.{part({'aud': 'x'})}.c2ln"


def test_certificates_that_cannot_be_fetched_answer_503_with_retry_after(
    client: FlaskClient,
) -> None:
    response = client.get(
        "/status/job_1", headers={"Authorization": f"Bearer {unsigned_token('k')}"}
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert response.get_json()["error"] == "unavailable"
