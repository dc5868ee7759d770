"""The economy lane on fakes: submit once, collect once, resume after crashes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from shared.adapters.image_check import image_mime
from shared.contracts import status_words
from shared.contracts.sheet_row import Text
from shared.domain import cancellation, lifecycle
from shared.domain import economy_batches as records
from shared.domain.errors import PermanentError, TransientError
from shared.domain.job import JobState, VariantState
from shared.services.economy import Economy
from shared.services.ledger import JobLedger
from shared.services.ports import LineResult, ReferenceImage
from tests.fakes import (
    IMAGES_BUCKET,
    T0,
    FakeBatchRunner,
    FakeBudgetLedger,
    FakeClock,
    FakeEconomyBatches,
    FakeJobStore,
    FakeObjectStore,
    FakePublisher,
    FakeReferenceLoader,
    FakeSheetWriter,
    make_job,
    make_settings,
)

Build = Callable[..., Economy]
REF = ReferenceImage(b"\x89PNG reference", "image/png")
DAY = T0.strftime("%Y-%m-%d")


@pytest.fixture
def economy_batches() -> FakeEconomyBatches:
    return FakeEconomyBatches()


@pytest.fixture
def runner() -> FakeBatchRunner:
    return FakeBatchRunner()


@pytest.fixture
def make_economy(
    ledger: JobLedger,
    store: FakeJobStore,
    economy_batches: FakeEconomyBatches,
    runner: FakeBatchRunner,
    references: FakeReferenceLoader,
    objects: FakeObjectStore,
    publisher: FakePublisher,
    clock: FakeClock,
) -> Build:
    def build(**overrides: Any) -> Economy:
        return Economy(
            settings=make_settings(**overrides),
            ledger=ledger,
            store=store,
            batches=economy_batches,
            runner=runner,
            references=references,
            objects=objects,
            publisher=publisher,
            probe=image_mime,
            clock=clock,
            monotonic=clock.monotonic,
        )

    return build


def economy_job(job_id: str, variants: int = 2, **fields: Any) -> Any:
    values = {
        "job_id": job_id,
        "scene_id": f"sc-{job_id}",
        "variant_count": variants,
        "lane": "economy",
        "price_per_image": "0.0335",
    }
    return make_job(**(values | fields))


def images(objects: FakeObjectStore) -> list[str]:
    return [n for n in objects.names(IMAGES_BUCKET) if n.startswith("images/")]


# --------------------------------------------------------------------------- submit


def test_pending_economy_variants_go_into_one_batch_per_shape_claimed_first(
    make_economy: Build, store: FakeJobStore, runner: FakeBatchRunner, sheet_writer: FakeSheetWriter
) -> None:
    store.add(
        economy_job("job_a", 2),
        economy_job("job_b", 1),
        economy_job("job_c", 1, image_size="4K"),
        make_job(job_id="job_live"),  # the live lane's: never batched
    )
    report = make_economy().tick()
    assert (report.batches_submitted, report.variants_submitted) == (2, 4)
    by_size = {b.lines[0].image_size: b for b in runner.batches.values()}
    assert [line.key for line in by_size[None].lines] == ["job_a/1", "job_a/2", "job_b/1"]
    assert [line.key for line in by_size["4K"].lines] == ["job_c/1"]
    assert {line.seed for line in by_size[None].lines} == {1, 2}
    job = store.job("job_a")
    assert {job.variant(n).state for n in (1, 2)} == {VariantState.BATCHED}
    ((ref),) = job.gemini_batches
    assert (ref.name, ref.state) == (runner.submits[0], "pending")
    assert store.job("job_live").variant(1).state == VariantState.PENDING
    assert sheet_writer.row("sc-job_a")["status_img"] == Text(
        "economy: waiting for the Gemini batch (0/2)"
    )
    # A second tick submits nothing new.
    assert make_economy().tick().batches_submitted == 0
    assert len(runner.submits) == 2


def test_batches_hold_at_most_the_configured_requests(
    make_economy: Build, store: FakeJobStore, runner: FakeBatchRunner
) -> None:
    store.add(*(economy_job(f"job_{i}", 2) for i in range(5)))
    make_economy(economy_batch_max_requests=4).tick()
    assert sorted(len(b.lines) for b in runner.batches.values()) == [2, 4, 4]


def test_two_ticks_at_once_submit_each_variant_once(
    make_economy: Build, store: FakeJobStore, runner: FakeBatchRunner
) -> None:
    store.add(*(economy_job(f"job_{i}", 3) for i in range(6)))
    start = threading.Barrier(2)

    def tick() -> None:
        start.wait(timeout=10)
        make_economy(economy_batch_max_requests=5).tick()

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    keys = [line.key for b in runner.batches.values() for line in b.lines]
    assert sorted(keys) == sorted(f"job_{i}/{n}" for i in range(6) for n in (1, 2, 3))


def test_a_tick_that_died_after_creating_the_batch_never_creates_it_again(
    make_economy: Build,
    store: FakeJobStore,
    runner: FakeBatchRunner,
    references: FakeReferenceLoader,
    economy_batches: FakeEconomyBatches,
    clock: FakeClock,
) -> None:
    url = "https://example.com/refs.png"
    references.packs[url] = [REF]
    store.add(economy_job("job_a", 2, ref_pack_public_url=url))
    economy = make_economy()
    # Gemini created the batch, then the instance died before recording its name.
    original = runner.submit

    def created_then_died(*args: Any) -> tuple[str, bool]:
        original(*args)
        raise KeyboardInterrupt  # the instance stops

    runner.submit = created_then_died  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        economy.tick()
    runner.submit = original  # type: ignore[method-assign]
    (record,) = economy_batches.records.values()
    assert (record.state, record.gemini_name) == ("claiming", None)
    # Its lease runs out; the next tick finds the batch Gemini has and adopts it.
    loads = len(references.loads)
    clock.advance(301)
    make_economy().tick()
    assert len(runner.submits) == 1
    record = economy_batches.records[record.record_id]
    assert (record.state, record.gemini_name) == ("submitted", runner.submits[0])
    # What Gemini holds was sent already: nothing is read (or failed) again.
    assert len(references.loads) == loads
    assert store.job("job_a").gemini_batches[0].name == runner.submits[0]


def test_a_tick_that_died_before_creating_the_batch_creates_it_once_later(
    make_economy: Build,
    store: FakeJobStore,
    runner: FakeBatchRunner,
    economy_batches: FakeEconomyBatches,
    clock: FakeClock,
) -> None:
    store.add(economy_job("job_a", 2))
    runner.submit_error = TransientError("Gemini answered 503")
    make_economy().tick()
    runner.submit_error = None
    assert runner.submits == []
    clock.advance(1)  # our own lease was released: the next tick resumes at once
    make_economy().tick()
    assert len(runner.submits) == 1
    assert [line.key for line in runner.batches[runner.submits[0]].lines] == ["job_a/1", "job_a/2"]
    assert len(economy_batches.records) == 1


def test_a_pack_that_fails_fails_its_variants_and_is_not_sent(
    make_economy: Build,
    store: FakeJobStore,
    runner: FakeBatchRunner,
    references: FakeReferenceLoader,
) -> None:
    url = "https://example.com/bad.zip"
    references.packs[url] = PermanentError("a zip member lies about its size")
    store.add(economy_job("job_a", 1, ref_pack_public_url=url), economy_job("job_b", 1))
    make_economy().tick()
    assert [line.key for line in runner.batches[runner.submits[0]].lines] == ["job_b/1"]
    job = store.job("job_a")
    assert job.state == JobState.FAILED
    assert job.variant(1).error == "reference pack: a zip member lies about its size"


def test_a_pack_not_read_in_time_waits_for_a_later_batch_until_its_budget_is_used_up(
    make_economy: Build,
    store: FakeJobStore,
    runner: FakeBatchRunner,
    references: FakeReferenceLoader,
    clock: FakeClock,
) -> None:
    url = "https://example.com/slow.zip"
    slow = f"reference {url}: the pack took longer than the 20 s allowed"
    references.packs[url] = TransientError(slow)
    store.add(economy_job("job_a", 1, ref_pack_public_url=url), economy_job("job_b", 1))
    # The rest of the group is not held up: job_b goes, job_a waits with one failure.
    make_economy(gemini_failure_budget=2).tick()
    assert [line.key for line in runner.batches[runner.submits[0]].lines] == ["job_b/1"]
    job = store.job("job_a")
    variant = job.variant(1)
    assert (variant.state, variant.gemini_batch, variant.failures) == (
        VariantState.PENDING,
        None,
        1,
    )
    assert job.gemini_batches == []  # it is in no Gemini batch
    # The next tick tries it again; the second failure uses the budget up.
    clock.advance(1)
    make_economy(gemini_failure_budget=2).tick()
    assert len(runner.submits) == 1
    job = store.job("job_a")
    assert job.state == JobState.FAILED
    assert job.variant(1).error == f"gave up after 2 failed attempts; the last: {slow}"


def test_a_pack_that_recovers_goes_in_a_later_batch(
    make_economy: Build,
    store: FakeJobStore,
    runner: FakeBatchRunner,
    references: FakeReferenceLoader,
    clock: FakeClock,
) -> None:
    url = "https://example.com/slow.zip"
    references.packs[url] = TransientError(f"reference {url} answered 503")
    store.add(economy_job("job_a", 2, ref_pack_public_url=url))
    make_economy().tick()
    assert runner.submits == []
    references.packs[url] = [REF]
    clock.advance(1)
    make_economy().tick()
    (name,) = runner.submits
    assert [line.key for line in runner.batches[name].lines] == ["job_a/1", "job_a/2"]
    job = store.job("job_a")
    assert [job.variant(n).failures for n in (1, 2)] == [1, 1]
    assert [ref.name for ref in job.gemini_batches] == [name]


def test_an_anchor_not_made_yet_waits_without_counting_and_holds_up_nobody(
    make_economy: Build,
    store: FakeJobStore,
    runner: FakeBatchRunner,
    clock: FakeClock,
) -> None:
    # job_a's style anchor is job_b's image, made by the very batch job_b goes into.
    store.add(
        economy_job("job_a", 1, style_refs=["job:job_b#1"]),
        economy_job("job_b", 1),
    )
    for _ in range(4):  # more ticks than the failure budget
        make_economy().tick()
        clock.advance(1)
    assert [line.key for line in runner.batches[runner.submits[0]].lines] == ["job_b/1"]
    assert len(runner.submits) == 1
    variant = store.job("job_a").variant(1)
    assert (variant.state, variant.failures) == (VariantState.PENDING, 0)


# --------------------------------------------------------------------------- collect


def test_a_finished_batch_stores_each_image_once_at_the_batch_price(
    make_economy: Build,
    store: FakeJobStore,
    runner: FakeBatchRunner,
    objects: FakeObjectStore,
    economy_batches: FakeEconomyBatches,
) -> None:
    store.add(economy_job("job_a", 2), economy_job("job_b", 1))
    economy = make_economy()
    economy.tick()
    (name,) = runner.submits
    runner.batches[name].results["job_b/1"] = LineResult(
        "job_b/1", error="prompt blocked by Gemini for the safety filters (SAFETY)"
    )
    assert economy.tick().images_stored == 0  # still pending
    runner.set_state(name, "running")
    economy.tick()
    assert store.job("job_a").gemini_batches[0].state == "running"
    runner.set_state(name, "succeeded")
    report = economy.tick()
    assert (report.images_stored, report.variants_failed, report.batches_collected) == (2, 1, 1)
    assert images(objects) == [
        "images/sc-job_a/job_a/var_1.png",
        "images/sc-job_a/job_a/var_2.png",
    ]
    job = store.job("job_a")
    # No tokens reported: the catalog's batch price of a 1K image.
    assert [job.variant(n).cost_usd for n in (1, 2)] == ["0.0335", "0.0335"]
    assert {job.variant(n).state for n in (1, 2)} == {VariantState.UPLOADED}
    meta = objects.objects[(IMAGES_BUCKET, "images/sc-job_a/job_a/var_1.png")].metadata
    assert (meta["job_id"], meta["variant"], meta["cost_usd"]) == ("job_a", "1", "0.0335")
    failed = store.job("job_b")
    assert failed.state == JobState.FAILED
    assert "prompt blocked by Gemini" in (failed.error or "")
    assert all(r.state == "collected" for r in economy_batches.records.values())
    # Nothing left to do: later ticks do not ask Gemini again.
    gets = runner.gets
    economy.tick()
    assert runner.gets == gets


def test_a_collector_that_dies_mid_download_is_resumed_storing_nothing_twice(
    make_economy: Build,
    store: FakeJobStore,
    runner: FakeBatchRunner,
    objects: FakeObjectStore,
    clock: FakeClock,
) -> None:
    store.add(economy_job("job_a", 3), economy_job("job_b", 2))
    make_economy().tick()
    runner.set_state(runner.submits[0], "succeeded")
    runner.fail_after = 2
    report = make_economy().tick()
    assert report.images_stored == 2 and report.errors
    runner.fail_after = None
    clock.advance(1)
    report = make_economy().tick()
    assert report.images_stored == 3  # the two already stored are not stored again
    assert len(images(objects)) == 5
    creates = [c for c in objects.calls if c[0] == "create" and c[2].startswith("images/")]
    assert len(creates) == 7  # 2 + 5 attempts, 5 objects: create-only did the rest
    assert {store.job(j).variant(n).state for j, n in [("job_a", 3), ("job_b", 2)]} == {
        VariantState.UPLOADED
    }


def test_two_ticks_of_one_instance_collect_a_batch_once(
    make_economy: Build, store: FakeJobStore, runner: FakeBatchRunner, objects: FakeObjectStore
) -> None:
    # functions-framework serves concurrent requests in threads of one instance:
    # each tick must hold leases in its own name, or both would collect.
    store.add(economy_job("job_a", 3), economy_job("job_b", 2))
    economy = make_economy()
    economy.tick()
    runner.set_state(runner.submits[0], "succeeded")
    runner.line_delay_s = 0.05
    start = threading.Barrier(2)
    reports = []

    def tick() -> None:
        start.wait(timeout=10)
        reports.append(economy.tick())

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert runner.result_reads == 1
    assert sorted(r.images_stored for r in reports) == [0, 5]
    assert sorted(r.skipped_held for r in reports) == [0, 1]
    creates = [c for c in objects.calls if c[0] == "create" and c[2].startswith("images/")]
    assert len(creates) == 5


@pytest.mark.parametrize("ending", ["expired", "failed", "cancelled"])
def test_what_an_ended_batch_did_not_make_goes_to_the_live_lane_once(
    make_economy: Build,
    store: FakeJobStore,
    runner: FakeBatchRunner,
    publisher: FakePublisher,
    ending: str,
) -> None:
    store.add(economy_job("job_a", 2), economy_job("job_b", 1))
    make_economy().tick()
    runner.set_state(runner.submits[0], ending, "the batch ran out of time")
    report = make_economy().tick()
    assert report.variants_to_live == 3
    assert sorted(m.job_id for m, _ in publisher.published) == ["job_a", "job_b"]
    job = store.job("job_a")
    assert {job.variant(n).state for n in (1, 2)} == {VariantState.PENDING}
    # They are the live lane's now: no later tick batches them again.
    make_economy().tick()
    assert len(runner.submits) == 1
    assert len(publisher.published) == 2
    # The live lane can claim them.
    _, result = lifecycle.claim(job, 1, "clm_live", T0, _lease(), 3)
    assert result.outcome.value == "claimed"


def test_an_ended_batch_fails_what_it_did_not_make_when_so_configured(
    make_economy: Build, store: FakeJobStore, runner: FakeBatchRunner, publisher: FakePublisher
) -> None:
    store.add(economy_job("job_a", 1))
    make_economy(economy_on_expiry="fail").tick()
    runner.set_state(runner.submits[0], "expired")
    make_economy(economy_on_expiry="fail").tick()
    job = store.job("job_a")
    assert job.state == JobState.FAILED
    assert job.variant(1).error == "the Gemini batch expired"
    assert publisher.published == []


def test_a_batch_gemini_refuses_sends_its_variants_on(
    make_economy: Build, store: FakeJobStore, runner: FakeBatchRunner, publisher: FakePublisher
) -> None:
    store.add(economy_job("job_a", 1))
    runner.submit_error = PermanentError("batch create: Gemini answered 400 INVALID_ARGUMENT")
    make_economy().tick()
    assert [m.job_id for m, _ in publisher.published] == ["job_a"]
    assert store.job("job_a").variant(1).state == VariantState.PENDING


def test_the_live_generate_function_leaves_batched_variants_alone() -> None:
    job = economy_job("job_a", 1)
    claimed, _ = records.batch_claim(job, 1, "ecb_1", T0)
    assert claimed is not None
    updated, result = lifecycle.claim(claimed, 1, "clm_x", T0, _lease(), 3)
    assert (updated, result.outcome.value) == (None, "finished")


def test_economy_rows_say_where_the_job_is() -> None:
    job = economy_job("job_a", 2)
    assert status_words.progress(job).status == "economy: queued for a Gemini batch"
    batched, _ = records.batch_claim(job, 1, "ecb_1", T0)
    assert batched is not None
    batched, _ = records.batch_claim(batched, 2, "ecb_1", T0)
    assert batched is not None
    assert status_words.progress(batched).status == "economy: waiting for the Gemini batch (0/2)"
    running, _ = records.batch_update(batched, "ecb_1", T0, state="running")
    assert running is not None
    assert status_words.progress(running).status == "economy: Gemini batch running (0/2)"
    made, _ = lifecycle.uploaded(running, 1, "a.png", "image/png", T0)
    assert made is not None
    made, _ = lifecycle.uploaded(made, 2, "b.png", "image/png", T0)
    assert made is not None
    assert status_words.progress(made).status == "generating (0/2)"


def test_economy_images_settle_the_budget_at_the_batch_price(
    store: FakeJobStore,
    runner: FakeBatchRunner,
    budget: Any,
    make_economy: Build,
) -> None:
    from shared.services.ports import Usage

    day = T0.strftime("%Y-%m-%d")
    budget.used[("alice", day)] = Usage(1, Decimal("0.0340"))
    store.add(economy_job("job_a", 1, price_per_image="0.0340", budget_day=day))
    make_economy().tick()
    runner.set_state(runner.submits[0], "succeeded")
    make_economy().tick()
    assert store.job("job_a").variant(1).cost_usd == "0.0335"
    assert budget.used[("alice", day)] == Usage(1, Decimal("0.0335"))


# --------------------------------------------------------------------------- cancel


def test_a_cancel_stops_unsubmitted_economy_variants_and_keeps_what_the_batch_makes(
    make_economy: Build,
    store: FakeJobStore,
    runner: FakeBatchRunner,
    ledger: JobLedger,
    budget: Any,
    sheet_writer: FakeSheetWriter,
) -> None:
    from shared.domain.cancellation import CancelOutcome
    from shared.services.ports import Usage

    day = T0.strftime("%Y-%m-%d")
    budget.used[("alice", day)] = Usage(3, Decimal("0.1005"))
    store.add(economy_job("job_a", 2, budget_day=day), economy_job("job_b", 1, budget_day=day))
    # Cancelled before a tick: its variant never goes into a Gemini batch.
    stopped = ledger.apply("job_b", lambda j: cancellation.cancel(j, "alice", T0)).value
    assert (stopped.outcome, stopped.stopped) == (CancelOutcome.CANCELLED, 1)
    economy = make_economy()
    economy.tick()
    (name,) = runner.submits
    assert [line.key for line in runner.batches[name].lines] == ["job_a/1", "job_a/2"]
    # Cancelled while its batch runs: its variants are running ones and stay batched.
    running = ledger.apply("job_a", lambda j: cancellation.cancel(j, "alice", T0)).value
    assert (running.outcome, running.stopped, running.running) == (CancelOutcome.CANCELLING, 0, 2)
    assert {store.job("job_a").variant(n).state for n in (1, 2)} == {VariantState.BATCHED}
    assert sheet_writer.row("sc-job_a")["status_img"] == Text("cancelling (0/2)")
    # The batch makes one and gives the other back unmade: kept, and cancelled.
    runner.batches[name].results["job_a/2"] = LineResult("job_a/2", error="no image")
    runner.set_state(name, "succeeded")
    economy.tick()
    job = store.job("job_a")
    assert job.variant(1).state == VariantState.UPLOADED and job.variant(1).cost_usd == "0.0335"
    assert job.variant(2).state == VariantState.CANCELLED
    finished, _ = lifecycle.thumbnail_done(job, 1, "a", "t", T0)
    assert finished is not None and finished.state == JobState.CANCELLED
    # Both unmade images gave their estimate back, the made one cost what it cost.
    assert budget.used[("alice", day)] == Usage(1, Decimal("0.0335"))


@pytest.mark.parametrize("on_expiry", ["live", "fail"])
def test_a_cancelled_jobs_variants_an_ended_batch_did_not_make_are_cancelled_not_sent_on(
    make_economy: Build,
    store: FakeJobStore,
    runner: FakeBatchRunner,
    publisher: FakePublisher,
    ledger: JobLedger,
    budget: Any,
    on_expiry: str,
) -> None:
    from shared.services.ports import Usage

    day = T0.strftime("%Y-%m-%d")
    budget.used[("alice", day)] = Usage(2, Decimal("0.0670"))
    store.add(economy_job("job_a", 2, budget_day=day))
    make_economy(economy_on_expiry=on_expiry).tick()
    ledger.apply("job_a", lambda j: cancellation.cancel(j, "alice", T0))
    runner.set_state(runner.submits[0], "expired")
    report = make_economy(economy_on_expiry=on_expiry).tick()
    job = store.job("job_a")
    assert job.state == JobState.CANCELLED
    assert {job.variant(n).state for n in (1, 2)} == {VariantState.CANCELLED}
    assert publisher.published == [] and report.variants_to_live == 0
    assert budget.used[("alice", day)] == Usage(0, Decimal(0))


def _lease() -> Any:
    from datetime import timedelta

    return timedelta(seconds=300)


# --------------------------------------------------------------------------- interleavings


class CancelWhileReading(FakeReferenceLoader):
    """A cancel lands while the tick reads the references of its request lines."""

    def __init__(self, cancel: Callable[[], None]) -> None:
        super().__init__()
        self.cancel = cancel
        self.done = False

    def load(self, url: str) -> list[ReferenceImage]:
        if not self.done:
            self.done = True
            self.cancel()
        return [REF]


def test_a_cancel_reaches_variants_claimed_into_our_record_but_not_yet_sent(
    ledger: JobLedger,
    store: FakeJobStore,
    economy_batches: FakeEconomyBatches,
    runner: FakeBatchRunner,
    objects: FakeObjectStore,
    publisher: FakePublisher,
    budget: FakeBudgetLedger,
    clock: FakeClock,
) -> None:
    """Scenario 5: a submit that failed, then a cancel, then the resumed submit."""
    store.add(
        economy_job("job_a", 2, budget_day=DAY, ref_pack_public_url="https://x.test/a.png"),
        economy_job("job_b", 1, budget_day=DAY, ref_pack_public_url="https://x.test/b.png"),
    )
    budget.reserve("alice", DAY, "batch:bat_1", 3, Decimal("0.1005"), 100, Decimal(100))
    loader = CancelWhileReading(lambda: None)

    def economy() -> Economy:
        return Economy(
            settings=make_settings(),
            ledger=ledger,
            store=store,
            batches=economy_batches,
            runner=runner,
            references=loader,
            objects=objects,
            publisher=publisher,
            probe=image_mime,
            clock=clock,
            monotonic=clock.monotonic,
        )

    runner.submit_error = TransientError("Gemini 503")
    economy().tick()  # claimed into our record; the submit failed
    assert {store.job("job_a").variant(n).state for n in (1, 2)} == {VariantState.BATCHED}
    ledger.apply("job_a", lambda j: cancellation.cancel(j, "alice", clock()))
    runner.submit_error = None
    clock.advance(make_settings().economy_lease_s + 1)
    economy().tick()  # resumes the record
    (batch,) = runner.batches.values()
    assert [line.key for line in batch.lines] == ["job_b/1"]  # nothing of the cancelled job
    job_a = store.job("job_a")
    assert {job_a.variant(n).state for n in (1, 2)} == {VariantState.CANCELLED}
    assert job_a.state == JobState.CANCELLED
    assert budget.used[("alice", DAY)].images == 1  # only job_b's image stays reserved


def test_a_tick_that_lost_its_record_while_submitting_cancels_its_orphan_batch(
    make_economy: Build,
    store: FakeJobStore,
    economy_batches: FakeEconomyBatches,
    runner: FakeBatchRunner,
    clock: FakeClock,
) -> None:
    """Scenario 6: a tick stalls past its lease mid-submit; the next resumes the record."""
    store.add(economy_job("job_a", 2))
    # The stalled tick: it holds the record, then stalls before its submit.
    first = make_economy()
    record_ids: list[str] = []
    original = runner.submit

    def slow_submit(model: str, display_name: str, lines: Any) -> tuple[str, bool]:
        if not record_ids:
            record_ids.append(display_name)
            clock.advance(make_settings().economy_lease_s + 1)
            # The next tick finds the record's lease run out, resumes it, submits first.
            make_economy().tick()
        return original(model, display_name, lines)

    runner.submit = slow_submit  # type: ignore[method-assign]
    first.tick()
    runner.submit = original  # type: ignore[method-assign]
    # Two Gemini batches were made, but only one is the record's; the other is cancelled.
    assert len(runner.batches) == 2
    (record,) = economy_batches.records.values()
    assert record.gemini_name is not None
    (orphan,) = [name for name in runner.batches if name != record.gemini_name]
    assert runner.cancels == [orphan]
    job = store.job("job_a")
    assert [r.name for r in job.gemini_batches] == [record.gemini_name]


def test_an_economy_image_waiting_for_an_anchor_that_never_ends_fails_at_the_age_limit(
    make_economy: Build,
    store: FakeJobStore,
    runner: FakeBatchRunner,
    clock: FakeClock,
) -> None:
    """Scenario 7."""
    stuck = make_job(job_id="job_src", scene_id="src", variant_count=1)
    stuck.variant(1).state = VariantState.GENERATING  # its holder died; it never ends here
    store.add(stuck, economy_job("job_a", 1, style_refs=["scene:src#1"]))
    make_economy().tick()
    assert store.job("job_a").variant(1).state == VariantState.PENDING  # a wait
    clock.advance(make_settings().max_event_age_s + 1)
    make_economy().tick()
    job = store.job("job_a")
    assert job.variant(1).state == VariantState.FAILED
    assert "over the 43200 s limit" in (job.variant(1).error or "")
    assert "not made yet" in (job.variant(1).error or "")
    assert runner.batches == {}
