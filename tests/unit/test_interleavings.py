"""Crashes and stalls between two writes that no scenario chose before: a holder that
outlives its lease, a cancelled job whose holder died, an upload that fails under a
claim, a takeover while the quota gate is closed (issue: "never pay twice under any
interleaving", scenarios 2, 3 and 8). Each test failed on the code before it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from shared.adapters.image_check import image_mime
from shared.contracts.messages import JobMessage
from shared.domain import cancellation, lifecycle
from shared.domain.errors import TransientError
from shared.domain.job import JobState, VariantState
from shared.domain.quota import Limit
from shared.services.generation import Generation
from shared.services.ledger import JobLedger
from shared.services.ports import GeneratedImage
from shared.services.sheet_sync import SheetSync
from tests.fakes import (
    IMAGES_BUCKET,
    T0,
    FakeBudgetLedger,
    FakeClock,
    FakeImageGenerator,
    FakeJobStore,
    FakeObjectStore,
    FakeQuotaGate,
    FakeReferenceLoader,
    ManualHeartbeat,
    make_job,
    make_settings,
    png_bytes,
)

MESSAGE = JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001")
DAY = T0.strftime("%Y-%m-%d")
LEASE_S = 60.0
PRICE = Decimal("0.0336")


@pytest.fixture
def build(
    store: FakeJobStore,
    objects: FakeObjectStore,
    references: FakeReferenceLoader,
    sheet_sync: SheetSync,
    budget: FakeBudgetLedger,
    clock: FakeClock,
) -> Callable[..., Generation]:
    def make(
        generator: FakeImageGenerator,
        quota: FakeQuotaGate | None = None,
        heartbeat: ManualHeartbeat | None = None,
        **settings: Any,
    ) -> Generation:
        return Generation(
            settings=make_settings(claim_lease_s=LEASE_S, claim_wait_s=0, **settings),
            ledger=JobLedger(store, sheet_sync, budget),
            objects=objects,
            generator=generator,
            references=references,
            quota=quota or FakeQuotaGate(),
            probe=image_mime,
            clock=clock,
            sleep=clock.sleep,
            monotonic=clock.monotonic,
            heartbeat=heartbeat or ManualHeartbeat(),
        )

    return make


def reserved_job(**fields: Any) -> Any:
    return make_job(variant_count=1, budget_day=DAY, price_per_image=str(PRICE), **fields)


class Stalling(FakeImageGenerator):
    """A Gemini call during which its holder stalls (no heartbeat) past its lease, and
    ``meanwhile`` runs (another delivery)."""

    def __init__(self, clock: FakeClock, meanwhile: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock, self.meanwhile, self.stalled = clock, meanwhile, False

    def generate(self, *args: Any, **kwargs: Any) -> GeneratedImage:
        if not self.stalled:
            self.stalled = True
            self.clock.advance(LEASE_S + 1)
            self.meanwhile()
        return super().generate(*args, **kwargs)


def test_a_stalled_holder_whose_variant_was_given_up_on_is_kept_and_charged_once(
    build: Callable[..., Generation],
    store: FakeJobStore,
    objects: FakeObjectStore,
    budget: FakeBudgetLedger,
    clock: FakeClock,
) -> None:
    """Scenario 2 with a failure budget of 1: the takeover ends the variant; the stalled
    holder's image lands after all."""
    store.add(reserved_job())
    budget.reserve("alice", DAY, "batch:bat_1", 1, PRICE, 100, Decimal(100))
    other = FakeImageGenerator()
    stalled = Stalling(clock, lambda: build(other, gemini_failure_budget=1).handle(MESSAGE))
    build(stalled, gemini_failure_budget=1).handle(MESSAGE)
    assert other.calls == []  # the takeover paid for nothing: it had no budget left
    v = store.job("job_1").variant(1)
    # The image exists and was paid: kept, never "failed and free".
    assert v.state == VariantState.UPLOADED and v.object_name is not None
    assert len([n for n in objects.names(IMAGES_BUCKET) if n.startswith("images/")]) == 1
    used = budget.used[("alice", DAY)]
    assert (used.images, used.cost) == (1, Decimal(v.cost_usd or "x"))


