"""Pure state transitions of jobs and variants (shared/domain/lifecycle.py)."""

from __future__ import annotations

import itertools
from datetime import timedelta
from decimal import Decimal

import pytest

from shared.contracts import status_words
from shared.domain import economy_batches, lifecycle
from shared.domain.job import Job, JobState, VariantState
from shared.domain.lifecycle import ClaimResult, Spent, VariantClaim
from tests.fakes import T0, make_job

P, G, U, D, F = (
    VariantState.PENDING,
    VariantState.GENERATING,
    VariantState.UPLOADED,
    VariantState.DONE,
    VariantState.FAILED,
)
LEASE = timedelta(seconds=300)
BUDGET = 3


def job_with(*states: VariantState, started: bool = True) -> Job:
    job = make_job(variant_count=len(states), started_at=T0 if started else None)
    for n, state in enumerate(states, start=1):
        job.variant(n).state = state
        if state == F:
            job.variant(n).error = f"boom {n}"
    job.state = lifecycle.derive_state(job)
    return job


# --------------------------------------------------------------------------- derive_state

# Every combination of two variant states (for a started job).
EXPECTED_TWO: dict[tuple[VariantState, VariantState], JobState] = {}
for _a, _b in itertools.product([P, G, U, D, F], repeat=2):
    if {_a, _b} == {D}:
        EXPECTED_TWO[(_a, _b)] = JobState.COMPLETED
    elif {_a, _b} == {F}:
        EXPECTED_TWO[(_a, _b)] = JobState.FAILED
    elif {_a, _b} == {D, F}:
        EXPECTED_TWO[(_a, _b)] = JobState.PARTIAL
    else:
        EXPECTED_TWO[(_a, _b)] = JobState.GENERATING


@pytest.mark.parametrize(("states", "expected"), sorted(EXPECTED_TWO.items()))
def test_derive_state_started_job_all_pairs(
    states: tuple[VariantState, VariantState], expected: JobState
) -> None:
    assert lifecycle.derive_state(job_with(*states, started=True)) == expected


@pytest.mark.parametrize(("states", "expected"), sorted(EXPECTED_TWO.items()))
def test_derive_state_unstarted_job_all_pairs(
    states: tuple[VariantState, VariantState], expected: JobState
) -> None:
    # Only an unstarted job whose variants are all pending is still queued.
    want = JobState.QUEUED if states == (P, P) else expected
    assert lifecycle.derive_state(job_with(*states, started=False)) == want


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ((D,), JobState.COMPLETED),
        ((F,), JobState.FAILED),
        ((U,), JobState.GENERATING),
        ((D, D, F), JobState.PARTIAL),
        ((D, D, U), JobState.GENERATING),
        ((F, F, F), JobState.FAILED),
    ],
)
def test_derive_state_other_sizes(states: tuple[VariantState, ...], expected: JobState) -> None:
    assert lifecycle.derive_state(job_with(*states)) == expected


def test_start_marks_queued_job_generating_once() -> None:
    job = make_job()
    updated, was_queued = lifecycle.start(job, T0)
    assert was_queued is True
    assert updated is not None
    assert updated.state == JobState.GENERATING
    assert updated.started_at == T0

    again, was_queued = lifecycle.start(updated, T0 + timedelta(seconds=5))
    assert (again, was_queued) == (None, False)


# --------------------------------------------------------------------------- claim


def test_claim_pending_variant() -> None:
    job = make_job()
    updated, result = lifecycle.claim(job, 1, "clm_a", T0, LEASE, BUDGET)
    assert result == ClaimResult(VariantClaim.CLAIMED, T0 + LEASE, attempt=1)
    assert updated is not None
    v = updated.variant(1)
    assert (v.state, v.claim_id, v.claim_expires, v.attempts) == (G, "clm_a", T0 + LEASE, 1)
    assert updated.started_at == T0
    assert updated.state == JobState.GENERATING
    assert updated.variant(2).state == P


