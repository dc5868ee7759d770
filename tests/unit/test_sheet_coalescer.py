"""The write limiter, the backoff and the coalescer, on fakes and a fake clock."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import pytest

from shared.adapters.sheet_coalescer import SheetCoalescer
from shared.adapters.throttle import Backoff, FleetPace, WriteLimiter
from shared.contracts.sheet_row import Cell, Text
from shared.domain.errors import PermanentError, RowMoved, TransientError
from shared.services.ports import RowResult, RowUpdate
from tests.fakes import FakeClock, FakeQuotaGate

# --------------------------------------------------------------------------- limiter


def test_limiter_allows_a_full_minute_then_waits_for_the_window(clock: FakeClock) -> None:
    limiter = WriteLimiter(3, monotonic=clock.monotonic, sleep=clock.sleep)
    far = clock.monotonic() + 600
    for _ in range(3):
        limiter.acquire(far)
    assert clock.sleeps == []
    clock.advance(10)
    limiter.acquire(far)  # the 4th waits until the 1st is 60 s old
    assert clock.sleeps == [50]
    limiter.acquire(far)
    limiter.acquire(far)
    assert clock.sleeps == [50]  # the 2nd and 3rd left the window at the same moment


def test_limiter_never_exceeds_the_quota_in_any_minute(clock: FakeClock) -> None:
    limiter = WriteLimiter(60, monotonic=clock.monotonic, sleep=clock.sleep)
    stamps = []
    for i in range(300):
        limiter.acquire(clock.monotonic() + 600)
        stamps.append(clock.monotonic())
        clock.advance(0.1 if i % 7 else 0.9)
    for i, start in enumerate(stamps):
        assert len([t for t in stamps[i:] if t - start < 60 - 1e-6]) <= 60


def test_limiter_gives_up_at_the_deadline(clock: FakeClock) -> None:
    limiter = WriteLimiter(1, monotonic=clock.monotonic, sleep=clock.sleep)
    limiter.acquire(clock.monotonic() + 5)
    with pytest.raises(TransientError, match=r"budget \(1/min\) is spent"):
        limiter.acquire(clock.monotonic() + 5)
    assert clock.sleeps == []  # it does not sleep past the deadline first


# --------------------------------------------------------------------------- fleet


def test_the_fleets_writes_keep_to_one_pace_however_many_instances_write(
    clock: FakeClock,
) -> None:
    gate = FakeQuotaGate(57)
    # Four instances, each free to use the whole quota alone.
    instances = [
        FleetPace(
            gate,
            WriteLimiter(60, monotonic=clock.monotonic, sleep=clock.sleep),
            clock=clock,
            monotonic=clock.monotonic,
            sleep=clock.sleep,
        )
        for _ in range(4)
    ]
    stamps = []
    for i in range(240):
        instances[i % 4].acquire(clock.monotonic() + 600)
        stamps.append(clock.monotonic())
    # Alone, each instance would write 60 a minute: together they write 57.
    for i, start in enumerate(stamps):
        assert len([t for t in stamps[i:] if t - start < 60 - 1e-6]) <= 57
    assert stamps[-1] - stamps[0] >= 239 * 60 / 57 - 1e-6
    assert {model for model, *_ in gate.reserved} == {"sheets-writes"}


def test_a_fleet_slot_past_the_deadline_is_refused_without_waiting(clock: FakeClock) -> None:
    gate = FakeQuotaGate(6)  # a slot every 10 s
    own = WriteLimiter(60, monotonic=clock.monotonic, sleep=clock.sleep)
    pace = FleetPace(gate, own, clock=clock, monotonic=clock.monotonic, sleep=clock.sleep)
    pace.acquire(clock.monotonic() + 5)
    with pytest.raises(TransientError, match="fleet's Sheets writes are booked until"):
        pace.acquire(clock.monotonic() + 5)
    assert clock.sleeps == []
    pace.acquire(clock.monotonic() + 30)  # the next slot, 10 s on
    assert clock.sleeps == [10]


# --------------------------------------------------------------------------- backoff


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999])
def test_backoff_grows_capped_with_half_jitter(draw: float) -> None:
    backoff = Backoff(base_s=1, cap_s=16, rng=lambda: draw)
    delays = [backoff.delay(n) for n in range(8)]
    ceilings = [1, 2, 4, 8, 16, 16, 16, 16]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert backoff.delay(10_000) <= 16


# --------------------------------------------------------------------------- coalescer


class FakeRowsWriter:
    """RowsWriter recording each call; ``script`` gives outcomes call by call."""

    def __init__(self) -> None:
        self.calls: list[list[RowUpdate]] = []
        self.script: list[Exception | Callable[[Sequence[RowUpdate]], list[RowResult]]] = []
        self._lock = threading.Lock()

    def write_rows(self, spreadsheet_id: str, updates: Sequence[RowUpdate]) -> list[RowResult]:
        with self._lock:
            self.calls.append(list(updates))
            step = self.script.pop(0) if self.script else None
        if isinstance(step, Exception):
            raise step
        if step is not None:
            return step(updates)
        return [RowResult() for _ in updates]


def cells(status: str) -> Mapping[str, Cell]:
    return {"status_img": Text(status)}


def make_coalescer(
    writer: FakeRowsWriter,
    clock: FakeClock,
    *,
    window_s: float = 0.0,
    per_minute: int = 60,
    max_rows: int = 100,
    timeout_s: float = 60.0,
) -> SheetCoalescer:
    return SheetCoalescer(
        writer,
        WriteLimiter(per_minute, monotonic=clock.monotonic, sleep=clock.sleep),
        window_s=window_s,
        timeout_s=timeout_s,
        backoff=Backoff(base_s=1, cap_s=16, rng=lambda: 1.0),
        max_rows=max_rows,
        monotonic=clock.monotonic,
        sleep=clock.sleep,
    )


def run_together(calls: list[Callable[[], object]]) -> list[object]:
    """Run the calls in threads that start together; each result or exception."""
    results: list[object] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait(timeout=10)
        try:
            results[i] = calls[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_concurrent_updates_of_one_spreadsheet_go_in_one_call(clock: FakeClock) -> None:
    writer = FakeRowsWriter()
    # A window longer than the test: the batch closes when it is full.
    coalescer = make_coalescer(writer, clock, window_s=30, max_rows=8)
    results = run_together(
        [
            partial(coalescer.write_row, "sheet1", "Scenes", f"sc-{i}", cells("completed"))
            for i in range(8)
        ]
    )
    assert results == [None] * 8
    assert len(writer.calls) == 1
    assert sorted(u.scene_id for u in writer.calls[0]) == [f"sc-{i}" for i in range(8)]
    assert coalescer.flushes == 1


def test_each_waiter_gets_its_own_rows_result(clock: FakeClock) -> None:
    writer = FakeRowsWriter()

    def second_row_missing(updates: Sequence[RowUpdate]) -> list[RowResult]:
        return [
            RowResult(error=PermanentError(f"no row with scene_id {u.scene_id!r}"))
            if u.scene_id == "sc-1"
            else RowResult(note="no column nano_img_4" if u.scene_id == "sc-2" else None)
            for u in updates
        ]

    writer.script.append(second_row_missing)
    coalescer = make_coalescer(writer, clock, window_s=30, max_rows=3)
    results = run_together(
        [partial(coalescer.write_row, "sheet1", "Scenes", f"sc-{i}", cells("x")) for i in range(3)]
    )
    assert results[0] is None
    assert isinstance(results[1], PermanentError) and "sc-1" in str(results[1])
    assert results[2] == "no column nano_img_4"
    assert len(writer.calls) == 1


def wait_until(check: Callable[[], bool]) -> None:
    event = threading.Event()
    for _ in range(10_000):
        if check():
            return
        event.wait(0.001)
    raise AssertionError("condition never met")


def test_two_updates_of_one_row_merge_with_the_later_cells_winning(clock: FakeClock) -> None:
    writer = FakeRowsWriter()
    # The batch closes only when it holds two distinct rows.
    coalescer = make_coalescer(writer, clock, window_s=30, max_rows=2)

    def update(scene: str, status: Mapping[str, Cell]) -> threading.Thread:
        thread = threading.Thread(
            target=coalescer.write_row, args=("sheet1", "Scenes", scene, status)
        )
        thread.start()
        return thread

    first = update("sc-1", {"status_img": Text("old"), "job_id": Text("job_1")})
    wait_until(lambda: "sheet1" in coalescer._open)
    second = update("sc-1", cells("new"))
    wait_until(lambda: coalescer._open["sheet1"].waiters == 2)
    third = update("sc-2", cells("other"))
    for thread in (first, second, third):
        thread.join(timeout=10)
    assert writer.calls == [
        [
            RowUpdate("Scenes", "sc-1", {"status_img": Text("new"), "job_id": Text("job_1")}),
            RowUpdate("Scenes", "sc-2", cells("other")),
        ]
    ]


def test_transient_failure_is_retried_with_backoff_then_succeeds(clock: FakeClock) -> None:
    writer = FakeRowsWriter()
    writer.script += [TransientError("Sheets API 429"), TransientError("Sheets API 503")]
    coalescer = make_coalescer(writer, clock)
    assert coalescer.write_row("sheet1", "Scenes", "sc-1", cells("completed")) is None
    assert len(writer.calls) == 3
    assert clock.sleeps == [1.0, 2.0]


def test_transient_failures_end_in_transient_error_within_the_deadline(clock: FakeClock) -> None:
    writer = FakeRowsWriter()
    writer.script += [TransientError("Sheets API 429")] * 100
    coalescer = make_coalescer(writer, clock, timeout_s=60)
    start = clock.monotonic()
    with pytest.raises(TransientError, match=r"failed \d+ times within 60 s: Sheets API 429"):
        coalescer.write_row("sheet1", "Scenes", "sc-1", cells("completed"))
    assert clock.monotonic() - start <= 60
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0, 16.0, 16.0]  # capped, then out of time
    # Nothing is left open: the next update leads a new batch.
    assert coalescer._open == {}


def test_a_permanent_failure_of_the_call_reaches_every_waiter(clock: FakeClock) -> None:
    writer = FakeRowsWriter()
    writer.script.append(PermanentError("spreadsheet not found or not shared"))
    coalescer = make_coalescer(writer, clock, window_s=30, max_rows=2)
    results = run_together(
        [partial(coalescer.write_row, "sheet1", "Scenes", f"sc-{i}", cells("x")) for i in range(2)]
    )
    assert all(isinstance(r, PermanentError) and "not shared" in str(r) for r in results)
    assert results[0] is not results[1]
    assert len(writer.calls) == 1


def test_rate_limit_holds_the_batch_open_so_it_grows(clock: FakeClock) -> None:
    writer = FakeRowsWriter()
    coalescer = make_coalescer(writer, clock, per_minute=1, timeout_s=120)
    coalescer.write_row("sheet1", "Scenes", "sc-0", cells("x"))  # spends the minute
    waiting = threading.Event()
    real_sleep = clock.sleep

    def sleep(seconds: float) -> None:
        waiting.set()  # the leader waits for its write slot ...
        joined.wait(timeout=10)  # ... while another update joins its batch
        real_sleep(seconds)

    joined = threading.Event()
    coalescer._limiter._sleep = sleep
    leader = threading.Thread(
        target=coalescer.write_row, args=("sheet1", "Scenes", "sc-1", cells("x"))
    )
    leader.start()
    waiting.wait(timeout=10)
    follower = threading.Thread(
        target=coalescer.write_row, args=("sheet1", "Scenes", "sc-2", cells("y"))
    )
    follower.start()
    wait_until(lambda: coalescer._open["sheet1"].waiters == 2)
    joined.set()
    leader.join(timeout=10)
    follower.join(timeout=10)
    assert [[u.scene_id for u in call] for call in writer.calls] == [["sc-0"], ["sc-1", "sc-2"]]
    assert clock.sleeps == [60.0]


def test_spreadsheets_are_batched_separately(clock: FakeClock) -> None:
    writer = FakeRowsWriter()
    coalescer = make_coalescer(writer, clock, window_s=30, max_rows=2)
    results = run_together(
        [
            partial(coalescer.write_row, f"sheet{i % 2}", "Scenes", f"sc-{i}", cells("x"))
            for i in range(4)
        ]
    )
    assert results == [None] * 4
    assert sorted(len(call) for call in writer.calls) == [2, 2]


# --------------------------------------------------------------------------- wiring


def deployed(monkeypatch: pytest.MonkeyPatch, **settings: str) -> None:
    """A function's environment: the required settings, a local Sheets endpoint, and
    ``settings``."""
    for name, value in {
        "GOOGLE_CLOUD_PROJECT": "p",
        "IMAGES_BUCKET": "bucket",
        "PUBLIC_BASE_URL": "https://api.example.test",
        "LINK_SIGNING_KEY": "k",
        "SHEETS_API_URL": "http://127.0.0.1:9",
        **settings,
    }.items():
        monkeypatch.setenv(name, value)


def test_wiring_writes_through_one_coalescer_with_the_configured_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from functions import wiring
    from shared.adapters.imaging import DecodeSlots
    from tests.fakes import FakeBudgetLedger, FakeJobStore, FakeObjectStore

    deployed(
        monkeypatch,
        SHEETS_WRITES_PER_MINUTE="12",
        SHEETS_COALESCE_MS="400",
        SHEETS_WRITE_TIMEOUT_S="30",
        THUMBNAIL_DECODE_SLOTS="3",
        SHEET_ROWS_TOPIC="",  # each delivery writes its own row
    )
    monkeypatch.setattr(wiring, "job_store", lambda: FakeJobStore())
    monkeypatch.setattr(wiring, "object_store", lambda: FakeObjectStore())
    monkeypatch.setattr(wiring, "budget_ledger", lambda: FakeBudgetLedger())
    sync = wiring.sheet_sync()
    coalescer = sync.sheets
    assert isinstance(coalescer, SheetCoalescer)
    assert coalescer._limiter.per_minute == 12
    assert (coalescer._window_s, coalescer._timeout_s) == (0.4, 30)
    assert sync.lease_s > 0.4 + 30 + 30  # outlives the write and its last HTTP call
    thumbnails = wiring.thumbnails()
    # One coalescer and one write budget per instance, whoever changes the job.
    assert thumbnails.ledger is wiring.ledger()
    assert thumbnails.ledger.rows is sync
    assert isinstance(thumbnails.thumbnailer, DecodeSlots)
    assert thumbnails.thumbnailer._slots._value == 3  # type: ignore[attr-defined]


def test_wiring_hands_rows_to_the_fleets_writer_whose_own_ledger_writes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from functions import wiring
    from shared.services.sheet_rows import QueuedRows
    from tests.fakes import FakeBudgetLedger, FakeJobStore, FakeRowsQueue

    deployed(monkeypatch)
    monkeypatch.delenv("SHEET_ROWS_TOPIC", raising=False)  # the default: the fleet's writer
    monkeypatch.setattr(wiring, "job_store", lambda: FakeJobStore())
    monkeypatch.setattr(wiring, "budget_ledger", lambda: FakeBudgetLedger())
    queue = FakeRowsQueue()
    monkeypatch.setattr(wiring, "rows_queue", lambda: queue)
    assert isinstance(wiring.ledger().rows, QueuedRows)
    assert wiring.ledger().rows.queue is queue  # type: ignore[union-attr]
    writer = wiring.sheet_rows()
    assert writer.ledger.rows is wiring.sheet_sync()  # the writer writes, never queues


def test_a_row_that_moved_reaches_its_waiter_with_the_rows_that_got_its_cells(
    clock: FakeClock,
) -> None:
    writer = FakeRowsWriter()
    writer.script = [lambda updates: [RowResult(error=RowMoved("sc-1", "sc-7", "sc-9"))]]
    with pytest.raises(RowMoved) as caught:
        make_coalescer(writer, clock).write_row("sheet", "Scenes", "sc-1", cells("done"))
    assert (caught.value.scene_id, caught.value.landed_in) == ("sc-1", ("sc-7", "sc-9"))