def test_a_stalled_holder_overtaken_by_a_live_one_records_the_stored_image_once(
    build: Callable[..., Generation],
    store: FakeJobStore,
    objects: FakeObjectStore,
    budget: FakeBudgetLedger,
    clock: FakeClock,
) -> None:
    """Scenario 2 with budget left: two calls (one per stalled holder, as allowed), one
    image, the cost of the image that was stored, charged once."""
    store.add(reserved_job())
    budget.reserve("alice", DAY, "batch:bat_1", 1, PRICE, 100, Decimal(100))
    taker = FakeImageGenerator(
        GeneratedImage(png_bytes(color=(1, 1, 1)), "image/png", {"output_tokens": 1120})
    )
    stalled = Stalling(clock, lambda: build(taker).handle(MESSAGE))
    build(stalled).handle(MESSAGE)
    assert (stalled.count(), taker.count()) == (1, 1)
    (image,) = [objects.objects[(IMAGES_BUCKET, n)] for n in objects.names(IMAGES_BUCKET)]
    v = store.job("job_1").variant(1)
    assert v.state == VariantState.UPLOADED and v.failures == 1
    assert v.cost_usd == image.metadata["cost_usd"]  # the stored image's, not the loser's
    assert budget.used[("alice", DAY)].cost == Decimal(v.cost_usd or "x")


@pytest.mark.parametrize("stored", [False, True])
def test_a_cancelled_job_whose_holder_died_ends_at_its_next_delivery(
    build: Callable[..., Generation],
    store: FakeJobStore,
    objects: FakeObjectStore,
    budget: FakeBudgetLedger,
    clock: FakeClock,
    stored: bool,
) -> None:
    """Scenario 3: the holder died mid-call; the job was cancelled meanwhile."""
    job, _ = lifecycle.claim(reserved_job(), 1, "clm_dead", T0, timedelta(seconds=LEASE_S), 3)
    assert job is not None
    job, _ = cancellation.cancel(job, "alice", T0)
    assert job is not None
    store.add(job)
    budget.reserve("alice", DAY, "batch:bat_1", 1, PRICE, 100, Decimal(100))
    if stored:  # it died after its upload, before recording it
        name = "images/sc-001/job_1/var_1.png"
        meta = {"job_id": "job_1", "variant": "1", "model": "m", "cost_usd": "0.0400"}
        objects.put(IMAGES_BUCKET, name, png_bytes(), metadata=meta)
    generator = FakeImageGenerator()
    with pytest.raises(TransientError, match="held by another delivery"):
        build(generator).handle(MESSAGE)  # the lease still runs: it may be alive
    clock.advance(LEASE_S + 1)
    build(generator).handle(MESSAGE)
    assert generator.calls == []
    v = store.job("job_1").variant(1)
    if stored:
        assert v.state == VariantState.UPLOADED  # kept (its thumbnail ends the job)
        assert budget.used[("alice", DAY)].cost == Decimal("0.0400")
    else:
        assert v.state == VariantState.CANCELLED
        assert store.job("job_1").state == JobState.CANCELLED
        assert budget.used[("alice", DAY)].images == 0


class FailingUploads(FakeObjectStore):
    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def create(self, *args: Any, **kwargs: Any) -> bool:
        if self.failures:
            self.failures -= 1
            raise TransientError("storage 503")
        return super().create(*args, **kwargs)


def test_an_upload_that_fails_under_a_claim_gives_the_claim_back(
    store: FakeJobStore,
    references: FakeReferenceLoader,
    sheet_sync: SheetSync,
    clock: FakeClock,
) -> None:
    """Scenario 3, second part: an exception out of an attempt left the claim held, so
    the next delivery waited out the lease and counted a dead holder."""
    store.add(reserved_job())
    generation = Generation(
        settings=make_settings(claim_lease_s=LEASE_S, claim_wait_s=0),
        ledger=JobLedger(store, sheet_sync),
        objects=FailingUploads(),
        generator=FakeImageGenerator(),
        references=references,
        quota=FakeQuotaGate(),
        probe=image_mime,
        clock=clock,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        heartbeat=ManualHeartbeat(),
    )
    with pytest.raises(TransientError, match="storage 503"):
        generation.handle(MESSAGE)
    v = store.job("job_1").variant(1)
    assert (v.state, v.claim_id, v.failures) == (VariantState.PENDING, None, 1)
    generation.handle(MESSAGE)  # at once: no lease to wait out
    assert store.job("job_1").variant(1).state == VariantState.UPLOADED


