"""Leases that live exactly as long as their holder: renewed while it works.

A claim on a variant (or an economy batch record) is a lease in the store. Its
holder renews it every third of its length for as long as it works on it (a
Gemini call, an upload, a submit or a download may take minutes), so a live
holder is never taken over, and one that stopped (killed, crashed, stalled) is
taken over within one lease length, not a whole Gemini budget.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

log = logging.getLogger(__name__)

# How long a stopping heartbeat waits for a renewal in flight before it lets go.
STOP_WAIT_S = 5.0


class Heartbeat(Protocol):
    """Calls ``renew`` every ``every_s`` seconds while the block runs; stops for good
    once ``renew`` answers False (the lease is someone else's now)."""

    def keep(self, renew: Callable[[], bool], every_s: float) -> AbstractContextManager[None]: ...


class ThreadHeartbeat:
    """The production heartbeat: a daemon thread per lease held. A renewal that
    fails (the store busy) is tried again at the next beat; the lease outlasts two
    missed beats."""

    @contextmanager
    def keep(self, renew: Callable[[], bool], every_s: float) -> Iterator[None]:
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every_s):
                try:
                    if not renew():
                        return
                except Exception:
                    log.warning("lease not renewed this time", exc_info=True)

        thread = threading.Thread(target=beat, name="lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=STOP_WAIT_S)
