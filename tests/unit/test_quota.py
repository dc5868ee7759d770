"""The fleet's pace and gate of Gemini calls (shared/domain/quota.py), and how
generation uses them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from shared.contracts.messages import JobMessage
from shared.contracts.sheet_row import Text
from shared.domain import quota
from shared.domain.errors import QuotaExceeded, TransientError
from shared.domain.job import JobState, VariantState
from shared.domain.quota import GateState, Limit, Slot
from shared.services.generation import SLOT_HOLD_S, Generation
from tests.fakes import (
    T0,
    FakeClock,
    FakeImageGenerator,
    FakeJobStore,
    FakeQuotaGate,
    FakeSheetWriter,
    make_job,
)

MESSAGE = JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001")
PROMPT = "a red fox in the snow"
MODEL = "gemini-3.1-flash-image"
S = timedelta(seconds=1)
Build = Callable[..., Generation]


# --------------------------------------------------------------------------- pure


def test_without_pace_an_open_gate_gives_a_slot_now_and_writes_nothing() -> None:
    assert quota.reserve(GateState(), T0, timedelta(0), 10 * S) == (None, Slot(at=T0))


def test_the_pace_hands_out_one_slot_per_interval_in_order() -> None:
    state, slots = GateState(), []
    for _ in range(4):
        updated, slot = quota.reserve(state, T0, 3 * S, 60 * S)
        assert updated is not None
        state, slots = updated, [*slots, slot.at]
    assert slots == [T0, T0 + 3 * S, T0 + 6 * S, T0 + 9 * S]
    # After a quiet spell the pace does not bank slots: a burst is not allowed.
    later, slot = quota.reserve(state, T0 + 100 * S, 3 * S, 60 * S)
    assert slot.at == T0 + 100 * S
    assert later is not None and later.next_slot == T0 + 103 * S


def test_a_slot_beyond_the_wait_allowed_is_not_taken() -> None:
    state = GateState(next_slot=T0 + 30 * S)
    assert quota.reserve(state, T0, 3 * S, 10 * S) == (
        None,
        Slot(at=None, reopens=T0 + 30 * S, closed_for=None),
    )


def test_a_closed_gate_holds_every_caller_until_it_reopens() -> None:
    state, _ = quota.close(GateState(), T0 + 20 * S, Limit.MINUTE)
    assert quota.reserve(state or GateState(), T0, timedelta(0), 5 * S)[1] == Slot(
        at=None, reopens=T0 + 20 * S, closed_for=Limit.MINUTE
    )
    _, slot = quota.reserve(state or GateState(), T0, timedelta(0), 30 * S)
    assert slot == Slot(at=T0 + 20 * S, closed_for=Limit.MINUTE)
    # Once it reopened, no trace of the closing.
    assert quota.reserve(state or GateState(), T0 + 21 * S, timedelta(0), 0 * S)[1] == Slot(
        at=T0 + 21 * S
    )


def test_a_later_closing_wins_and_an_earlier_one_changes_nothing() -> None:
    state, _ = quota.close(GateState(), T0 + 20 * S, Limit.MINUTE)
    assert state is not None
    assert quota.close(state, T0 + 10 * S, Limit.MINUTE) == (None, None)
    later, _ = quota.close(state, T0 + 3600 * S, Limit.DAY)
    assert later is not None and (later.closed_until, later.closed_for) == (
        T0 + 3600 * S,
        Limit.DAY,
    )


@pytest.mark.parametrize(
    ("now", "reset"),
    [
        # 10:00 UTC in winter is 02:00 PST: the reset is 08:00 UTC the next day.
        (datetime(2026, 12, 1, 10, 0, tzinfo=UTC), datetime(2026, 12, 2, 8, 0, tzinfo=UTC)),
        # 07:59 UTC is still the previous Pacific day: reset at 08:00 UTC.
        (datetime(2026, 12, 1, 7, 59, tzinfo=UTC), datetime(2026, 12, 1, 8, 0, tzinfo=UTC)),
        # Summer time: midnight PDT is 07:00 UTC.
        (datetime(2026, 7, 1, 12, 0, tzinfo=UTC), datetime(2026, 7, 2, 7, 0, tzinfo=UTC)),
        # The night the clocks go back (2026-11-01): a 25-hour Pacific day.
        (datetime(2026, 11, 1, 7, 30, tzinfo=UTC), datetime(2026, 11, 2, 8, 0, tzinfo=UTC)),
    ],
)
def test_the_daily_quota_resets_at_midnight_pacific(now: datetime, reset: datetime) -> None:
    assert quota.next_quota_day(now) == reset


# --------------------------------------------------------------------------- generation


@pytest.fixture
def paced(quota_gate: FakeQuotaGate) -> FakeQuotaGate:
    quota_gate.interval = 3 * S  # 20 images a minute
    return quota_gate


def test_paced_calls_wait_for_their_slot_in_the_delivery(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    paced: FakeQuotaGate,
    fake_monotonic: FakeClock,
) -> None:
    store.add(make_job(variant_count=3))
    make_generation(generate_concurrency=1).handle(MESSAGE)
    assert generator.count() == 3
    # One slot each, 3 s apart, waited out here (not handed back to Pub/Sub).
    taken = [(now, slot.at) for _, now, _, slot in paced.reserved if slot.at is not None]
    assert [at for _, at in taken] == [T0, T0 + 3 * S, T0 + 6 * S]
    assert sum(fake_monotonic.sleeps) == pytest.approx(6.0)
    # Never taken further ahead than it holds one: an instance that dies while its
    # deliveries wait loses the fleet's pace for seconds, not for every slot it took.
    assert all(at - now <= timedelta(seconds=SLOT_HOLD_S) for now, at in taken)
    assert all(max_wait <= SLOT_HOLD_S for _, _, max_wait, _ in paced.reserved)
    assert store.job("job_1").state == JobState.GENERATING  # all uploaded


def test_a_refusal_closes_the_gate_for_the_fleet_and_is_not_a_failure(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    quota_gate: FakeQuotaGate,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    store.add(make_job(variant_count=1))
    generator.on(PROMPT, 1, QuotaExceeded("Gemini answered 429", 23.0, per_day=False))
    make_generation().handle(MESSAGE)  # waited out in this delivery, then made

    ((model, until, limit),) = quota_gate.closed
    assert (model, limit) == (MODEL, Limit.MINUTE)
    assert T0 + 23 * S <= until <= T0 + 28 * S  # RetryInfo's delay plus a little spread
    v = store.job("job_1").variant(1)
    assert (v.state, v.failures, v.attempts) == (VariantState.UPLOADED, 0, 2)
    assert generator.count() == 2
    refused = [r for r in caplog.records if getattr(r, "event", None) == "quota_refused"]
    assert [r.__dict__["limit"] for r in refused] == ["minute"]


def test_a_gate_closed_longer_than_the_delivery_can_wait_hands_the_message_back(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    quota_gate: FakeQuotaGate,
    sheet_writer: FakeSheetWriter,
) -> None:
    quota_gate.close(MODEL, T0.replace(hour=T0.hour + 1), Limit.MINUTE)
    store.add(make_job(variant_count=2))
    for _ in range(10):  # ten redeliveries of a job that has to wait
        with pytest.raises(TransientError, match="waiting for the Gemini quota"):
            make_generation().handle(MESSAGE)
    assert generator.calls == []
    job = store.job("job_1")
    assert [job.variant(n).failures for n in (1, 2)] == [0, 0]
    assert job.waiting is not None and job.waiting.reason == "quota"
    assert sheet_writer.row("sc-001")["status_img"] == Text(
        "waiting (0/2) for the Gemini quota, resumes about 04:05 UTC"
    )


def test_a_daily_refusal_pauses_until_midnight_pacific_and_says_so(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    quota_gate: FakeQuotaGate,
    sheet_writer: FakeSheetWriter,
    fake_monotonic: FakeClock,
) -> None:
    store.add(make_job(variant_count=1))
    generator.on(PROMPT, 1, QuotaExceeded("Gemini answered 429", 30.0, per_day=True))
    with pytest.raises(TransientError):
        make_generation().handle(MESSAGE)
    ((_, until, limit),) = quota_gate.closed
    assert (until, limit) == (quota.next_quota_day(T0), Limit.DAY)
    assert sheet_writer.row("sc-001")["status_img"] == Text(
        "paused (0/1): daily Gemini quota reached, resumes after midnight Pacific"
    )
    # Redeliveries during the pause call nobody and count nothing.
    fake_monotonic.advance(3600)
    with pytest.raises(TransientError):
        make_generation().handle(MESSAGE)
    assert generator.count() == 1
    # The clock moves past the reset: the next delivery makes the image.
    fake_monotonic.advance((until - T0).total_seconds())
    make_generation().handle(MESSAGE)
    job = store.job("job_1")
    assert (job.variant(1).state, job.variant(1).failures, job.waiting) == (
        VariantState.UPLOADED,
        0,
        None,
    )
    assert generator.count() == 2


def test_repeated_refusals_hand_the_message_back_after_a_few(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
) -> None:
    store.add(make_job(variant_count=1))
    for _ in range(5):
        generator.on(PROMPT, 1, QuotaExceeded("Gemini answered 429", 1.0, per_day=False))
    with pytest.raises(TransientError, match="429"):
        make_generation().handle(MESSAGE)
    assert generator.count() == 3  # MAX_REFUSALS_PER_DELIVERY
    job = store.job("job_1")
    assert (job.variant(1).state, job.variant(1).failures) == (VariantState.PENDING, 0)
    assert job.waiting is not None


def test_real_failures_count_and_the_budget_ends_the_variant(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
) -> None:
    store.add(make_job(variant_count=1))
    for _ in range(3):
        generator.on(PROMPT, 1, TransientError("Gemini timed out (ReadTimeout)"))
    for _ in range(2):
        with pytest.raises(TransientError):
            make_generation(gemini_failure_budget=3).handle(MESSAGE)
    make_generation(gemini_failure_budget=3).handle(MESSAGE)  # acknowledged: it failed
    job = store.job("job_1")
    assert job.state == JobState.FAILED
    assert job.variant(1).error == (
        "gave up after 3 failed attempts; the last: Gemini timed out (ReadTimeout)"
    )


def test_a_spending_cap_pauses_with_its_own_words_and_calls_nobody_until_it_can_pass(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    quota_gate: FakeQuotaGate,
    sheet_writer: FakeSheetWriter,
    fake_monotonic: FakeClock,
) -> None:
    store.add(make_job(variant_count=1))
    cap = QuotaExceeded("Gemini answered 429: spending cap", None, per_day=False, spend_cap=True)
    generator.on(PROMPT, 1, cap)
    with pytest.raises(TransientError):
        make_generation().handle(MESSAGE)
    ((_, until, limit),) = quota_gate.closed
    assert limit == Limit.SPEND
    # Ten minutes (Google's rolling window for spend), a little jitter; not 30 s.
    assert 600 <= (until - T0).total_seconds() <= 605
    status = sheet_writer.row("sc-001")["status_img"].value
    assert status.startswith("paused (0/1): the project's Gemini spending cap was reached")
    assert "raise the cap in AI Studio" in status
    job = store.job("job_1")
    assert job.waiting is not None and job.waiting.reason == "spend_cap"
    assert job.variant(1).failures == 0  # a wait, never a failure
    # Redeliveries within the pause call nobody.
    for _ in range(5):
        fake_monotonic.advance(60)
        with pytest.raises(TransientError):
            make_generation().handle(MESSAGE)
    assert generator.count() == 1
    fake_monotonic.advance((until - T0).total_seconds())
    make_generation().handle(MESSAGE)
    assert store.job("job_1").variant(1).state == VariantState.UPLOADED
    assert generator.count() == 2


def test_a_delivery_waits_for_a_far_slot_unclaimed_and_claims_when_it_is_near(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    paced: FakeQuotaGate,
    fake_monotonic: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An instance that dies while its deliveries wait must leave no claim behind that
    # their redeliveries would wait out, and no far slot the fleet could not use.
    paced.states[MODEL] = GateState(next_slot=T0 + 60 * S)
    store.add(make_job(variant_count=1))
    claimed_while_sleeping: list[str | None] = []
    real_sleep = fake_monotonic.sleep

    def sleep(seconds: float) -> None:
        claimed_while_sleeping.append(store.job("job_1").variant(1).claim_id)
        real_sleep(seconds)

    monkeypatch.setattr(fake_monotonic, "sleep", sleep)
    make_generation().handle(MESSAGE)
    assert generator.count() == 1
    assert claimed_while_sleeping[0] is None  # the long wait: nothing held
    assert sum(fake_monotonic.sleeps) == pytest.approx(60.0)
    assert fake_monotonic.sleeps[0] >= 60.0 - SLOT_HOLD_S  # one look, not a poll loop
    taken = [slot.at for *_, slot in paced.reserved if slot.at is not None]
    assert taken == [T0 + 60 * S]


def test_a_slot_taken_elsewhere_while_claiming_gives_the_claim_back_and_waits_again(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    paced: FakeQuotaGate,
    fake_monotonic: FakeClock,
) -> None:
    store.add(make_job(variant_count=1))
    real_reserve = paced.reserve
    stolen = []

    def reserve(model: str, now: datetime, max_wait_s: float) -> Slot:
        if not stolen:  # another instance takes the near slot first
            stolen.append(real_reserve(model, now, max_wait_s))
        return real_reserve(model, now, max_wait_s)

    paced.reserve = reserve  # type: ignore[method-assign]
    make_generation().handle(MESSAGE)
    assert generator.count() == 1
    variant = store.job("job_1").variant(1)
    assert (variant.state, variant.failures, variant.attempts) == (VariantState.UPLOADED, 0, 2)
