"""The batch preflight: is the model served, before anything is reserved or published?

A model Google retired answers 404 on every call; checking it once per batch
(the answer kept a few minutes, per instance) refuses such a batch with the
reason instead of failing its jobs one by one after the budget was taken.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from shared.services.ports import ModelCheck, ModelDirectory


class Preflight:
    def __init__(
        self,
        directory: ModelDirectory,
        ttl_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._directory = directory
        self._ttl_s = ttl_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._answers: dict[str, tuple[float, ModelCheck]] = {}

    def check(self, model: str) -> ModelCheck:
        """The backend's answer for ``model``; raises TransientError when it has none."""
        now = self._monotonic()
        with self._lock:
            kept = self._answers.get(model)
        if kept is not None and now - kept[0] < self._ttl_s:
            return kept[1]
        answer = self._directory.check(model)
        with self._lock:
            self._answers[model] = (now, answer)
        return answer