def test_claim_held_by_live_claim_of_another_delivery() -> None:
    job, _ = lifecycle.claim(make_job(), 1, "clm_a", T0, LEASE, BUDGET)
    assert job is not None
    later = T0 + LEASE - timedelta(seconds=1)
    updated, result = lifecycle.claim(job, 1, "clm_b", later, LEASE, BUDGET)
    assert updated is None
    assert result == ClaimResult(VariantClaim.HELD, T0 + LEASE)
    assert job.variant(1).claim_id == "clm_a"


@pytest.mark.parametrize("after_expiry", [timedelta(0), timedelta(seconds=1)])
def test_claim_taken_over_once_lease_expired(after_expiry: timedelta) -> None:
    job, _ = lifecycle.claim(make_job(), 1, "clm_a", T0, LEASE, BUDGET)
    assert job is not None
    now = T0 + LEASE + after_expiry
    updated, result = lifecycle.claim(job, 1, "clm_b", now, LEASE, BUDGET)
    assert result == ClaimResult(VariantClaim.CLAIMED, now + LEASE, attempt=2)
    assert updated is not None
    v = updated.variant(1)
    assert (v.claim_id, v.claim_expires, v.attempts) == ("clm_b", now + LEASE, 2)


def test_claim_by_same_delivery_renews() -> None:
    job, _ = lifecycle.claim(make_job(), 1, "clm_a", T0, LEASE, BUDGET)
    assert job is not None
    updated, result = lifecycle.claim(job, 1, "clm_a", T0 + timedelta(seconds=10), LEASE, BUDGET)
    assert result.outcome == VariantClaim.CLAIMED
    assert updated is not None
    # A renewal by the same delivery is the same attempt.
    assert updated.variant(1).attempts == 1
    assert updated.variant(1).claim_expires == T0 + timedelta(seconds=10) + LEASE


@pytest.mark.parametrize("state", [U, D, F])
def test_finished_variants_are_never_reclaimed(state: VariantState) -> None:
    job = job_with(state, P)
    attempts_before = job.variant(1).attempts
    updated, result = lifecycle.claim(job, 1, "clm_x", T0 + timedelta(days=1), LEASE, BUDGET)
    assert (updated, result) == (None, ClaimResult(VariantClaim.FINISHED))
    assert job.variant(1).state == state
    assert job.variant(1).attempts == attempts_before


def test_attempts_count_every_claim_across_deliveries() -> None:
    job = make_job()
    now = T0
    for attempt, claim_id in enumerate(["clm_a", "clm_b", "clm_c"], start=1):
        updated, result = lifecycle.claim(job, 1, claim_id, now, LEASE, BUDGET)
        assert result.outcome == VariantClaim.CLAIMED
        assert result.attempt == attempt
        assert updated is not None
        job = updated
        assert job.variant(1).attempts == attempt
        released, _ = lifecycle.release(job, 1, claim_id, now)
        assert released is not None
        job = released
        now += timedelta(seconds=1)
    assert job.variant(2).attempts == 0


# --------------------------------------------------------------------------- release


def test_release_by_holder_returns_variant_to_pending() -> None:
    job, _ = lifecycle.claim(make_job(), 1, "clm_a", T0, LEASE, BUDGET)
    assert job is not None
    updated, _ = lifecycle.release(job, 1, "clm_a", T0 + timedelta(seconds=3))
    assert updated is not None
    v = updated.variant(1)
    assert (v.state, v.claim_id, v.claim_expires, v.error) == (P, None, None, None)
    # A wait: the attempt is not a failure.
    assert (v.attempts, v.failures) == (1, 0)


def test_release_by_non_holder_changes_nothing() -> None:
    job, _ = lifecycle.claim(make_job(), 1, "clm_a", T0, LEASE, BUDGET)
    assert job is not None
    updated, _ = lifecycle.release(job, 1, "clm_b", T0)
    assert updated is None
    assert job.variant(1).state == G
    assert job.variant(1).claim_id == "clm_a"


@pytest.mark.parametrize("state", [P, U, D, F])
def test_release_of_unclaimed_variant_changes_nothing(state: VariantState) -> None:
    job = job_with(state, P)
    assert lifecycle.release(job, 1, "clm_a", T0) == (None, None)


# --------------------------------------------------------------------------- failures


