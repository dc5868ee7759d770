"""Signed URLs handed out again for a while, so that many hits cost one signature."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

# The longest a URL is signed for: V4 allows 7 days, but a signature made
# through IAM signBlob (Cloud Functions) may stop working after 12 hours, when
# Google rotates the key behind it.
MAX_SIGNED_TTL_S = 12 * 3600
# Objects whose URL is kept per instance; the least recently used goes first.
MAX_ENTRIES = 4096

# (bucket, name, seconds the URL must live) -> a signed URL
Sign = Callable[[str, str, int], str]


class SignedUrlCache:
    """One signed URL per object and lifetime, reused for ``reuse_s`` seconds.

    Each hit on an ``/assets`` link would otherwise sign anew (in production one
    IAM signBlob call, against a quota), so one leaked sheet link fetched in a
    loop could use the quota up. The URL is signed to live ``ttl_s + reuse_s``:
    whenever it is handed out it still lives at least ``ttl_s``, as callers
    (and the redirect's Cache-Control) expect.
    """

    def __init__(
        self,
        sign: Sign,
        reuse_s: float,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sign = sign
        self._reuse_s = reuse_s
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._urls: OrderedDict[tuple[str, str, int], tuple[str, float]] = OrderedDict()

    def get(self, bucket: str, name: str, ttl_s: int) -> str:
        reuse_s = min(self._reuse_s, MAX_SIGNED_TTL_S - ttl_s)
        if reuse_s <= 0:
            return self._sign(bucket, name, ttl_s)
        key = (bucket, name, ttl_s)
        with self._lock:
            found = self._urls.get(key)
            if found is not None and self._clock() - found[1] < reuse_s:
                self._urls.move_to_end(key)
                return found[0]
        # Signed outside the lock: a slow signBlob call must not hold up other
        # objects (concurrent first hits on one object may each sign once).
        signed_at = self._clock()
        url = self._sign(bucket, name, ttl_s + int(reuse_s))
        with self._lock:
            self._urls[key] = (url, signed_at)
            self._urls.move_to_end(key)
            while len(self._urls) > self._max_entries:
                self._urls.popitem(last=False)
        return url