def test_a_takeover_waits_for_the_fleets_quota_gate(
    build: Callable[..., Generation], store: FakeJobStore, clock: FakeClock
) -> None:
    """Scenario 8: a redelivery that took over a dead holder's claim called Gemini
    while the gate was closed."""
    job, _ = lifecycle.claim(reserved_job(), 1, "clm_dead", T0, timedelta(seconds=LEASE_S), 3)
    assert job is not None
    store.add(job)
    clock.advance(LEASE_S + 1)
    gate = FakeQuotaGate()
    gate.close("gemini-3.1-flash-image", clock() + timedelta(minutes=30), Limit.MINUTE)
    generator = FakeImageGenerator()
    with pytest.raises(TransientError, match="waiting for the Gemini quota"):
        build(generator, quota=gate).handle(MESSAGE)
    assert generator.calls == []
    v = store.job("job_1").variant(1)
    # Handed back before claiming anything: the dead holder's variant is taken over
    # once the gate lets a call through, and only then.
    assert (v.claim_id, v.failures) == ("clm_dead", 0)
    clock.advance(31 * 60)
    build(generator, quota=gate).handle(MESSAGE)
    assert len(generator.calls) == 1
    v = store.job("job_1").variant(1)
    assert (v.state, v.failures) == (VariantState.UPLOADED, 1)  # the dead holder, once


def test_a_job_ends_once_even_when_a_late_image_lands_and_is_then_cancelled(
    store: FakeJobStore, sheet_sync: SheetSync, clock: FakeClock
) -> None:
    """Found by the simulation (seed 36): the job failed (its message dead-lettered),
    the stalled holder's image landed after all, a cancel came before its thumbnail;
    the cancel reopened the job, and the thumbnail ended it a second time."""
    store.add(make_job(variant_count=1, budget_day=DAY))
    ledger = JobLedger(store, sheet_sync, clock=clock)
    finished = []

    def apply(transition: Callable[[Any], Any]) -> None:
        finished.append(ledger.apply("job_1", transition).finished)

    apply(lambda j: lifecycle.fail_job(j, "gave up after 5 deliveries", T0))
    name = "images/sc-001/job_1/var_1.png"
    apply(lambda j: lifecycle.uploaded(j, 1, name, "image/png", T0))
    apply(lambda j: cancellation.cancel(j, "alice", T0))
    assert store.job("job_1").state == JobState.FAILED  # ended, and stays ended
    apply(lambda j: lifecycle.thumbnail_done(j, 1, name, "thumbnails/x.jpg", T0))
    assert finished == [True, False, False, False]
    job = store.job("job_1")
    assert (job.state, job.slot(1).state) == (JobState.COMPLETED, VariantState.DONE)


def test_a_claim_that_ran_out_before_the_call_is_renewed_and_never_paid_twice(
    build: Callable[..., Generation],
    store: FakeJobStore,
    objects: FakeObjectStore,
    clock: FakeClock,
) -> None:
    """Found by the simulation (seed 2545): the claim's write answered after the lease
    had run out, and the heartbeat's first beat was still a third of a lease away when
    the call started; a redelivery took the variant over during the call and paid
    for the same image again."""
    store.add(reserved_job())
    taker = FakeImageGenerator()
    write = store.update_job

    def slow_claim_write(job_id: str, change: Any, fence: Any = None) -> Any:
        result = write(job_id, change, fence)
        claimed = getattr(result, "value", None)
        if isinstance(claimed, lifecycle.ClaimResult) and claimed.outcome.value == "claimed":
            store.update_job = write  # type: ignore[method-assign]
            clock.advance(LEASE_S + 1)  # the answer comes after the lease ran out
        return result

    class DuringTheCall(FakeImageGenerator):
        def generate(self, *args: Any, **kwargs: Any) -> GeneratedImage:
            with pytest.raises(TransientError, match="held by another delivery"):
                build(taker).handle(MESSAGE)  # a redelivery, while our call runs
            return super().generate(*args, **kwargs)

    ours = DuringTheCall()
    store.update_job = slow_claim_write  # type: ignore[method-assign]
    build(ours).handle(MESSAGE)
    assert (ours.count(), taker.count()) == (1, 0)  # renewed before the call: never taken
    assert store.job("job_1").variant(1).state == VariantState.UPLOADED
    assert len([n for n in objects.names(IMAGES_BUCKET) if n.startswith("images/")]) == 1
