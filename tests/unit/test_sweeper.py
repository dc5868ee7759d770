"""The sweeper: requests that died and were never retried end (finished, or their
reservation given back), and live jobs whose message was lost are published again,
or fail once too old."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from shared.contracts.links import LinkSigner
from shared.contracts.requests import BatchRequest, Limits
from shared.contracts.sheet_row import row_cells
from shared.domain import cancellation, handover, lifecycle
from shared.domain.errors import TransientError
from shared.domain.job import JobState, VariantState
from shared.services.intake import Accepted, Intake
from shared.services.ledger import JobLedger
from shared.services.once import REQUEST_LEASE_S
from shared.services.preflight import Preflight
from shared.services.rerolls import Queued, Rerolls
from shared.services.sheet_check import SheetCheck
from shared.services.sheet_sync import SheetSync
from shared.services.sweeper import (
    FOLLOW_UP_AFTER_S,
    REPUBLISH_AFTER_S,
    REPUBLISH_EVERY_S,
    Sweeper,
)
from tests.fakes import (
    IMAGES_BUCKET,
    T0,
    FakeBudgetLedger,
    FakeClock,
    FakeExportPublisher,
    FakeIdempotencyStore,
    FakeJobStore,
    FakeModelDirectory,
    FakePublisher,
    FakeSheetLayouts,
    FakeSheetWriter,
    make_batch,
    make_job,
    make_settings,
    mark_done,
)

DAY = T0.strftime("%Y-%m-%d")


class Died(BaseException):
    """The instance died here: nothing after it runs."""


class DyingAt:
    """Wraps a fake so that one named call kills the instance (once), before or after
    it does its work."""

    def __init__(self, inner: Any, method: str, after: bool = False) -> None:
        self._inner, self._method, self._after, self.dead = inner, method, after, False

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._inner, name)
        if name != self._method or self.dead:
            return real

        def dying(*args: Any, **kwargs: Any) -> Any:
            self.dead = True
            if self._after:
                real(*args, **kwargs)
            raise Died

        return dying


class Deaf(FakeIdempotencyStore):
    """A dead instance lets go of nothing: its lease runs out by itself."""

    def let_go(self, key: str, holder: str) -> None:
        return None


def batch_request(*variants: int) -> BatchRequest:
    return BatchRequest.model_validate(
        {
            "items": [
                {"scene_id": f"sc-{i}", "prompt": f"p{i}", "variants": v}
                for i, v in enumerate(variants, start=1)
            ],
            "runMode": "live",
            "spreadsheet_id": "sheet123",
            "worksheet": "Scenes",
        },
        context={"limits": Limits(images_bucket=IMAGES_BUCKET)},
    )


@pytest.fixture
def idem() -> Deaf:
    return Deaf()


@pytest.fixture
def store(idem: Deaf) -> FakeJobStore:
    return FakeJobStore(idem)


@pytest.fixture
def budget(idem: Deaf) -> FakeBudgetLedger:
    return FakeBudgetLedger(idem)


@pytest.fixture
def make_intake(
    budget: FakeBudgetLedger,
    idem: Deaf,
    model_directory: FakeModelDirectory,
    links: LinkSigner,
    clock: FakeClock,
) -> Callable[..., Intake]:
    counter = itertools.count(1)  # batch ids are never used twice

    def build(store: Any, publisher: Any) -> Intake:
        return Intake(
            make_settings(),
            store,
            JobLedger(store, budget=budget),
            publisher,
            links,
            budget,
            idem,
            Preflight(model_directory, ttl_s=300, monotonic=clock.monotonic),
            SheetCheck(FakeSheetLayouts(), monotonic=clock.monotonic),
            clock=clock,
            ids=lambda prefix: f"{prefix}_{next(counter)}",
        )

    return build


@pytest.fixture
def sweeper(
    store: FakeJobStore,
    budget: FakeBudgetLedger,
    idem: Deaf,
    publisher: FakePublisher,
    clock: FakeClock,
) -> Sweeper:
    return Sweeper(
        make_settings(),
        store,
        JobLedger(store, budget=budget),
        idem,
        budget,
        publisher,
        FakeExportPublisher(),
        clock,
    )


def test_a_batch_that_died_after_reserving_and_was_never_retried_gives_its_budget_back(
    make_intake: Callable[..., Intake],
    store: FakeJobStore,
    publisher: FakePublisher,
    budget: FakeBudgetLedger,
    idem: Deaf,
    sweeper: Sweeper,
    clock: FakeClock,
) -> None:
    dying = DyingAt(store, "create_batch")
    with pytest.raises(Died):
        make_intake(dying, publisher).submit(batch_request(2, 2), "alice", "k")
    assert budget.used[("alice", DAY)].images == 4
    assert sweeper.sweep().requests_undone == 0  # its lease still runs: it may be alive
    clock.advance(REQUEST_LEASE_S + 1)
    report = sweeper.sweep()
    assert (report.requests_undone, report.requests_finished) == (1, 0)
    assert budget.used[("alice", DAY)].images == 0
    assert idem.records == {}
    assert sweeper.sweep().requests_undone == 0  # given back once
    # A late retry starts afresh (and reserves again, once).
    answer = make_intake(store, publisher).submit(batch_request(2, 2), "alice", "k")
    assert isinstance(answer, Accepted)
    assert budget.used[("alice", DAY)].images == 4


def test_a_batch_that_died_after_recording_is_published_and_answered_by_the_sweeper(
    make_intake: Callable[..., Intake],
    store: FakeJobStore,
    publisher: FakePublisher,
    budget: FakeBudgetLedger,
    sweeper: Sweeper,
    clock: FakeClock,
) -> None:
    dying = DyingAt(publisher, "publish")
    with pytest.raises(Died):
        make_intake(store, dying).submit(batch_request(1, 3), "alice", "k")
    assert publisher.published == [] and len(store.batches) == 1
    clock.advance(REQUEST_LEASE_S + 1)
    assert sweeper.sweep().requests_finished == 1
    assert sorted(m.job_id for m, _ in publisher.published) == ["job_1_1", "job_1_2"]
    assert budget.used[("alice", DAY)].images == 4
    # The client's late retry gets the answer the first run prepared.
    again = make_intake(store, publisher).submit(batch_request(1, 3), "alice", "k")
    assert isinstance(again, Accepted) and again.replay
    assert again.answer.batch_id == "bat_1" and len(store.batches) == 1


@pytest.mark.parametrize("death", ["after adding the version", "after reserving"])
def test_a_reroll_that_died_is_finished_by_its_retry_with_one_version_and_one_reservation(
    store: FakeJobStore,
    publisher: FakePublisher,
    budget: FakeBudgetLedger,
    idem: Deaf,
    sweeper: Sweeper,
    clock: FakeClock,
    death: str,
) -> None:
    """Scenario 4 of the interleavings issue."""
    job = mark_done(make_job(variant_count=1, budget_day=DAY), 1)
    job.state = lifecycle.derive_state(job)
    store.add(job)
    ledger = JobLedger(store, budget=budget)
    seeds = itertools.count(100)

    def rerolls(publisher: Any, ledger: Any = ledger) -> Rerolls:
        return Rerolls(
            make_settings(), store, ledger, publisher, budget, idem, clock, lambda: next(seeds)
        )

    if death == "after adding the version":
        dying: Any = DyingAt(publisher, "publish")
        with pytest.raises(Died):
            rerolls(dying).request("job_1", 1, None, "alice", idempotency_key="k")
    else:
        dying = DyingAt(ledger, "apply")
        with pytest.raises(Died):
            rerolls(publisher, dying).request("job_1", 1, None, "alice", idempotency_key="k")
    clock.advance(REQUEST_LEASE_S + 1)
    answer = rerolls(publisher).request("job_1", 1, None, "alice", idempotency_key="k")
    assert isinstance(answer, Queued) and answer.answer.version == 2
    (version,) = store.job("job_1").variant(1).versions
    assert (version.version, version.seed) == (2, 100)  # the first run's seed, kept
    assert budget.used[("alice", DAY)].images == 1
    assert [(m.variant, m.version) for m, _ in publisher.published] == [(1, 2)]
    assert sweeper.sweep().requests_finished == 0  # nothing left to finish


def test_a_reroll_that_died_after_adding_its_version_is_published_by_the_sweeper(
    store: FakeJobStore,
    publisher: FakePublisher,
    budget: FakeBudgetLedger,
    idem: Deaf,
    sweeper: Sweeper,
    clock: FakeClock,
) -> None:
    job = mark_done(make_job(variant_count=1, budget_day=DAY), 1)
    job.state = lifecycle.derive_state(job)
    store.add(job)
    rerolls = Rerolls(
        make_settings(),
        store,
        JobLedger(store, budget=budget),
        DyingAt(publisher, "publish"),
        budget,
        idem,
        clock,
    )
    with pytest.raises(Died):
        rerolls.request("job_1", 1, "warmer light", "alice", idempotency_key="k")
    clock.advance(REQUEST_LEASE_S + 1)
    assert sweeper.sweep().requests_finished == 1
    assert [(m.variant, m.version) for m, _ in publisher.published] == [(1, 2)]
    assert budget.used[("alice", DAY)].images == 1


def test_a_live_job_whose_message_was_lost_is_published_again_then_failed_when_too_old(
    store: FakeJobStore,
    publisher: FakePublisher,
    budget: FakeBudgetLedger,
    sweeper: Sweeper,
    clock: FakeClock,
) -> None:
    store.add(
        make_job(job_id="job_lost", variant_count=2, budget_day=DAY),
        make_job(job_id="job_eco", lane="economy"),
        make_job(job_id="job_going", state=JobState.GENERATING, started_at=T0),
    )
    assert sweeper.sweep().jobs_republished == 0  # young: its message may be on its way
    clock.advance(REPUBLISH_AFTER_S + 1)
    assert sweeper.sweep().jobs_republished == 1
    assert [m.job_id for m, _ in publisher.published] == ["job_lost"]
    assert sweeper.sweep().jobs_republished == 0  # not again at once
    clock.advance(REPUBLISH_EVERY_S + 1)
    assert sweeper.sweep().jobs_republished == 1
    budget.reserve("alice", DAY, "batch:bat_1", 2, Decimal("0.2"), 100, Decimal(100))
    clock.advance(make_settings().max_event_age_s)
    assert sweeper.sweep().jobs_failed == 1
    lost = store.job("job_lost")
    assert lost.state == JobState.FAILED
    assert {v.state for v in lost.variants.values()} == {VariantState.FAILED}
    assert "no delivery started it" in (lost.error or "")
    assert budget.used[("alice", DAY)].images == 0  # its reservation given back


def test_a_request_that_stalled_past_its_lease_records_nothing_after_the_sweeper_undid_it(
    make_intake: Callable[..., Intake],
    store: FakeJobStore,
    publisher: FakePublisher,
    budget: FakeBudgetLedger,
    sweeper: Sweeper,
    clock: FakeClock,
) -> None:
    """The request's instance stalls (a ten-minute pause) between reserving and
    recording; the sweeper gives the reservation back; the request wakes up."""

    class Stalling(FakeJobStore):
        def create_batch(self, *args: Any, **kwargs: Any) -> None:
            clock.advance(REQUEST_LEASE_S + 600)
            sweeper.sweep()
            store.create_batch(*args, **kwargs)

    with pytest.raises(TransientError, match="another request took this one over"):
        make_intake(Stalling(), publisher).submit(batch_request(2), "alice", "k")
    assert store.batches == {} and store.job_ids == []
    assert budget.used[("alice", DAY)].images == 0
    assert publisher.published == []


def test_a_change_whose_follow_ups_never_ran_is_settled_and_shown_by_the_sweeper(
    store: FakeJobStore,
    budget: FakeBudgetLedger,
    idem: Deaf,
    publisher: FakePublisher,
    clock: FakeClock,
    links: LinkSigner,
) -> None:
    """A job cancelled whose instance died right after the change: nobody settled
    its budget, nobody wrote its row (the row update was never queued)."""
    sheets = FakeSheetWriter()
    rows = SheetSync(store, sheets, links, clock=clock)
    sweeper = Sweeper(
        make_settings(),
        store,
        JobLedger(store, rows, budget, clock),
        idem,
        budget,
        publisher,
        FakeExportPublisher(),
        clock,
    )
    store.add(make_job(variant_count=2, budget_day=DAY))
    budget.reserve("alice", DAY, "batch:bat_1", 2, Decimal("0.2"), 100, Decimal(100))
    bare = JobLedger(store, clock=clock)  # the change, and nothing after it
    bare.apply("job_1", lambda j: cancellation.cancel(j, "alice", clock()))
    assert store.job("job_1").followups_since == T0

    assert sweeper.sweep().jobs_followed_up == 0  # its delivery may still be at it
    clock.advance(FOLLOW_UP_AFTER_S + 1)
    assert sweeper.sweep().jobs_followed_up == 1
    job = store.job("job_1")
    assert job.state == JobState.CANCELLED
    assert sheets.row("sc-001") == row_cells(job, links)
    assert budget.used[("alice", DAY)].images == 0  # both images given back
    assert job.followups_since is None
    assert sweeper.sweep().jobs_followed_up == 0
    assert len(sheets.writes) == 1


def test_an_export_whose_message_was_lost_is_published_again_then_failed_when_too_old(
    store: FakeJobStore,
    budget: FakeBudgetLedger,
    idem: Deaf,
    publisher: FakePublisher,
    clock: FakeClock,
) -> None:
    exports = FakeExportPublisher()
    sweeper = Sweeper(
        make_settings(), store, JobLedger(store), idem, budget, publisher, exports, clock
    )
    job = make_job()
    store.create_batch(make_batch(job, model=job.model, estimated_cost_usd="0.0336"), [job])
    # Recorded, then the request died before publishing it.
    store.update_batch("bat_1", lambda b: handover.request(b, "exp_1", "alice", clock()))
    assert sweeper.sweep().exports_republished == 0  # young: its message may be on its way
    clock.advance(REPUBLISH_AFTER_S + 1)
    assert sweeper.sweep().exports_republished == 1
    assert [(m.batch_id, m.export_id) for m in exports.published] == [("bat_1", "exp_1")]
    assert sweeper.sweep().exports_republished == 0  # not again at once
    clock.advance(REPUBLISH_EVERY_S + 1)
    assert sweeper.sweep().exports_republished == 1
    clock.advance(make_settings().max_event_age_s)
    assert sweeper.sweep().exports_failed == 1
    export = store.batches["bat_1"].export
    assert export is not None and export.state == "failed"
    assert "no delivery started it" in (export.error or "")
    assert sweeper.sweep().exports_failed == 0


def test_a_started_job_past_its_age_limit_fails_what_nobody_is_making(
    store: FakeJobStore, budget: FakeBudgetLedger, sweeper: Sweeper, clock: FakeClock
) -> None:
    """Its deliveries stopped coming (or kept failing): the images waiting for a call
    fail with the reason; one a live holder is making is left to it until its lease
    runs out."""
    limit = make_settings().max_event_age_s
    job = make_job(variant_count=2, budget_day=DAY, state=JobState.GENERATING, started_at=T0)
    job.variant(2).state = VariantState.GENERATING
    job.variant(2).claim_id = "gen_live"
    job.variant(2).claim_expires = T0 + timedelta(seconds=limit + 60)
    store.add(job)
    budget.reserve("alice", DAY, "batch:bat_1", 2, Decimal("0.2"), 100, Decimal(100))
    assert sweeper.sweep().images_expired == 0  # young
    clock.advance(limit + 1)
    assert sweeper.sweep().images_expired == 1
    job = store.job("job_1")
    assert job.variant(1).state == VariantState.FAILED
    assert "over the 43200 s limit" in (job.variant(1).error or "")
    assert job.variant(2).state == VariantState.GENERATING  # its holder is at work
    clock.advance(120)  # its lease ran out: the holder is gone
    assert sweeper.sweep().images_expired == 1
    job = store.job("job_1")
    assert job.state == JobState.FAILED
    assert budget.used[("alice", DAY)].images == 0


def test_a_sweeper_that_lost_the_record_to_a_retry_gives_nothing_back(
    make_intake: Callable[..., Intake],
    store: FakeJobStore,
    publisher: FakePublisher,
    budget: FakeBudgetLedger,
    idem: Deaf,
    clock: FakeClock,
) -> None:
    """Found by the simulation (seed 448): the sweeper took a dead request's record,
    was slow past the record's lease, and a retry took the record over and went on
    with its reservation; the sweeper then gave that reservation back, and the
    retry's images were made for free."""
    dying = DyingAt(store, "create_batch")
    with pytest.raises(Died):
        make_intake(dying, publisher).submit(batch_request(2), "alice", "k")
    clock.advance(REQUEST_LEASE_S + 1)

    class SlowToBegin(Deaf):
        def begin(self, key: str, names: str, *args: Any) -> Any:
            taken = idem.begin(key, names, *args)
            # The sweeper's begin answers late; meanwhile a retry takes the record.
            clock.advance(REQUEST_LEASE_S + 1)
            now = clock()
            idem.begin(key, names, "retry", now, now + timedelta(days=1), timedelta(seconds=60))
            return taken

    slow = SlowToBegin()
    slow.stale = idem.stale  # type: ignore[method-assign]
    slow.abandon = idem.abandon  # type: ignore[method-assign]
    sweeper = Sweeper(
        make_settings(),
        store,
        JobLedger(store, budget=budget),
        slow,
        budget,
        publisher,
        FakeExportPublisher(),
        clock,
    )
    budget.requests = idem  # the fence is checked against the record the retry holds
    assert sweeper.sweep().requests_undone == 0
    assert budget.used[("alice", DAY)].images == 2  # the retry's reservation stands
    (record,) = idem.records.values()
    assert record.holder == "retry"


