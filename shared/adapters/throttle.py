"""Write budgets (the instance's own, and the fleet's shared pace) and capped,
jittered backoff (no cloud imports)."""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from shared.domain.errors import TransientError
from shared.domain.ids import utcnow
from shared.services.ports import QuotaGate

WINDOW_S = 60.0


class Limiter(Protocol):
    def acquire(self, deadline: float) -> None:
        """Take one write, waiting for it; TransientError past ``deadline``."""
        ...


class WriteLimiter:
    """At most ``per_minute`` acquisitions in any 60 s, like the Sheets quota itself.

    A sliding window rather than a token bucket: the quota counts requests per
    rolling minute, so a full burst may go at once and then waits its minute.
    """

    def __init__(
        self,
        per_minute: int,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.per_minute = per_minute
        self._monotonic = monotonic
        self._sleep = sleep
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def acquire(self, deadline: float) -> None:
        """Take one write, waiting for the window to move; TransientError past ``deadline``."""
        while True:
            with self._lock:
                now = self._monotonic()
                # The epsilon stops a float rounding from waiting 1e-14 s forever.
                while self._times and now - self._times[0] >= WINDOW_S - 1e-6:
                    self._times.popleft()
                if len(self._times) < self.per_minute:
                    self._times.append(now)
                    return
                wait = WINDOW_S - (now - self._times[0])
            if now + wait > deadline:
                raise TransientError(
                    f"this instance's Sheets write budget ({self.per_minute}/min) is spent"
                )
            self._sleep(wait)


class FleetPace:
    """The service account's Sheets quota shared by every instance of every function:
    each write, once this instance's own limiter allows it, takes the next slot of
    one pace kept in the fleet's gate (Firestore, as Gemini's pace), and waits for
    it. Slots go in the order they are asked for, so spreadsheets waiting together
    are served in turn; a write that cannot have a slot before ``deadline`` is
    refused (TransientError), and its event is delivered again."""

    def __init__(
        self,
        gate: QuotaGate,
        own: Limiter,
        key: str = "sheets-writes",
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._gate, self._own, self._key = gate, own, key
        self._clock, self._monotonic, self._sleep = clock, monotonic, sleep

    def acquire(self, deadline: float) -> None:
        self._own.acquire(deadline)
        now = self._clock()
        slot = self._gate.reserve(self._key, now, max(0.0, deadline - self._monotonic()))
        if slot.at is None:
            raise TransientError(
                f"the fleet's Sheets writes are booked until {slot.reopens:%H:%M:%S} UTC"
                if slot.reopens is not None
                else "the fleet's Sheets writes are booked"
            )
        wait = (slot.at - now).total_seconds()
        if wait > 0:
            self._sleep(wait)


class Backoff:
    """Delays 1, 2, 4 ... s capped at ``cap_s``, each drawn from its upper half.

    Half-jitter keeps instances that were throttled together from retrying
    together, without the near-zero delays of full jitter.
    """

    def __init__(
        self,
        base_s: float = 1.0,
        cap_s: float = 16.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self._rng = rng

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (0 for the first)."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(attempt, 30))
        return ceiling / 2 + self._rng() * ceiling / 2
