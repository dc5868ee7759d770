"""The HTTP function through functions-framework's app, wired to fakes."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import functions_framework
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

import functions
from functions import wiring
from shared.adapters.identity import hash_key
from shared.config.environment import get_settings
from shared.contracts.links import LinkSigner
from shared.contracts.requests import NOT_THIS_CALLERS_SHEET
from shared.domain import lifecycle
from shared.domain.errors import TransientError
from shared.domain.job import VariantState
from shared.services.intake import Intake
from shared.services.ledger import JobLedger
from shared.services.ports import Usage
from shared.services.preflight import Preflight
from shared.services.sheet_check import SheetCheck
from tests.fakes import (
    IMAGES_BUCKET,
    LINK_SIGNING_KEY,
    PUBLIC_BASE_URL,
    T0,
    FakeBudgetLedger,
    FakeClock,
    FakeIdempotencyStore,
    FakeJobStore,
    FakeModelDirectory,
    FakeObjectStore,
    FakePublisher,
    FakeSheetLayouts,
    make_job,
    mark_done,
)

MAIN = Path(__file__).resolve().parents[2] / "main.py"
API_KEY = "alice-api-key"
HEADERS = {"X-API-Key": API_KEY}
DAY = T0.strftime("%Y-%m-%d")


def cold_start(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Forget imported entry modules, so the app imports them as a new instance would."""
    for name in ("main", *modules):
        monkeypatch.delitem(sys.modules, name, raising=False)
    for name in modules:
        monkeypatch.delattr(functions, name.rpartition(".")[2], raising=False)


@pytest.fixture
def sheet_layouts() -> FakeSheetLayouts:
    return FakeSheetLayouts()


@pytest.fixture
def intake(
    monkeypatch: pytest.MonkeyPatch,
    store: FakeJobStore,
    publisher: FakePublisher,
    objects: FakeObjectStore,
    budget: FakeBudgetLedger,
    idempotency: FakeIdempotencyStore,
    model_directory: FakeModelDirectory,
    clock: FakeClock,
    sheet_layouts: FakeSheetLayouts,
) -> Intake:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test-project")
    monkeypatch.setenv("IMAGES_BUCKET", IMAGES_BUCKET)
    monkeypatch.setenv("ADMIN_CALLERS", "root")
    monkeypatch.setenv(
        "API_KEY_HASHES",
        f"alice:{hash_key(API_KEY)},bob:{hash_key('bob-key')},root:{hash_key('root-key')}",
    )
    monkeypatch.setenv("PUBLIC_BASE_URL", PUBLIC_BASE_URL)
    monkeypatch.setenv("LINK_SIGNING_KEY", LINK_SIGNING_KEY)
    monkeypatch.setenv("MAX_VARIANTS", "4")
    monkeypatch.setenv("MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("ALLOWED_SPREADSHEET_IDS", "sheet123")
    links = LinkSigner(LINK_SIGNING_KEY, PUBLIC_BASE_URL)
    counter = itertools.count(1)
    service = Intake(
        get_settings(),
        store,
        JobLedger(store, budget=budget),
        publisher,
        links,
        budget,
        idempotency,
        Preflight(model_directory, ttl_s=300),
        SheetCheck(sheet_layouts),
        clock=clock,
        ids=lambda p: f"{p}_{next(counter)}",
    )
    monkeypatch.setattr(wiring, "intake", lambda: service)
    monkeypatch.setattr(wiring, "job_store", lambda: store)
    monkeypatch.setattr(wiring, "object_store", lambda: objects)
    monkeypatch.setattr(wiring, "link_signer", lambda: links)
    return service


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, intake: Intake) -> FlaskClient:
    cold_start(monkeypatch, "functions.http_api")
    app = functions_framework.create_app(target="http_api", source=str(MAIN))
    test_client: FlaskClient = app.test_client()
    return test_client