def test_attempt_failed_counts_and_returns_the_variant_to_pending() -> None:
    job, _ = lifecycle.claim(make_job(), 1, "clm_a", T0, LEASE, BUDGET)
    assert job is not None
    updated, failed = lifecycle.attempt_failed(job, 1, "clm_a", "Gemini answered 503", T0, BUDGET)
    assert (updated is not None, failed) == (True, False)
    assert updated is not None
    v = updated.variant(1)
    assert (v.state, v.failures, v.error, v.claim_id) == (P, 1, "Gemini answered 503", None)


def test_the_variant_fails_when_its_failure_budget_is_used_up() -> None:
    job = make_job(variant_count=1)
    for k in range(1, BUDGET + 1):
        claimed, _ = lifecycle.claim(job, 1, f"clm_{k}", T0, LEASE, BUDGET)
        assert claimed is not None
        updated, failed = lifecycle.attempt_failed(
            claimed, 1, f"clm_{k}", f"timeout {k}", T0, BUDGET
        )
        assert updated is not None
        assert failed is (k == BUDGET)
        job = updated
    v = job.variant(1)
    assert (v.state, v.failures) == (F, BUDGET)
    assert v.error == "gave up after 3 failed attempts; the last: timeout 3"
    assert job.state == JobState.FAILED


def test_attempt_failed_of_a_stale_claim_changes_nothing() -> None:
    job, _ = lifecycle.claim(make_job(), 1, "clm_b", T0, LEASE, BUDGET)
    assert job is not None
    assert lifecycle.attempt_failed(job, 1, "clm_a", "x", T0, BUDGET) == (None, False)


def test_taking_over_an_expired_claim_counts_the_dead_holder_as_a_failure() -> None:
    job, _ = lifecycle.claim(make_job(), 1, "clm_dead", T0, LEASE, BUDGET)
    assert job is not None
    later = T0 + LEASE
    updated, result = lifecycle.claim(job, 1, "clm_next", later, LEASE, BUDGET)
    assert result.outcome == VariantClaim.CLAIMED
    assert updated is not None
    v = updated.variant(1)
    assert (v.failures, v.claim_id, v.attempts) == (1, "clm_next", 2)
    # The new attempt starts clean; the count remembers the dead holder.
    assert v.error is None


def test_a_variant_whose_holders_keep_dying_fails_with_the_reason() -> None:
    job = make_job(variant_count=1)
    now = T0
    for k in range(BUDGET):
        claimed, result = lifecycle.claim(job, 1, f"clm_{k}", now, LEASE, BUDGET)
        assert claimed is not None and result.outcome == VariantClaim.CLAIMED
        job, now = claimed, now + LEASE  # the holder is killed; its lease runs out
    # The last takeover claims it without ending it: the stopped holder may have
    # stored its image, so the new holder looks; it may not pay for another call.
    claimed, result = lifecycle.claim(job, 1, "clm_last", now, LEASE, BUDGET)
    assert result.outcome == VariantClaim.CLAIMED and result.last_chance
    assert claimed is not None and claimed.variant(1).failures == BUDGET
    reason = lifecycle.gave_up(BUDGET, lifecycle.HOLDER_STOPPED)
    final, _ = lifecycle.variant_failed(claimed, 1, reason, now, "clm_last")
    assert final is not None
    assert final.variant(1).state == F
    assert final.variant(1).error == (
        "gave up after 3 failed attempts; the last: the instance stopped during the Gemini call"
    )


def test_waits_never_count_as_failures() -> None:
    job = make_job(variant_count=1)
    for k in range(50):
        claimed, _ = lifecycle.claim(job, 1, f"clm_{k}", T0, LEASE, BUDGET)
        assert claimed is not None
        released, _ = lifecycle.release(claimed, 1, f"clm_{k}", T0)
        assert released is not None
        job = released
    assert (job.variant(1).state, job.variant(1).failures) == (P, 0)


# --------------------------------------------------------------------------- waiting


