"""Signed URLs reused per object (issue 11, item 7): many /assets hits, one signature."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage  # type: ignore[attr-defined]
from google.cloud.storage import blob as blob_module

from shared.adapters.gcs_store import GcsObjectStore
from shared.adapters.signed_urls import MAX_SIGNED_TTL_S, SignedUrlCache

TTL_S = 900
REUSE_S = 300


class Ticker:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def signatures(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Blob names, one per signature the storage library makes."""
    made: list[str] = []
    original = blob_module.Blob.generate_signed_url

    def counting(self: blob_module.Blob, *args: object, **kwargs: object) -> str:
        made.append(str(self.name))
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(blob_module.Blob, "generate_signed_url", counting)
    return made


@pytest.fixture
def key_file(tmp_path: Path) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "signer@test-project.iam.gserviceaccount.com",
        "client_id": "0",
        "token_uri": "http://127.0.0.1:9/token",
    }
    path = tmp_path / "signer.json"
    path.write_text(json.dumps(info))
    return str(path)


def expires_s(url: str) -> int:
    return int(parse_qs(urlsplit(url).query)["X-Goog-Expires"][0])


def test_hits_on_one_object_share_one_signature_for_the_reuse_window(
    key_file: str, signatures: list[str]
) -> None:
    clock = Ticker()
    gcs = storage.Client(project="test-project", credentials=AnonymousCredentials())
    objects = GcsObjectStore(gcs, key_file, signed_url_reuse_s=REUSE_S, clock=clock)
    name = "thumbnails/sc-001/job_a/var_1.jpg"
    urls = {objects.signed_url("images-bucket", name, TTL_S) for _ in range(100)}
    assert len(urls) == 1 and signatures == [name]
    # Signed to outlive the window: whenever it is handed out it still lives TTL_S.
    assert expires_s(urls.pop()) == TTL_S + REUSE_S

    clock.now += REUSE_S - 1
    objects.signed_url("images-bucket", name, TTL_S)
    assert len(signatures) == 1
    clock.now += 1
    objects.signed_url("images-bucket", name, TTL_S)
    objects.signed_url("images-bucket", "images/sc-001/job_a/var_1.png", TTL_S)
    assert signatures == [name, name, "images/sc-001/job_a/var_1.png"]


def test_without_a_reuse_window_every_hit_signs(key_file: str, signatures: list[str]) -> None:
    gcs = storage.Client(project="test-project", credentials=AnonymousCredentials())
    objects = GcsObjectStore(gcs, key_file)
    for _ in range(3):
        assert expires_s(objects.signed_url("images-bucket", "a.png", TTL_S)) == TTL_S
    assert len(signatures) == 3


def test_the_cache_is_bounded_and_drops_the_least_recently_used() -> None:
    signed: list[str] = []

    def sign(bucket: str, name: str, ttl_s: int) -> str:
        signed.append(name)
        return f"https://signed/{bucket}/{name}?n={len(signed)}"

    cache = SignedUrlCache(sign, reuse_s=REUSE_S, max_entries=3, clock=Ticker())
    for name in ("a", "b", "c", "a", "d", "a", "b"):
        cache.get("bucket", name, TTL_S)
    # d pushed out b (a was used since); b is signed again, a never was.
    assert signed == ["a", "b", "c", "d", "b"]


def test_the_window_never_stretches_a_url_past_twelve_hours() -> None:
    lifetimes: list[int] = []
    cache = SignedUrlCache(lambda b, n, ttl: lifetimes.append(ttl) or "u", reuse_s=REUSE_S)
    cache.get("bucket", "a", MAX_SIGNED_TTL_S - 100)
    cache.get("bucket", "b", MAX_SIGNED_TTL_S)
    assert lifetimes == [MAX_SIGNED_TTL_S, MAX_SIGNED_TTL_S]