def batch(run_mode: str = "live", *variants: int) -> dict[str, Any]:
    return {
        "runMode": run_mode,
        "spreadsheet_id": "sheet123",
        "worksheet": "Scenes",
        "items": [
            {"scene_id": f"sc-{i:03d}", "prompt": f"prompt {i}", "variants": v}
            for i, v in enumerate(variants or (2, 1), start=1)
        ],
    }


def assert_json_error(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.get_json()
    assert body["error"] == code
    assert body["message"]
    return body


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"ok": True}
    assert client.get("/healthz/").status_code == 200


def test_openapi_document_is_served(client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert "/batch/images" in response.get_json()["paths"]


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"Authorization": "Basic x"}])
def test_batch_without_valid_credential_is_401(
    client: FlaskClient, publisher: FakePublisher, headers: dict[str, str]
) -> None:
    response = client.post("/batch/images", json=batch(), headers=headers)
    assert_json_error(response, 401, "unauthenticated")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert publisher.calls == []


def test_api_key_header_name_is_case_insensitive(client: FlaskClient) -> None:
    response = client.post("/batch/images", json=batch("dry_run"), headers={"x-api-key": API_KEY})
    assert response.status_code == 200


def test_status_without_key_is_401(client: FlaskClient) -> None:
    assert_json_error(client.get("/status/job_1"), 401, "unauthenticated")


def test_non_json_content_type_is_415(client: FlaskClient) -> None:
    response = client.post(
        "/batch/images", data=json.dumps(batch()), headers={**HEADERS, "Content-Type": "text/plain"}
    )
    assert_json_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("body", ["{not json", "[1, 2]", '"text"', "", "\xff"])
def test_invalid_json_is_400(client: FlaskClient, body: str) -> None:
    response = client.post(
        "/batch/images", data=body, headers={**HEADERS, "Content-Type": "application/json"}
    )
    assert_json_error(response, 400, "invalid_json")


def test_too_large_body_is_413(client: FlaskClient, publisher: FakePublisher) -> None:
    body = json.dumps({**batch(), "padding": "x" * 5000})
    response = client.post(
        "/batch/images", data=body, headers={**HEADERS, "Content-Type": "application/json"}
    )
    assert_json_error(response, 413, "payload_too_large")
    assert publisher.calls == []


def test_invalid_batch_lists_every_offending_field(
    client: FlaskClient, store: FakeJobStore, publisher: FakePublisher
) -> None:
    body = batch("live", 9, 1)
    body["items"][1]["scene_id"] = "bad id!"
    body["items"][1]["ref_pack_public_url"] = "http://insecure.example.com/p.zip"
    body["unexpected"] = True
    response = client.post("/batch/images", json=body, headers=HEADERS)
    payload = assert_json_error(response, 400, "invalid_request")
    reasons = {d["field"]: d["reason"] for d in payload["details"]}
    assert reasons.keys() == {
        "items[0].variants",
        "items[1].scene_id",
        "items[1].ref_pack_public_url",
        "unexpected",
    }
    assert reasons["items[0].variants"] == "must be between 1 and 4"
    assert reasons["items[1].scene_id"].startswith("must be 1-64 characters")
    assert reasons["items[1].ref_pack_public_url"] == (
        f"must be an https:// URL, a gs://{IMAGES_BUCKET}/refs/ object or an earlier output "
        "(scene:<scene_id>#<variant> or job:<job_id>#<variant>)"
    )
    assert reasons["unexpected"] == "Extra inputs are not permitted"
    assert store.writes == []
    assert publisher.calls == []


def test_duplicate_scene_ids_reported_on_items(client: FlaskClient) -> None:
    body = batch("live", 1, 1)
    body["items"][1]["scene_id"] = "sc-001"
    payload = assert_json_error(
        client.post("/batch/images", json=body, headers=HEADERS), 400, "invalid_request"
    )
    assert payload["details"] == [
        {"field": "items", "reason": "scene_id 'sc-001' appears more than once"}
    ]