def test_wait_is_shown_until_a_variant_is_claimed() -> None:
    job = make_job(variant_count=2, started_at=T0, state=JobState.GENERATING)
    until = T0.replace(hour=14, minute=4, second=30)
    waiting, _ = lifecycle.wait(job, "quota", until, T0)
    assert waiting is not None
    assert status_words.progress(waiting).status == (
        "waiting (0/2) for the Gemini quota, resumes about 14:05 UTC"
    )
    # Another wait of about the same end changes nothing (no row rewrite).
    assert lifecycle.wait(waiting, "quota", until + timedelta(seconds=20), T0) == (None, None)
    later, _ = lifecycle.wait(waiting, "quota", until + timedelta(minutes=5), T0 + LEASE)
    assert later is not None and later.waiting is not None
    assert later.waiting.since == T0  # still the same wait
    claimed, _ = lifecycle.claim(later, 1, "clm_a", T0, LEASE, BUDGET)
    assert claimed is not None
    assert claimed.waiting is None
    assert status_words.progress(claimed).status == "generating (0/2)"


def test_daily_pause_reads_as_such() -> None:
    job = make_job(variant_count=1, started_at=T0, state=JobState.GENERATING)
    paused, _ = lifecycle.wait(job, "daily_quota", T0 + LEASE, T0)
    assert paused is not None
    assert status_words.progress(paused).status == (
        "paused (0/1): daily Gemini quota reached, resumes after midnight Pacific"
    )


def test_a_finished_job_neither_waits_nor_shows_a_wait() -> None:
    job, _ = lifecycle.fail_job(make_job(variant_count=1), "x", T0)
    assert job is not None
    assert lifecycle.wait(job, "quota", T0, T0) == (None, None)


# --------------------------------------------------------------------------- uploaded


def test_uploaded_records_object_and_clears_claim() -> None:
    job, _ = lifecycle.claim(make_job(), 1, "clm_a", T0, LEASE, BUDGET)
    assert job is not None
    job.variant(1).error = "earlier transient error"
    now = T0 + timedelta(seconds=9)
    updated, _ = lifecycle.uploaded(job, 1, "images/a/var_1.png", "image/png", now)
    assert updated is not None
    v = updated.variant(1)
    assert v.state == U
    assert (v.object_name, v.content_type, v.generated_at) == (
        "images/a/var_1.png",
        "image/png",
        now,
    )
    assert (v.claim_id, v.claim_expires, v.error) == (None, None, None)
    assert updated.state == JobState.GENERATING


def test_uploaded_is_idempotent() -> None:
    job, _ = lifecycle.uploaded(make_job(), 1, "images/a/var_1.png", "image/png", T0)
    assert job is not None
    again, _ = lifecycle.uploaded(job, 1, "images/a/var_1.jpg", "image/jpeg", T0 + timedelta(1))
    assert again is None
    assert job.variant(1).object_name == "images/a/var_1.png"


def test_uploaded_never_downgrades_done() -> None:
    job = job_with(D, P)
    job.variant(1).object_name = "images/a/var_1.png"
    updated, _ = lifecycle.uploaded(job, 1, "images/a/var_1.png", "image/png", T0)
    assert updated is None
    assert job.variant(1).state == D


def test_uploaded_does_not_reopen_a_finished_job() -> None:
    made = "images/a/var_1.png"
    job, _ = lifecycle.variant_failed(
        make_job(variant_count=1), 1, "thumbnail: bad", T0, object_name=made
    )
    assert job is not None
    assert job.terminal
    after, _ = lifecycle.uploaded(job, 1, "images/a/var_1.png", "image/png", T0 + timedelta(1))
    final = after or job
    assert final.terminal
    assert final.variant(1).state == F


SPENT = Spent("gemini-3.1-flash-image", "0.0670", {"total_tokens": 1290})


@pytest.mark.parametrize("state", [D, F])
def test_uploaded_after_the_thumbnail_path_adds_only_the_missing_cost(
    state: VariantState,
) -> None:
    job = job_with(state, P)
    job.variant(1).object_name = "images/a/var_1.png"
    updated, _ = lifecycle.uploaded(job, 1, "images/a/var_1.jpg", "image/jpeg", T0, SPENT)
    assert updated is not None
    v = updated.variant(1)
    assert (v.state, v.object_name) == (state, "images/a/var_1.png")
    assert (v.model, v.cost_usd, v.usage) == (SPENT.model, "0.0670", {"total_tokens": 1290})
    # Once known, a cost is never replaced (nor paid twice).
    again, _ = lifecycle.uploaded(updated, 1, "x", "image/png", T0, Spent("other", "9.9"))
    assert again is None


