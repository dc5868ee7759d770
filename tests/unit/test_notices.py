"""Batch news: one message per batch and event, under redelivery, races and crashes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import NamedTuple

import pytest

from shared.domain import batch_news, lifecycle
from shared.domain.errors import PermanentError, TransientError
from shared.domain.job import Job, JobState, VariantState, WaitReason
from shared.services.ledger import JobLedger
from shared.services.notices import Notices, news_told
from shared.services.sheet_sync import _followed_up
from tests.fakes import (
    T0,
    FakeClock,
    FakeJobStore,
    FakeNoticeLog,
    FakeTeamChannel,
    make_batch,
    make_job,
)

JOBS = 3
Transition = Callable[[Job], tuple[Job | None, None]]


class World(NamedTuple):
    store: FakeJobStore
    log: FakeNoticeLog
    channel: FakeTeamChannel
    clock: FakeClock
    ledger: JobLedger


@pytest.fixture
def world() -> World:
    store = FakeJobStore()
    jobs = [make_job(job_id=f"job_{i}", scene_id=f"sc-{i}") for i in range(1, JOBS + 1)]
    store.create_batch(make_batch(*jobs), jobs)
    notices, channel, clock = FakeNoticeLog(), FakeTeamChannel(), FakeClock()
    told = Notices(store, notices, channel, failure_share=0.2, clock=clock)
    return World(store, notices, channel, clock, JobLedger(store, clock=clock, notices=told))


def ended(state: JobState) -> Transition:
    def end(job: Job) -> tuple[Job | None, None]:
        for variant in job.variants.values():
            done = state == JobState.COMPLETED
            variant.state = VariantState.DONE if done else VariantState.FAILED
            if done:
                variant.object_name = f"images/{job.job_id}/{variant.n}.png"
                variant.cost_usd = "0.0500"
        job.state = state
        job.finished_at = T0
        return job, None

    return end


def waiting(reason: WaitReason) -> Transition:
    def wait(job: Job) -> tuple[Job | None, None]:
        return lifecycle.wait(job, reason, T0 + timedelta(hours=3), T0)

    return wait


def test_one_message_when_the_last_job_ends_with_counts_cost_and_sheet(world: World) -> None:
    store, _, channel, _, ledger = world
    ledger.apply("job_1", ended(JobState.COMPLETED))
    ledger.apply("job_2", ended(JobState.COMPLETED))
    assert channel.posts == []  # two of three ended: nothing to tell
    ledger.apply("job_3", ended(JobState.COMPLETED))
    assert len(channel.posts) == 1
    text, request_id, thread = channel.posts[0]
    assert text.startswith("Batch bat_1 is done")
    assert "Scenes: 3 of 3 ended, 0 with failures" in text
    assert "Images: 6 made, 0 failed" in text
    assert "Cost so far: $0.3000" in text
    assert "https://docs.google.com/spreadsheets/d/sheet123/edit" in text
    assert thread == "bat_1" and request_id.startswith("news-")
    # Each job's mark is cleared once told: nothing is left for the sweeper.
    assert all(store.job(f"job_{i}").news_due is None for i in range(1, JOBS + 1))
    assert store.job("job_3").news_told == "ended:completed"


def test_a_job_that_ends_while_others_run_reads_one_count_not_the_batch(world: World) -> None:
    store, _, _, _, ledger = world
    store.calls.clear()
    ledger.apply("job_1", ended(JobState.COMPLETED))
    reads = [name for name, _ in store.calls]
    assert "open_jobs" in reads and "get_jobs" not in reads


def test_redelivered_and_repeated_news_is_not_sent_twice(world: World) -> None:
    store, log, channel, clock, ledger = world
    for i in range(1, JOBS + 1):
        ledger.apply(f"job_{i}", ended(JobState.COMPLETED))
    # A redelivery, the sweeper's follow-up, and a second Notices all find it told.
    for i in range(1, JOBS + 1):
        ledger.follow_up(f"job_{i}")
    again = Notices(store, log, channel, failure_share=0.2, clock=clock)
    assert again.tell(store.job("job_3")) is True
    assert len(channel.posts) == 1


def test_failures_above_the_share_are_told_once_while_others_run(world: World) -> None:
    _, _, channel, _, ledger = world
    ledger.apply("job_1", ended(JobState.FAILED))  # 1 of 3 > 20 %
    assert [p[0].splitlines()[0] for p in channel.posts] == [
        "Batch bat_1 needs attention: 1 scenes failed so far"
    ]
    ledger.apply("job_2", ended(JobState.FAILED))
    assert len(channel.posts) == 1  # the failures event is told once
    ledger.apply("job_3", ended(JobState.COMPLETED))
    assert len(channel.posts) == 2
    assert channel.posts[1][0].startswith("Batch bat_1 ended with failures")
    assert "Scenes: 3 of 3 ended, 2 with failures" in channel.posts[1][0]


def test_failures_under_the_share_are_not_told_before_the_end(world: World) -> None:
    store, log, channel, clock, _ = world
    ledger = JobLedger(
        store, clock=clock, notices=Notices(store, log, channel, failure_share=0.5, clock=clock)
    )
    ledger.apply("job_1", ended(JobState.PARTIAL))  # 1 of 3, not above half
    assert channel.posts == []


def test_a_pause_for_the_daily_quota_or_spending_cap_is_told_once(world: World) -> None:
    _, _, channel, _, ledger = world
    ledger.apply("job_1", waiting("quota"))  # a minute's quota: routine pacing
    assert channel.posts == []
    ledger.apply("job_1", waiting("daily_quota"))
    ledger.apply("job_2", waiting("daily_quota"))
    ledger.apply("job_3", waiting("spend_cap"))
    heads = [p[0].splitlines()[0] for p in channel.posts]
    assert heads == [
        "Batch bat_1 is paused: Gemini's daily quota is used up (it resumes after midnight "
        "Pacific)",
        "Batch bat_1 is paused: the project's spending cap is reached (raise it in AI Studio, "
        "or it resumes when the cap allows)",
    ]


def test_a_transient_failure_keeps_the_mark_and_the_sweeper_sends_it(world: World) -> None:
    store, _, channel, clock, ledger = world
    channel.fail = TransientError("Chat answered 503")
    for i in range(1, JOBS + 1):
        ledger.apply(f"job_{i}", ended(JobState.COMPLETED))
    assert store.job("job_3").news_due == "ended:completed"
    assert not _followed_up(store.job("job_3"))  # the job stays for the sweeper
    channel.fail = None
    clock.advance(120)  # the failed holder's claim ran out
    ledger.follow_up("job_3")
    assert len(channel.messages) == 1
    assert store.job("job_3").news_due is None


def test_a_refused_webhook_is_recorded_and_not_retried(world: World) -> None:
    store, log, channel, clock, ledger = world
    channel.fail = PermanentError("Chat answered 404 NOT_FOUND")
    for i in range(1, JOBS + 1):
        ledger.apply(f"job_{i}", ended(JobState.COMPLETED))
    assert store.job("job_3").news_due is None  # nothing more to do
    assert log.records["bat_1:ended"].error == "Chat answered 404 NOT_FOUND"
    channel.fail = None
    clock.advance(3600)
    ledger.follow_up("job_3")
    assert len(channel.posts) == 1


def test_a_live_claim_of_another_holder_is_left_to_it(world: World) -> None:
    store, log, channel, clock, ledger = world
    assert log.claim("bat_1:ended", "another", clock(), timedelta(seconds=60))
    for i in range(1, JOBS + 1):
        ledger.apply(f"job_{i}", ended(JobState.COMPLETED))
    assert channel.posts == []
    assert store.job("job_3").news_due == "ended:completed"  # tried again later


def test_a_holder_that_died_after_posting_is_taken_over_with_the_same_request_id(
    world: World,
) -> None:
    store, log, channel, clock, ledger = world
    for i in range(1, JOBS):
        ledger.apply(f"job_{i}", ended(JobState.COMPLETED))
    # A holder claims the event and posts, then dies before recording it.
    job = store.job("job_1")
    event = batch_news.batch_events(
        [*store.get_jobs(["job_1", "job_2"]), _ended_copy(store.job("job_3"))], 0.2
    )[0]
    assert log.claim(event.key, "dead", clock(), timedelta(seconds=60))
    ledger.apply("job_3", ended(JobState.COMPLETED))
    assert channel.posts == []  # its claim is live
    clock.advance(61)
    ledger.follow_up("job_3")
    ledger.follow_up("job_3")
    assert len(channel.posts) == 1 and len(channel.messages) == 1
    assert job.batch_id == "bat_1"


def _ended_copy(job: Job) -> Job:
    copy = job.model_copy(deep=True)
    copy.state = JobState.COMPLETED
    return copy


def test_no_notifier_no_mark(world: World) -> None:
    store, _, _, clock, _ = world
    ledger = JobLedger(store, clock=clock)
    ledger.apply("job_1", ended(JobState.COMPLETED))
    assert store.job("job_1").news_due is None


def test_news_told_keeps_a_newer_mark() -> None:
    job = make_job()
    job.news_due = "ended:completed"
    assert news_told(job, "waiting:daily_quota") == (None, None)
    updated, _ = news_told(job, "ended:completed")
    assert updated is not None
    assert (updated.news_due, updated.news_told) == (None, "ended:completed")


def test_notice_records_take_over_only_a_lapsed_claim() -> None:
    lease = timedelta(seconds=60)
    first = batch_news.take_notice(None, "k", "a", T0, lease)
    assert first is not None and first.holder == "a" and first.attempts == 1
    assert batch_news.take_notice(first, "k", "b", T0 + timedelta(seconds=59), lease) is None
    taken = batch_news.take_notice(first, "k", "b", T0 + timedelta(seconds=61), lease)
    assert taken is not None and taken.holder == "b" and taken.attempts == 2
    # The first holder can no longer mark it; the new one can, and then nobody claims.
    assert batch_news.finish_notice(taken, "a", T0, None) is None
    done = batch_news.finish_notice(taken, "b", T0, None)
    assert done is not None and done.sent_at == T0
    assert batch_news.take_notice(done, "k", "c", T0 + timedelta(days=1), lease) is None