def test_a_sweep_that_dies_on_a_slow_publish_has_already_ended_the_jobs_past_their_age(
    store: FakeJobStore, publisher: FakePublisher, sweeper: Sweeper, clock: FakeClock
) -> None:
    # Found by the simulation: sweeps that kept dying on a ten-minute publish of
    # something else never reached the job past its age limit, which ended hours late.
    store.add(
        make_job(job_id="job_old"),
        make_job(job_id="job_going", state=JobState.GENERATING, started_at=T0),
    )
    clock.advance(make_settings().max_event_age_s + 1)
    store.add(make_job(job_id="job_young", created_at=clock(), updated_at=clock()))
    clock.advance(REPUBLISH_AFTER_S + 1)

    def dies(messages: Any) -> dict[str, str]:
        raise RuntimeError("the instance ended at its timeout")

    publisher.publish = dies  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        sweeper.sweep()
    assert store.job("job_old").state == JobState.FAILED
    assert store.job("job_going").state == JobState.FAILED  # overdue, nobody at work
    assert store.job("job_young").state == JobState.QUEUED


def test_a_busy_row_does_not_stop_the_sweep(
    store: FakeJobStore,
    budget: FakeBudgetLedger,
    idem: Deaf,
    publisher: FakePublisher,
    clock: FakeClock,
) -> None:
    # Found by the simulation: a row another delivery was still writing made the
    # whole sweep raise after one job, leaving the rest unswept.
    class BusyRows:
        def is_current(self, job: Any) -> bool:
            return False

        def sync(self, job_id: str, *args: Any, **kwargs: Any) -> None:
            raise TransientError(f"another delivery is still writing the row of {job_id}")

    store.add(make_job(job_id="job_a"), make_job(job_id="job_b"))
    clock.advance(make_settings().max_event_age_s + 1)
    ledger = JobLedger(store, rows=BusyRows(), budget=budget)  # type: ignore[arg-type]
    sweeper = Sweeper(
        make_settings(), store, ledger, idem, budget, publisher, FakeExportPublisher(), clock
    )
    report = sweeper.sweep()
    assert {store.job(j).state for j in ("job_a", "job_b")} == {JobState.FAILED}
    assert report.errors and all("still writing the row" in e for e in report.errors)