def test_thumbnail_done_records_the_cost_when_it_comes_first() -> None:
    job = job_with(G, P)
    updated, _ = lifecycle.thumbnail_done(
        job, 1, "images/a/var_1.png", "thumbnails/a.jpg", T0, SPENT
    )
    assert updated is not None
    assert (updated.variant(1).state, updated.variant(1).cost_usd) == (D, "0.0670")
    assert updated.cost() == Decimal("0.0670")


def test_thumbnail_done_first_dates_the_image_and_the_upload_record_keeps_it() -> None:
    # Found by the simulation (seed 13844): a crash between upload and its record let
    # the thumbnail come first, and the image stayed undated (null generated_at in
    # /status, exports and anchors dating it by the job's creation).
    later = T0 + timedelta(minutes=5)
    done, _ = lifecycle.thumbnail_done(job_with(G, P), 1, "images/a/var_1.png", "t.jpg", later)
    assert done is not None and done.variant(1).generated_at == later
    again, _ = lifecycle.uploaded(done, 1, "images/a/var_1.png", "image/png", T0, SPENT)
    assert (again or done).variant(1).generated_at == later
    uploaded, _ = lifecycle.uploaded(make_job(), 1, "images/a/var_1.png", "image/png", T0)
    assert uploaded is not None
    thumbed, _ = lifecycle.thumbnail_done(uploaded, 1, "images/a/var_1.png", "t.jpg", later)
    assert thumbed is not None and thumbed.variant(1).generated_at == T0


def test_thumbnail_done_keeps_a_cost_generation_recorded() -> None:
    job, _ = lifecycle.uploaded(make_job(), 1, "images/a/var_1.png", "image/png", T0, SPENT)
    assert job is not None
    updated, _ = lifecycle.thumbnail_done(
        job, 1, "images/a/var_1.png", "t.jpg", T0, Spent("m", "1")
    )
    assert updated is not None
    assert (updated.variant(1).model, updated.variant(1).cost_usd) == (SPENT.model, "0.0670")


# --------------------------------------------------------------------------- variant_failed


def test_variant_failed_without_claim_id_fails_any_unfinished_variant() -> None:
    job = job_with(U, D)
    updated, _ = lifecycle.variant_failed(job, 1, "thumbnail: corrupt", T0)
    assert updated is not None
    assert updated.variant(1).state == F
    assert updated.variant(1).error == "thumbnail: corrupt"
    assert updated.terminal
    assert updated.state == JobState.PARTIAL
    assert updated.error == "variant 1: thumbnail: corrupt"
    assert updated.finished_at == T0


def test_variant_failed_with_matching_claim_id() -> None:
    job, _ = lifecycle.claim(make_job(), 1, "clm_a", T0, LEASE, BUDGET)
    assert job is not None
    updated, _ = lifecycle.variant_failed(job, 1, "blocked", T0, claim_id="clm_a")
    assert updated is not None
    v = updated.variant(1)
    assert (v.state, v.error, v.claim_id, v.claim_expires) == (F, "blocked", None, None)
    assert not updated.terminal  # variant 2 is still pending
    assert updated.state == JobState.GENERATING


def test_variant_failed_with_stale_claim_id_changes_nothing() -> None:
    job, _ = lifecycle.claim(make_job(), 1, "clm_b", T0, LEASE, BUDGET)
    assert job is not None
    assert lifecycle.variant_failed(job, 1, "blocked", T0, claim_id="clm_a") == (None, None)
    assert job.variant(1).state == G


def test_variant_failed_with_claim_id_never_overwrites_an_upload() -> None:
    job = job_with(U, P)
    assert lifecycle.variant_failed(job, 1, "blocked", T0, claim_id="clm_a") == (None, None)


@pytest.mark.parametrize("state", [D, F])
def test_variant_failed_on_finished_variant_changes_nothing(state: VariantState) -> None:
    job = job_with(state, P)
    assert lifecycle.variant_failed(job, 1, "late", T0) == (None, None)


