"""Caller identity from an API key, checked in constant time against hashes."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping


def hash_key(key: str) -> str:
    """The SHA-256 hex digest under which an API key is configured."""
    return hashlib.sha256(key.encode()).hexdigest()


def caller_for_api_key(presented: str | None, key_hashes: Mapping[str, str]) -> str | None:
    """The caller whose key matches, or None; compares against every hash."""
    if not presented:
        return None
    digest = hash_key(presented)
    found: str | None = None
    for caller, expected in key_hashes.items():
        # No early exit, so timing does not tell which entry matched.
        if hmac.compare_digest(digest, expected):
            found = caller
    return found
