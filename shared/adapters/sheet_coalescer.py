"""Gathers concurrent row updates of one spreadsheet into one ``values:batchUpdate``.

The Sheets quota is 60 writes a minute per service account, and a burst of
jobs finishing together would spend it in a second. The first update of a
spreadsheet leads a batch: it waits a short window (and then for a write
slot of the limiter (the instance's, and the fleet's pace), while the batch stays open and keeps
growing), writes every gathered row in one call, retrying transient failures
with capped backoff within a deadline, and hands each waiter its own result.
No background thread: Cloud Functions may freeze an instance between requests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from shared.adapters.throttle import Backoff, Limiter
from shared.contracts.sheet_row import Cell
from shared.domain.errors import PipelineError, TransientError
from shared.services.ports import RowResult, RowsWriter, RowUpdate

log = logging.getLogger(__name__)

MAX_ROWS = 100
# How long a waiter trusts the leader beyond the leader's own deadline (one HTTP call).
LEADER_GRACE_S = 45.0


@dataclass
class _Batch:
    spreadsheet_id: str
    updates: list[RowUpdate] = field(default_factory=list)
    slots: dict[tuple[str, str], int] = field(default_factory=dict)
    waiters: int = 0
    full: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    results: list[RowResult] = field(default_factory=list)
    error: Exception | None = None

    def add(self, update: RowUpdate) -> int:
        """The update's index; a second update of the same row merges into the first."""
        key = (update.worksheet, update.scene_id)
        self.waiters += 1
        index = self.slots.get(key)
        if index is None:
            self.slots[key] = len(self.updates)
            self.updates.append(update)
            return len(self.updates) - 1
        earlier = self.updates[index]
        self.updates[index] = RowUpdate(
            update.worksheet,
            update.scene_id,
            {**earlier.cells, **update.cells},
            update.worksheet_id,
        )
        return index


class SheetCoalescer:
    """A SheetWriter that writes through a RowsWriter, many rows per call."""

    def __init__(
        self,
        writer: RowsWriter,
        limiter: Limiter,
        window_s: float,
        timeout_s: float,
        backoff: Backoff | None = None,
        max_rows: int = MAX_ROWS,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._writer = writer
        self._limiter = limiter
        self._window_s = window_s
        self._timeout_s = timeout_s
        self._backoff = backoff or Backoff()
        self._max_rows = max_rows
        self._monotonic = monotonic
        self._sleep = sleep
        self._lock = threading.Lock()
        self._open: dict[str, _Batch] = {}
        self.flushes = 0  # calls made, for logs and tests

    def write_row(
        self,
        spreadsheet_id: str,
        worksheet: str,
        scene_id: str,
        cells: Mapping[str, Cell],
        worksheet_id: int | None = None,
    ) -> str | None:
        with self._lock:
            batch = self._open.get(spreadsheet_id)
            leader = batch is None
            if batch is None:
                batch = self._open[spreadsheet_id] = _Batch(spreadsheet_id)
            index = batch.add(RowUpdate(worksheet, scene_id, dict(cells), worksheet_id))
            if len(batch.updates) >= self._max_rows:
                self._close(batch)
        if leader:
            self._lead(batch)
        elif not batch.done.wait(self._window_s + self._timeout_s + LEADER_GRACE_S):
            raise TransientError("the coalesced sheet write did not finish in time")
        if batch.error is not None:
            raise _copy(batch.error)
        result = batch.results[index]
        if result.error is not None:
            raise _copy(result.error)
        return result.note

    def _close(self, batch: _Batch) -> None:
        """No more updates join ``batch`` (call with the lock held)."""
        if self._open.get(batch.spreadsheet_id) is batch:
            del self._open[batch.spreadsheet_id]
        batch.full.set()

    def _lead(self, batch: _Batch) -> None:
        deadline = self._monotonic() + self._timeout_s
        try:
            batch.full.wait(self._window_s)
            # The batch stays open while this waits for a write slot: under
            # quota pressure, fewer and fuller writes.
            self._limiter.acquire(deadline)
            with self._lock:
                self._close(batch)
            batch.results = self._flush(batch, deadline)
        except Exception as exc:
            if not isinstance(exc, PipelineError):
                log.exception("sheet write failed unexpectedly")
            with self._lock:
                self._close(batch)
            batch.error = exc
        finally:
            batch.done.set()

    def _flush(self, batch: _Batch, deadline: float) -> list[RowResult]:
        attempt = 0
        while True:
            with self._lock:
                self.flushes += 1
            try:
                results = self._writer.write_rows(batch.spreadsheet_id, batch.updates)
            except TransientError as exc:
                delay = self._backoff.delay(attempt)
                attempt += 1
                if self._monotonic() + delay >= deadline:
                    raise TransientError(
                        f"sheet write failed {attempt} times within {self._timeout_s:g} s: {exc}"
                    ) from exc
                log.warning(
                    "sheet write failed, retrying in %.1f s: %s",
                    delay,
                    exc,
                    extra={"attempt": attempt},
                )
                self._sleep(delay)
                self._limiter.acquire(deadline)
                continue
            log.info(
                "sheet write: %d row(s) in one call",
                len(results),
                extra={"attempt": attempt + 1},
            )
            return results


def _copy(error: Exception) -> Exception:
    """A fresh exception per waiter: one instance raised in many threads shares a traceback."""
    fresh = (
        type(error)(*error.args)
        if isinstance(error, PipelineError)
        else TransientError(f"sheet write failed: {error!r}")
    )
    fresh.__cause__ = error
    return fresh