def test_variant_failed_last_variant_fails_job() -> None:
    job = job_with(F, G)
    updated, _ = lifecycle.variant_failed(job, 2, "no image", T0)
    assert updated is not None
    assert updated.state == JobState.FAILED
    assert updated.error == "variant 1: boom 1; variant 2: no image"


# --------------------------------------------------------------------------- thumbnail_done


def test_thumbnail_done_changes_each_variant_once_and_ends_the_job_once() -> None:
    job = job_with(U, U)
    results: list[bool] = []
    calls = [1, 1, 2, 2, 1, 2]
    for i, n in enumerate(calls):
        updated, _ = lifecycle.thumbnail_done(
            job, n, f"images/x/var_{n}.png", f"thumbnails/x/var_{n}.jpg", T0 + timedelta(i)
        )
        results.append(updated is not None)
        if updated is not None:
            job = updated
    assert results == [True, False, True, False, False, False]
    assert job.state == JobState.COMPLETED
    assert job.finished_at == T0 + timedelta(2)
    assert job.error is None


def test_thumbnail_done_second_call_changes_nothing() -> None:
    job, _ = lifecycle.thumbnail_done(job_with(U), 1, "images/a.png", "thumbnails/a.jpg", T0)
    assert job is not None
    assert lifecycle.thumbnail_done(job, 1, "images/a.png", "thumbnails/a.jpg", T0) == (None, None)


def test_thumbnail_done_records_names_and_keeps_known_object_name() -> None:
    job = job_with(U, P)
    job.variant(1).object_name = "images/known.png"
    updated, _ = lifecycle.thumbnail_done(job, 1, "images/other.png", "thumbnails/t.jpg", T0)
    assert updated is not None
    assert not updated.terminal
    v = updated.variant(1)
    assert (v.state, v.object_name, v.thumb_name, v.done_at) == (
        D,
        "images/known.png",
        "thumbnails/t.jpg",
        T0,
    )


def test_thumbnail_done_finishing_with_a_failed_variant_is_partial() -> None:
    job = job_with(F, U)
    updated, _ = lifecycle.thumbnail_done(job, 2, "images/b.png", "thumbnails/b.jpg", T0)
    assert updated is not None
    assert updated.state == JobState.PARTIAL
    assert updated.error == "variant 1: boom 1"


# --------------------------------------------------------------------------- fail_job


def test_fail_job_fails_every_unfinished_variant() -> None:
    job = make_job(variant_count=3)
    job.variant(2).state = G
    job.variant(2).claim_id = "clm_a"
    updated, _ = lifecycle.fail_job(job, "could not be queued: boom", T0)
    assert updated is not None
    assert updated.state == JobState.FAILED
    assert updated.finished_at == T0
    for n in (1, 2, 3):
        assert updated.variant(n).state == F
        assert updated.variant(n).error == "could not be queued: boom"
        assert updated.variant(n).claim_id is None
    assert updated.error == "; ".join(f"variant {n}: could not be queued: boom" for n in (1, 2, 3))


def test_fail_job_keeps_uploaded_and_done_variants() -> None:
    job = job_with(D, U, P)
    updated, _ = lifecycle.fail_job(job, "dead-lettered", T0)
    assert updated is not None
    assert [updated.variant(n).state for n in (1, 2, 3)] == [D, U, F]
    # An uploaded variant still awaits its thumbnail, so the job is not finished.
    assert not updated.terminal
    assert updated.state == JobState.GENERATING


def test_fail_job_on_terminal_job_changes_nothing() -> None:
    job = job_with(D, D)
    assert job.terminal
    assert lifecycle.fail_job(job, "late", T0) == (None, None)


def test_fail_job_with_only_uploaded_variants_changes_nothing() -> None:
    assert lifecycle.fail_job(job_with(U, U), "dead-lettered", T0) == (None, None)


# --------------------------------------------------------------------------- progress


def test_progress_queued() -> None:
    assert status_words.progress(make_job()) == status_words.Progress(
        JobState.QUEUED, 0, 0, 2, "queued"
    )


def test_progress_generating_counts_done_variants() -> None:
    p = status_words.progress(job_with(D, U, G, F))
    assert p == status_words.Progress(JobState.GENERATING, 1, 1, 4, "generating (1/4)")