@pytest.mark.parametrize(("allowed", "status"), [("other-sheet, more", 400), ("", 400), ("*", 200)])
def test_spreadsheet_allowlist(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, allowed: str, status: int
) -> None:
    monkeypatch.setenv("ALLOWED_SPREADSHEET_IDS", allowed)
    get_settings.cache_clear()
    response = client.post("/batch/images", json=batch("dry_run"), headers=HEADERS)
    assert response.status_code == status
    if status == 400:
        payload = assert_json_error(response, 400, "invalid_request")
        assert payload["details"] == [
            {
                "field": "spreadsheet_id",
                "reason": NOT_THIS_CALLERS_SHEET,
            }
        ]


def test_a_caller_writes_only_the_spreadsheets_listed_for_it(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLOWED_SPREADSHEET_IDS", "*")
    monkeypatch.setenv("CALLER_SPREADSHEETS", "alice:alices-sheet")
    get_settings.cache_clear()
    refused = client.post("/batch/images", json=batch("dry_run"), headers=HEADERS)
    assert assert_json_error(refused, 400, "invalid_request")["details"][0]["field"] == (
        "spreadsheet_id"
    )
    bob = client.post("/batch/images", json=batch("dry_run"), headers={"X-API-Key": "bob-key"})
    assert bob.status_code == 200  # not listed: the deployment's allowlist


def test_dry_run_returns_plan_without_writing(
    client: FlaskClient, store: FakeJobStore, publisher: FakePublisher, budget: FakeBudgetLedger
) -> None:
    response = client.post(
        "/batch/images", json=batch("dry_run", 4, 4, 4, 4, 4, 4, 1), headers=HEADERS
    )
    assert response.status_code == 200
    plan = response.get_json()
    assert plan["runMode"] == "dry_run"
    assert (plan["image_count"], plan["estimated_cost_usd"]) == (25, "0.8400")
    assert plan["budget"]["images_requested"] == 25
    assert "batch_id" not in plan
    assert store.writes == []
    assert publisher.calls == []
    assert budget.used == {}


def test_run_mode_defaults_to_dry_run(client: FlaskClient, publisher: FakePublisher) -> None:
    body = batch()
    del body["runMode"]
    response = client.post("/batch/images", json=body, headers=HEADERS)
    assert response.status_code == 200
    assert response.get_json()["runMode"] == "dry_run"
    assert publisher.calls == []


def test_live_batch_is_accepted(
    client: FlaskClient, store: FakeJobStore, publisher: FakePublisher
) -> None:
    response = client.post("/batch/images", json=batch("live", 2, 1), headers=HEADERS)
    assert response.status_code == 202
    assert "Idempotent-Replay" not in response.headers
    answer = response.get_json()
    assert answer["batch_id"] == "bat_1"
    assert [j["job_id"] for j in answer["jobs"]] == ["job_1_1", "job_1_2"]
    assert answer["unpublished"] == []
    assert sorted(store.job_ids) == ["job_1_1", "job_1_2"]
    assert store.job("job_1_1").caller == "alice"
    assert [m.job_id for m, _ in publisher.published] == ["job_1_1", "job_1_2"]
    assert publisher.published[0][1]["caller"] == "alice"


def test_idempotency_key_replays(client: FlaskClient, store: FakeJobStore) -> None:
    headers = {**HEADERS, "Idempotency-Key": "run-42"}
    first = client.post("/batch/images", json=batch("live", 1), headers=headers)
    again = client.post("/batch/images", json=batch("live", 1), headers=headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.headers["Idempotent-Replay"] == "true"
    assert again.get_json() == first.get_json()
    assert len(store.created) == 1


@pytest.mark.parametrize("key", ["", "k" * 201])
def test_bad_idempotency_key_is_400(client: FlaskClient, key: str) -> None:
    payload = assert_json_error(
        client.post("/batch/images", json=batch(), headers={**HEADERS, "Idempotency-Key": key}),
        400,
        "invalid_request",
    )
    assert payload["details"][0]["field"] == "Idempotency-Key"


def test_budget_exceeded_is_429(
    client: FlaskClient, budget: FakeBudgetLedger, store: FakeJobStore
) -> None:
    budget.used[("alice", DAY)] = Usage(images=999)
    payload = assert_json_error(
        client.post("/batch/images", json=batch("live", 2), headers=HEADERS),
        429,
        "budget_exceeded",
    )
    assert payload["budget"]["images_remaining"] == 1
    assert store.writes == []


def test_status_of_own_job(client: FlaskClient, store: FakeJobStore) -> None:
    store.add(make_job(job_id="job_a", caller="alice"))
    response = client.get("/status/job_a", headers=HEADERS)
    assert response.status_code == 200
    view = response.get_json()
    assert (view["job_id"], view["state"], view["status_text"]) == ("job_a", "queued", "queued")


def test_status_of_other_callers_job_is_404(client: FlaskClient, store: FakeJobStore) -> None:
    store.add(make_job(job_id="job_b", caller="bob"))
    assert_json_error(client.get("/status/job_b", headers=HEADERS), 404, "not_found")
    assert client.get("/status/job_b", headers={"X-API-Key": "bob-key"}).status_code == 200
    assert client.get("/status/job_b", headers={"X-API-Key": "root-key"}).status_code == 200
    assert_json_error(client.get("/status/job_none", headers=HEADERS), 404, "not_found")


def test_batch_status(client: FlaskClient) -> None:
    answer = client.post("/batch/images", json=batch("live", 1, 1), headers=HEADERS).get_json()
    response = client.get(f"/batches/{answer['batch_id']}", headers=HEADERS)
    assert response.status_code == 200
    assert response.get_json()["counts"] == {"queued": 2}
    other = client.get(f"/batches/{answer['batch_id']}", headers={"X-API-Key": "bob-key"})
    assert_json_error(other, 404, "not_found")


@pytest.mark.parametrize(
    "path", ["/", "/nope", "/status/", "/status/a/b", "/assets/job_1/x", "/favicon.ico"]
)
def test_unknown_route_is_404_json(client: FlaskClient, path: str) -> None:
    assert_json_error(client.get(path, headers=HEADERS), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/batch/images", "POST"),
        ("DELETE", "/batch/images", "POST"),
        ("POST", "/healthz", "GET, HEAD"),
        ("PUT", "/status/job_1", "GET, HEAD"),
    ],
)
def test_wrong_method_is_405_with_allow(
    client: FlaskClient, method: str, path: str, allow: str
) -> None:
    response = client.open(path, method=method, headers=HEADERS)
    assert_json_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == allow


def test_transient_backend_error_is_503_with_retry_after(
    client: FlaskClient, store: FakeJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def busy(job_id: str) -> None:
        raise TransientError("firestore 503")

    monkeypatch.setattr(store, "get_job", busy)
    response = client.get("/status/job_a", headers=HEADERS)
    assert_json_error(response, 503, "unavailable")
    assert response.headers["Retry-After"] == "5"


def test_unexpected_error_is_500_json(
    client: FlaskClient, store: FakeJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(job_id: str) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(store, "get_job", broken)
    body = assert_json_error(client.get("/status/job_a", headers=HEADERS), 500, "internal")
    assert "bug" not in body["message"]


# --------------------------------------------------------------------------- assets


@pytest.fixture
def done_job(store: FakeJobStore) -> None:
    job = make_job(job_id="job_a", started_at=T0)
    mark_done(job, 1)
    job.variant(1).object_name = "images/sc-001/job_a/var_1.png"
    job.variant(1).thumb_name = "thumbnails/sc-001/job_a/var_1.jpg"
    job.variant(2).state = VariantState.UPLOADED
    job.variant(2).object_name = "images/sc-001/job_a/var_2.png"
    job.state = lifecycle.derive_state(job)
    store.add(job)


def sig_for(job_id: str, n: int, size: str) -> str:
    link = LinkSigner(LINK_SIGNING_KEY, PUBLIC_BASE_URL).link(job_id, n, size)  # type: ignore[arg-type]
    return parse_qs(urlsplit(link).query)["sig"][0]


@pytest.mark.usefixtures("done_job")
def test_asset_with_good_signature_redirects_to_signed_url(
    client: FlaskClient, objects: FakeObjectStore
) -> None:
    link = urlsplit(LinkSigner(LINK_SIGNING_KEY, PUBLIC_BASE_URL).link("job_a", 1, "thumb"))
    response = client.get(f"{link.path}?{link.query}")  # no API key: the link is the capability
    assert response.status_code == 302
    expected = objects.signed_url(IMAGES_BUCKET, "thumbnails/sc-001/job_a/var_1.jpg", 900)
    assert response.headers["Location"] == expected
    assert response.headers["Cache-Control"] == "private, max-age=840"

    full = client.get(f"/assets/job_a/1?size=full&sig={sig_for('job_a', 1, 'full')}")
    assert full.status_code == 302
    assert full.headers["Location"] == objects.signed_url(
        IMAGES_BUCKET, "images/sc-001/job_a/var_1.png", 900
    )


@pytest.mark.usefixtures("done_job")
@pytest.mark.parametrize(
    "query",
    [
        "size=thumb&sig=" + "0" * 32,
        "size=thumb",
        "size=full&sig=SIG_THUMB",
        "size=huge&sig=SIG_THUMB",
    ],
)
def test_asset_with_bad_signature_is_403(
    client: FlaskClient, objects: FakeObjectStore, query: str
) -> None:
    query = query.replace("SIG_THUMB", sig_for("job_a", 1, "thumb"))
    assert_json_error(client.get(f"/assets/job_a/1?{query}"), 403, "forbidden")
    # A link of variant 1 does not open variant 2.
    assert_json_error(
        client.get(f"/assets/job_a/2?size=thumb&sig={sig_for('job_a', 1, 'thumb')}"),
        403,
        "forbidden",
    )
    assert objects.calls == []


@pytest.mark.usefixtures("done_job")
def test_asset_not_ready_is_404(client: FlaskClient) -> None:
    # Variant 2 is uploaded but has no thumbnail yet; job_none does not exist.
    assert_json_error(
        client.get(f"/assets/job_a/2?size=thumb&sig={sig_for('job_a', 2, 'thumb')}"),
        404,
        "not_found",
    )
    full = client.get(f"/assets/job_a/2?size=full&sig={sig_for('job_a', 2, 'full')}")
    assert full.status_code == 302
    assert_json_error(
        client.get(f"/assets/job_none/1?size=thumb&sig={sig_for('job_none', 1, 'thumb')}"),
        404,
        "not_found",
    )


@pytest.mark.usefixtures("done_job")
def test_asset_with_non_ascii_signature_is_403(client: FlaskClient) -> None:
    response = client.get("/assets/job_a/1?size=thumb&sig=%C3%A9")
    assert response.status_code == 403


def test_limits_say_what_this_deployment_accepts(
    monkeypatch: pytest.MonkeyPatch, intake: Intake
) -> None:
    monkeypatch.setenv("MAX_VARIANTS", "6")
    monkeypatch.setenv("MAX_PROMPT_CHARS", "1234")
    monkeypatch.setenv("REFERENCE_MAX_IMAGES", "2")
    get_settings.cache_clear()
    cold_start(monkeypatch, "functions.http_api")
    app = functions_framework.create_app(target="http_api", source=str(MAIN)).test_client()
    assert_json_error(app.get("/limits"), 401, "unauthenticated")
    body = app.get("/limits", headers=HEADERS).get_json()
    assert body["max_variants"] == 6
    assert body["max_prompt_chars"] == 1234
    assert body["max_body_bytes"] == 4096
    assert body["lanes"] == ["live", "economy"]
    default = body["models"][body["default_model"]]
    settings = get_settings()
    entry = settings.model_entry()
    assert default["image_sizes"] == list(entry.image_sizes)
    assert default["aspect_ratios"] == list(entry.aspect_ratios)
    assert all(m["max_reference_images"] <= 2 for m in body["models"].values())
    assert set(body["models"]) == set(settings.catalog.models)


def test_a_model_missing_from_the_catalog_is_a_configuration_error_on_every_request(
    monkeypatch: pytest.MonkeyPatch, intake: Intake
) -> None:
    monkeypatch.setenv("GEMINI_MODEL", "gemini-9-image")
    get_settings.cache_clear()
    cold_start(monkeypatch, "functions.http_api")
    app = functions_framework.create_app(target="http_api", source=str(MAIN)).test_client()
    for answer in (
        app.post("/batch/images", json=batch("dry_run"), headers=HEADERS),
        app.get("/models", headers=HEADERS),
        app.get("/limits", headers=HEADERS),
        app.get("/status/job_1", headers=HEADERS),
    ):
        body = assert_json_error(answer, 503, "misconfigured")
        assert "GEMINI_MODEL 'gemini-9-image' is not in the model catalog" in body["message"]
        assert "MODEL_CATALOG" in body["message"]
    assert app.get("/healthz").status_code == 200


def test_a_shut_down_model_is_a_422_naming_the_replacement(client: FlaskClient) -> None:
    body = batch("dry_run") | {"model": "gemini-3-pro-image-preview"}
    answer = assert_json_error(
        client.post("/batch/images", json=body, headers=HEADERS), 422, "model_unavailable"
    )
    assert answer["replacement"] == "gemini-3-pro-image"
    assert "shut down by Google on 2026-06-25" in answer["message"]


def test_models_say_which_are_going_away(client: FlaskClient) -> None:
    models = {m["name"]: m for m in client.get("/models", headers=HEADERS).get_json()["models"]}
    assert models["gemini-nano-banana-2.1"]["default"] is True
    assert models["gemini-nano-banana-2.1"]["status"] == "ga"
    assert models["gemini-nano-banana-2.1"].get("notice") is None
    flash = models["gemini-3.1-flash-image"]
    assert (flash["status"], flash["replacement"]) == ("deprecated", "gemini-nano-banana-2.1")
    assert "deprecated" in flash["notice"]
    assert models["gemini-3-pro-image-preview"]["status"] == "shut_down"
    assert all(m["checked_on"] == "2026-12-07" for m in models.values())


@pytest.mark.parametrize("run_mode", ["dry_run", "live"])
def test_rows_the_sheet_lacks_are_a_422_naming_item_and_column(
    client: FlaskClient,
    sheet_layouts: FakeSheetLayouts,
    store: FakeJobStore,
    budget: FakeBudgetLedger,
    run_mode: str,
) -> None:
    body = batch(run_mode)
    scenes = [item["scene_id"] for item in body["items"]]
    header = ["scene_id", "status_img", "nano_img_1", "job_id"]
    sheet_layouts.put(body["spreadsheet_id"], body["worksheet"], scenes[1:], header=header)
    answer = assert_json_error(
        client.post("/batch/images", json=body, headers=HEADERS), 422, "sheet_mismatch"
    )
    fields = [detail["field"] for detail in answer["details"]]
    assert "items[0].scene_id" in fields
    assert f"no row with scene_id {scenes[0]!r}" in answer["details"][0]["reason"]
    assert "nothing was reserved or queued" in answer["message"]
    assert store.writes == []
    assert budget.usage("alice", T0.strftime("%Y-%m-%d")).images == 0
