"""Per-instance write budget and capped, jittered backoff (no cloud imports)."""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable

from shared.domain.errors import TransientError

WINDOW_S = 60.0


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