def test_progress_completed() -> None:
    assert status_words.progress(job_with(D, D)).status == "completed"


def test_progress_failed_with_reason() -> None:
    job, _ = lifecycle.fail_job(make_job(variant_count=1), "reference pack: 404", T0)
    assert job is not None
    assert status_words.progress(job).status == "failed: variant 1: reference pack: 404"


def test_progress_failed_without_reason() -> None:
    job = make_job(state=JobState.FAILED)
    assert status_words.progress(job).status == "failed: unknown error"


def test_progress_partial_with_reason() -> None:
    failed, _ = lifecycle.variant_failed(job_with(D, U, P), 3, "blocked", T0)
    assert failed is not None
    job, _ = lifecycle.thumbnail_done(failed, 2, "images/b.png", "thumbnails/b.jpg", T0)
    assert job is not None
    assert job.state == JobState.PARTIAL
    assert status_words.progress(job) == status_words.Progress(
        JobState.PARTIAL, 2, 1, 3, "partial (2/3): variant 3: blocked"
    )


def test_progress_partial_without_reason() -> None:
    job = make_job(state=JobState.PARTIAL)
    job.variant(1).state = D
    job.variant(2).state = F
    assert status_words.progress(job).status == "partial (1/2)"


# --------------------------------------------------------------------------- references not read


def test_references_not_read_count_only_on_images_waiting_for_a_call() -> None:
    job = job_with(VariantState.PENDING, VariantState.GENERATING, VariantState.DONE)
    images = [(1, 1), (2, 1), (3, 1)]
    updated, ended = lifecycle.references_failed(job, images, "slow server", T0, failure_budget=2)
    assert updated is not None and not ended
    assert [updated.variant(n).failures for n in (1, 2, 3)] == [1, 0, 0]
    assert updated.variant(1).error == "slow server"
    updated, ended = lifecycle.references_failed(updated, images, "slower", T0, failure_budget=2)
    assert updated is not None and ended
    assert updated.variant(1).state == VariantState.FAILED
    assert updated.variant(1).error == "gave up after 2 failed attempts; the last: slower"
    # Nothing is waiting any more: nothing to count.
    assert lifecycle.references_failed(updated, images, "again", T0, 2) == (None, False)


def test_a_cancelled_image_whose_references_failed_ends_cancelled() -> None:
    job = job_with(VariantState.PENDING, VariantState.DONE)
    job.variant(1).cancel_requested = True
    updated, ended = lifecycle.references_failed(
        job, [(1, 1), (2, 1)], "slow", T0, failure_budget=3
    )
    assert updated is not None and ended
    assert updated.variant(1).state == VariantState.CANCELLED
    assert updated.terminal and updated.finished_at == T0  # the job ended with it


def test_a_variant_dropped_from_a_batch_waits_for_another_or_fails_at_its_budget() -> None:
    job = job_with(VariantState.PENDING, VariantState.PENDING)
    for n in (1, 2):
        job, _ = economy_batches.batch_claim(job, n, "ecb_1", T0)  # type: ignore[assignment]
    assert job is not None
    # Not ready (an anchor being made): back to pending, uncounted; the job still lists
    # the batch, which holds its sibling.
    job, ended = economy_batches.batch_dropped(job, 1, "ecb_1", T0)  # type: ignore[assignment]
    assert job is not None and not ended
    assert (job.variant(1).state, job.variant(1).gemini_batch, job.variant(1).failures) == (
        VariantState.PENDING,
        None,
        0,
    )
    assert [ref.record for ref in job.gemini_batches] == ["ecb_1"]
    # Not read (a slow pack): counted; with a budget of one it fails.
    job, ended = economy_batches.batch_dropped(job, 2, "ecb_1", T0, "slow", 1)  # type: ignore[assignment]
    assert job is not None and ended
    assert job.variant(2).error == "gave up after 1 failed attempts; the last: slow"
    assert job.gemini_batches == []  # no variant of the job is in that batch any more
    # A variant not in that batch is left alone.
    assert economy_batches.batch_dropped(job, 1, "ecb_1", T0, "slow", 1) == (None, False)
