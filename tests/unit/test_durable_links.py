"""Durable sheet links: they never expire, their redirect targets always do.

The HTTP function runs through functions-framework with the real GCS adapter
signing V4 URLs with a throwaway key (no network: signing is local), so the
redirect target is exactly what production would answer.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import functions_framework
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask.testing import FlaskClient
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage  # type: ignore[attr-defined]
from google.cloud.storage import _signing

import functions
from functions import wiring
from shared.adapters.gcs_store import GcsObjectStore
from shared.contracts.links import LinkSigner
from shared.contracts.sheet_row import row_cells
from shared.domain import lifecycle
from tests.fakes import (
    IMAGES_BUCKET,
    LINK_SIGNING_KEY,
    PUBLIC_BASE_URL,
    T0,
    FakeJobStore,
    make_job,
    mark_done,
)

MAIN = Path(__file__).resolve().parents[2] / "main.py"
TTL_S = 900


class Clock:
    """What the storage library believes "now" is."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self, tz: object = None) -> datetime:
        return self.now


@pytest.fixture
def signing_key(tmp_path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = tmp_path / "signer.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "test-project",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": "signer@test-project.iam.gserviceaccount.com",
                "client_id": "0",
                "token_uri": "http://127.0.0.1:9/token",
            }
        )
    )
    return path


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(_signing, "_NOW", fake)
    return fake


@pytest.fixture
def client(
    monkeypatch: pytest.MonkeyPatch, signing_key: Path, clock: Clock, store: FakeJobStore
) -> FlaskClient:
    for name, value in {
        "GOOGLE_CLOUD_PROJECT": "test-project",
        "IMAGES_BUCKET": IMAGES_BUCKET,
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "LINK_SIGNING_KEY": LINK_SIGNING_KEY,
        "SIGNED_URL_TTL_S": str(TTL_S),
    }.items():
        monkeypatch.setenv(name, value)
    job = make_job(job_id="job_a", variant_count=1, started_at=T0)
    mark_done(job, 1)
    job.variant(1).object_name = "images/sc-001/job_a/var_1.png"
    job.variant(1).thumb_name = "thumbnails/sc-001/job_a/var_1.jpg"
    job.state = lifecycle.derive_state(job)
    store.add(job)
    gcs = storage.Client(project="test-project", credentials=AnonymousCredentials())
    objects = GcsObjectStore(gcs, str(signing_key))
    monkeypatch.setattr(wiring, "job_store", lambda: store)
    monkeypatch.setattr(wiring, "object_store", lambda: objects)
    for name in ("main", "functions.http_api"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.delattr(functions, "http_api", raising=False)
    app = functions_framework.create_app(target="http_api", source=str(MAIN))
    test_client: FlaskClient = app.test_client()
    return test_client


def sheet_link() -> str:
    """The link as the sheet holds it, path and query."""
    link = urlsplit(LinkSigner(LINK_SIGNING_KEY, PUBLIC_BASE_URL).link("job_a", 1, "thumb"))
    return f"{link.path}?{link.query}"


def signed_at(location: str) -> tuple[datetime, int]:
    query = parse_qs(urlsplit(location).query)
    stamp = datetime.strptime(query["X-Goog-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return stamp, int(query["X-Goog-Expires"][0])


def test_link_still_works_30_days_later_with_a_freshly_signed_target(
    client: FlaskClient, clock: Clock
) -> None:
    link = sheet_link()
    first = client.get(link)
    assert first.status_code == 302
    assert "X-Goog-Signature=" in first.headers["Location"]
    assert "/thumbnails/sc-001/job_a/var_1.jpg" in first.headers["Location"]
    assert signed_at(first.headers["Location"]) == (clock.now, TTL_S)

    clock.now += timedelta(days=30)  # four times a V4 signed URL's longest life
    later = client.get(link)
    assert later.status_code == 302
    assert signed_at(later.headers["Location"]) == (clock.now, TTL_S)
    assert later.headers["Location"] != first.headers["Location"]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda q: q.replace("sig=", "sig=0"),  # one character more
        lambda q: q[:-1] + ("0" if q[-1] != "0" else "1"),  # last character changed
        lambda q: q.replace("size=thumb", "size=full"),
        lambda q: q.replace("/assets/job_a/1", "/assets/job_a/2"),
        lambda q: q.replace("/assets/job_a/1", "/assets/job_b/1"),
        lambda q: q.split("&sig=")[0],  # no signature
        lambda q: (
            q.split("sig=")[0]
            + "sig="
            + LinkSigner("another-key", PUBLIC_BASE_URL).signature("job_a", 1, "thumb")
        ),
    ],
)
def test_tampered_link_is_403(client: FlaskClient, tamper: object) -> None:
    link = tamper(sheet_link())  # type: ignore[operator]
    assert link != sheet_link()
    response = client.get(link)
    assert response.status_code == 403
    assert response.get_json()["error"] == "forbidden"
    assert "Location" not in response.headers


def test_cells_hold_durable_links_never_signed_urls(store: FakeJobStore) -> None:
    links = LinkSigner(LINK_SIGNING_KEY, PUBLIC_BASE_URL)
    job = make_job(variant_count=2, started_at=T0)
    for n in (1, 2):
        mark_done(job, n)
    job.state = lifecycle.derive_state(job)
    for name, cell in row_cells(job, links).items():
        assert "X-Goog-" not in cell.value and "Signature" not in cell.value, name
    image = row_cells(job, links)["nano_img_2"].value
    assert image == f'=IMAGE("{links.link("job_1", 2, "thumb")}")'
    assert image.startswith(f'=IMAGE("{PUBLIC_BASE_URL}/assets/job_1/2?size=thumb&sig=')
