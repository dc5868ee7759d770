"""API-key callers (shared/adapters/identity.py) and signed asset links
(shared/contracts/links.py)."""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.adapters.identity import caller_for_api_key, hash_key
from shared.contracts.links import LinkSigner

KEYS = {"alice": hash_key("alice-secret"), "bob": hash_key("bob-secret")}


def test_hash_key_is_sha256_hex() -> None:
    assert hash_key("k") == hashlib.sha256(b"k").hexdigest()


@pytest.mark.parametrize(("key", "caller"), [("alice-secret", "alice"), ("bob-secret", "bob")])
def test_caller_for_right_key(key: str, caller: str) -> None:
    assert caller_for_api_key(key, KEYS) == caller


@pytest.mark.parametrize(
    "key", [None, "", "alice-secret ", "ALICE-SECRET", "carol-secret", KEYS["alice"]]
)
def test_no_caller_for_wrong_or_missing_key(key: str | None) -> None:
    assert caller_for_api_key(key, KEYS) is None


def test_no_caller_without_configured_keys() -> None:
    assert caller_for_api_key("alice-secret", {}) is None


# --------------------------------------------------------------------------- links


@pytest.fixture
def signer() -> LinkSigner:
    return LinkSigner("link-key", "https://api.example.test/")


def sig_of(link: str) -> str:
    return parse_qs(urlsplit(link).query)["sig"][0]


def test_link_shape(signer: LinkSigner) -> None:
    link = signer.link("job_1", 2, "thumb")
    parts = urlsplit(link)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "https",
        "api.example.test",
        "/assets/job_1/2",
    )
    query = parse_qs(parts.query)
    assert query["size"] == ["thumb"]
    assert query["sig"] == [signer.signature("job_1", 2, "thumb")]
    assert len(query["sig"][0]) == 32


@pytest.mark.parametrize("size", ["thumb", "full"])
def test_verify_accepts_right_signature(signer: LinkSigner, size: str) -> None:
    sig = sig_of(signer.link("job_1", 2, size))  # type: ignore[arg-type]
    assert signer.verify("job_1", 2, size, sig)


@pytest.mark.parametrize(
    ("job_id", "variant", "size"),
    [("job_2", 2, "thumb"), ("job_1", 3, "thumb"), ("job_1", 2, "full"), ("job_1", 2, "huge")],
)
def test_verify_rejects_tampered_link(
    signer: LinkSigner, job_id: str, variant: int, size: str
) -> None:
    sig = sig_of(signer.link("job_1", 2, "thumb"))
    assert not signer.verify(job_id, variant, size, sig)


@pytest.mark.parametrize("mode", ["last_char", "empty", "truncated", "uppercase", "extended"])
def test_verify_rejects_tampered_signature(signer: LinkSigner, mode: str) -> None:
    sig = sig_of(signer.link("job_1", 2, "thumb"))
    tampered = {
        "last_char": sig[:-1] + ("0" if sig[-1] != "0" else "1"),
        "empty": "",
        "truncated": sig[:16],
        "uppercase": sig.upper() if sig.upper() != sig else sig + "0",
        "extended": sig + "00",
    }[mode]
    assert tampered != sig
    assert not signer.verify("job_1", 2, "thumb", tampered)


def test_verify_rejects_signature_of_another_key(signer: LinkSigner) -> None:
    other = LinkSigner("other-key", "https://api.example.test")
    assert not signer.verify("job_1", 2, "thumb", sig_of(other.link("job_1", 2, "thumb")))
    # The base URL is not part of the signature: only the key grants access.
    moved = LinkSigner("link-key", "https://elsewhere.example.test")
    assert signer.verify("job_1", 2, "thumb", sig_of(moved.link("job_1", 2, "thumb")))


def test_verify_rejects_non_ascii_signature(signer: LinkSigner) -> None:
    assert not signer.verify("job_1", 2, "thumb", "é" * 32)
