"""Cancel and later versions as pure transitions, and the ledger's settlement of what
never ran (the budget of an image cancelled unmade goes back, once per image)."""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal

import pytest

from shared.contracts import status_words
from shared.domain import cancellation, handover, lifecycle, versions
from shared.domain.cancellation import CancelOutcome
from shared.domain.errors import TransientError
from shared.domain.job import JobState, VariantState
from shared.domain.lifecycle import Spent, VariantClaim
from shared.domain.versions import VersionRequest
from shared.services.ledger import JobLedger
from tests.fakes import T0, FakeBudgetLedger, FakeJobStore, make_job, mark_done

LEASE = timedelta(seconds=300)
SPENT = Spent("gemini-3.1-flash-image", "0.0670")
DAY = T0.strftime("%Y-%m-%d")


def request(instruction: str | None = None, caller: str = "alice") -> VersionRequest:
    return VersionRequest(instruction, 4242, caller, DAY, "0.0670")


# --------------------------------------------------------------------------- cancel


def test_cancel_stops_pending_variants_and_lets_running_ones_finish() -> None:
    job = make_job(variant_count=3)
    job, _ = lifecycle.claim(job, 1, "clm_a", T0, LEASE, 3)
    assert job is not None
    job, cancelled = cancellation.cancel(job, "alice", T0)
    assert job is not None
    assert cancelled.outcome == CancelOutcome.CANCELLING
    assert (cancelled.stopped, cancelled.running, cancelled.kept) == (2, 1, 0)
    assert [job.variant(n).state for n in (1, 2, 3)] == [
        VariantState.GENERATING,
        VariantState.CANCELLED,
        VariantState.CANCELLED,
    ]
    assert job.state == JobState.GENERATING
    assert status_words.progress(job).status == "cancelling (0/3)"
    # The running call ends: uploaded, then its thumbnail ends the job, cancelled.
    job, _ = lifecycle.uploaded(job, 1, "images/sc-001/job_1/var_1.png", "image/png", T0, SPENT)
    assert job is not None and job.state == JobState.GENERATING
    job, _ = lifecycle.thumbnail_done(job, 1, "images/x", "thumbnails/x", T0)
    assert job is not None and job.state == JobState.CANCELLED and job.terminal
    assert status_words.progress(job).status == "cancelled (1/3 kept)"
    # A cancelled variant is never claimed again (never reaches Gemini).
    _, claimed = lifecycle.claim(job, 2, "clm_b", T0, LEASE, 3)
    assert claimed.outcome == VariantClaim.FINISHED


def test_cancel_of_a_queued_job_ends_it_at_once_and_twice_is_a_no_op() -> None:
    job = make_job()
    job, first = cancellation.cancel(job, "alice", T0)
    assert job is not None and job.state == JobState.CANCELLED and job.finished_at == T0
    assert first.outcome == CancelOutcome.CANCELLED and first.stopped == 2
    again, second = cancellation.cancel(job, "alice", T0)
    assert again is None and second.outcome == CancelOutcome.ALREADY_CANCELLED


def test_cancel_of_a_finished_job_changes_nothing() -> None:
    job = mark_done(make_job(), 1, 2)
    job.state = lifecycle.derive_state(job)
    unchanged, cancelled = cancellation.cancel(job, "alice", T0)
    assert unchanged is None
    assert cancelled.outcome == CancelOutcome.ALREADY_FINISHED and cancelled.kept == 2


@pytest.mark.parametrize("ending", ["release", "attempt_failed", "takeover"])
def test_a_running_image_that_a_cancel_reached_ends_cancelled_not_retried(ending: str) -> None:
    job = make_job(variant_count=1)
    job, _ = lifecycle.claim(job, 1, "clm_a", T0, LEASE, 3)
    assert job is not None
    job, _ = cancellation.cancel(job, "alice", T0)
    assert job is not None and job.state == JobState.GENERATING
    if ending == "release":
        job, _ = lifecycle.release(job, 1, "clm_a", T0)
    elif ending == "attempt_failed":
        job, ended = lifecycle.attempt_failed(job, 1, "clm_a", "Gemini 503", T0, 3)
        assert ended
    else:
        # The stopped holder's claim is taken over (it may have stored its image, so
        # the new holder looks first); finding none, it gives the image back.
        job, claimed = lifecycle.claim(job, 1, "clm_b", T0 + LEASE * 2, LEASE, 3)
        assert claimed.outcome == VariantClaim.CLAIMED
        assert job is not None and job.variant(1).cancel_requested
        job, _ = lifecycle.release(job, 1, "clm_b", T0 + LEASE * 2)
    assert job is not None
    assert job.variant(1).state == VariantState.CANCELLED
    assert job.state == JobState.CANCELLED


# --------------------------------------------------------------------------- versions


def test_a_reroll_is_a_new_version_and_the_job_stays_finished() -> None:
    job = mark_done(make_job(variant_count=1), 1)
    job.state = lifecycle.derive_state(job)
    job, added = versions.add_version(job, 1, request(), T0)
    assert job is not None and added.version == 2
    version = job.variant(1).versions[0]
    assert (version.kind, version.source_object, version.seed) == ("reroll", None, 4242)
    assert status_words.progress(job).status == "completed; variant 1: re-roll (v2) being made"
    job, claimed = lifecycle.claim(job, 1, "clm", T0, LEASE, 3, version=2)
    assert job is not None and claimed.outcome == VariantClaim.CLAIMED
    name = "images/sc-001/job_1/var_1_v2.png"
    job, _ = lifecycle.uploaded(job, 1, name, "image/png", T0, SPENT, version=2)
    assert job is not None
    job, _ = lifecycle.thumbnail_done(job, 1, name, "thumbnails/t.jpg", T0, version=2)
    assert job is not None and job.state == JobState.COMPLETED
    assert job.variant(1).current()[0] == 2
    assert job.cost() == Decimal("0.0670")  # version 1 was seeded without a cost
    assert status_words.progress(job).status == "completed"


def test_an_edit_starts_from_the_newest_image_and_a_failed_edit_keeps_it_current() -> None:
    job = mark_done(make_job(variant_count=1), 1)
    job.state = lifecycle.derive_state(job)
    job, added = versions.add_version(job, 1, request("make it night"), T0)
    assert job is not None and added.version == 2
    edit = job.variant(1).versions[0]
    assert (edit.kind, edit.source_version) == ("edit", 1)
    assert edit.source_object == "images/sc-001/job_1/var_1.png"
    job, _ = lifecycle.variant_failed(job, 1, "prompt blocked", T0, version=2)
    assert job is not None and job.state == JobState.COMPLETED
    assert job.variant(1).current() == (1, job.variant(1))
    assert status_words.progress(job).status == (
        "completed; variant 1: edit (v2) failed: prompt blocked"
    )


def test_versions_are_refused_while_the_variant_is_made_or_without_an_image() -> None:
    job = make_job(variant_count=1)
    unchanged, added = versions.add_version(job, 1, request(), T0)
    assert unchanged is None
    assert added.refusal == "variant 1 is still being made; try when it is done"
    job, _ = lifecycle.variant_failed(job, 1, "blocked", T0)
    assert job is not None
    unchanged, added = versions.add_version(job, 1, request("brighter"), T0)
    assert unchanged is None and added.refusal == "variant 1 has no image to edit"
    job, added = versions.add_version(job, 1, request(), T0)  # a re-roll of a failed variant
    assert job is not None and added.version == 2


# --------------------------------------------------------------------------- refunds


def test_the_ledger_gives_back_each_cancelled_image_once() -> None:
    store, budget = FakeJobStore(), FakeBudgetLedger()
    budget.reserve("alice", DAY, "batch:bat_1", 3, Decimal("0.2010"), 100, Decimal(100))
    job = make_job(variant_count=3, budget_day=DAY)
    job, _ = lifecycle.claim(job, 1, "clm_a", T0, LEASE, 3)
    assert job is not None
    store.add(job)
    ledger = JobLedger(store, budget=budget)
    ledger.apply("job_1", lambda j: cancellation.cancel(j, "alice", T0))
    assert budget.used[("alice", DAY)].images == 1
    assert budget.used[("alice", DAY)].cost == Decimal("0.0670")
    assert all(store.job("job_1").variant(n).settled for n in (2, 3))
    # The running image is given back unmade later: one more image settled, once.
    ledger.apply("job_1", lambda j: lifecycle.release(j, 1, "clm_a", T0))
    ledger.apply("job_1", lambda j: cancellation.cancel(j, "alice", T0))
    assert budget.used[("alice", DAY)].images == 0
    assert budget.used[("alice", DAY)].cost == Decimal("0.0000")
    # Through the day's settlement, keyed by image: -1 image and -its estimate each.
    settles = [c[3:] for c in budget.calls if c[0] == "settle"]
    assert settles == [
        ("job_1/2", -1, Decimal("-0.0670")),
        ("job_1/3", -1, Decimal("-0.0670")),
        ("job_1/1", -1, Decimal("-0.0670")),
    ]


def test_a_cancelled_later_version_is_settled_on_its_own_key_and_day() -> None:
    store, budget = FakeJobStore(), FakeBudgetLedger()
    job = mark_done(make_job(variant_count=1, budget_day=DAY), 1)
    job.variant(1).settled = True
    job.state = lifecycle.derive_state(job)
    later = "2026-12-02"
    budget.reserve("bob", later, "batch:bat_1", 1, Decimal("0.0700"), 100, Decimal(100))
    wanted = VersionRequest(None, 7, "bob", later, "0.0700")
    job, _ = versions.add_version(job, 1, wanted, T0)
    assert job is not None
    store.add(job)
    ledger = JobLedger(store, budget=budget)
    ledger.apply("job_1", lambda j: cancellation.cancel(j, "alice", T0))
    assert store.job("job_1").variant(1).versions[0].state == VariantState.CANCELLED
    assert budget.used[("bob", later)].images == 0
    assert [c[1:4] for c in budget.calls if c[0] == "settle"] == [("bob", later, "job_1/1/v2")]


def test_a_cancel_reaches_a_job_waiting_for_the_quota() -> None:
    job = make_job(variant_count=2)
    job, _ = lifecycle.claim(job, 1, "clm_a", T0, LEASE, 3)
    assert job is not None
    job, _ = lifecycle.release(job, 1, "clm_a", T0)  # Gemini refused it: a quota wait
    assert job is not None
    job, _ = lifecycle.wait(job, "quota", T0 + timedelta(minutes=2), T0)
    assert job is not None and status_words.progress(job).status.startswith("waiting")
    job, cancelled = cancellation.cancel(job, "alice", T0)
    assert job is not None and (cancelled.outcome, cancelled.stopped) == (
        CancelOutcome.CANCELLED,
        2,
    )
    assert job.state == JobState.CANCELLED and job.waiting is None
    assert status_words.progress(job).status == "cancelled (0/2 kept)"


def test_a_reroll_is_settled_from_its_estimate_to_its_cost_under_its_version_key() -> None:
    store, budget = FakeJobStore(), FakeBudgetLedger()
    job = mark_done(make_job(variant_count=1, budget_day=DAY), 1)
    job.variant(1).settled = True
    job.state = lifecycle.derive_state(job)
    budget.reserve("alice", DAY, "batch:bat_1", 1, Decimal("0.0670"), 100, Decimal(100))
    job, _ = versions.add_version(job, 1, request(), T0)
    assert job is not None
    store.add(job)
    ledger = JobLedger(store, budget=budget)
    name = "images/sc-001/job_1/var_1_v2.png"
    spent = Spent("gemini-3.1-flash-image", "0.0690")
    ledger.apply("job_1", lambda j: lifecycle.uploaded(j, 1, name, "image/png", T0, spent, 2))
    ledger.apply("job_1", lambda j: lifecycle.thumbnail_done(j, 1, name, "t", T0, version=2))
    assert budget.used[("alice", DAY)].cost == Decimal("0.0690")
    assert budget.used[("alice", DAY)].images == 1
    settles = [c[3:] for c in budget.calls if c[0] == "settle"]
    assert settles == [("job_1/1/v2", 0, Decimal("0.0020"))]
    assert store.job("job_1").variant(1).versions[0].settled


def test_a_refund_interrupted_before_it_was_recorded_is_finished_once_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, budget = FakeJobStore(), FakeBudgetLedger()
    budget.reserve("alice", DAY, "batch:bat_1", 2, Decimal("0.1340"), 100, Decimal(100))
    store.add(make_job(budget_day=DAY))
    ledger = JobLedger(store, budget=budget)
    writes = {"n": 0}

    def fail_the_record(operation: str, job_id: str) -> None:
        if operation == "update_job":
            writes["n"] += 1
            if writes["n"] == 2:  # the cancel is written, the refund's record is not
                raise TransientError("firestore unavailable")

    store.hook = fail_the_record
    with pytest.raises(TransientError):
        ledger.apply("job_1", lambda j: cancellation.cancel(j, "alice", T0))
    store.hook = None
    assert budget.used[("alice", DAY)].images == 0  # given back before the record failed
    caplog.set_level(logging.INFO)
    with ledger.entry(store.job("job_1")):  # the redelivery
        pass
    assert budget.used[("alice", DAY)].images == 0 and budget.used[("alice", DAY)].cost == 0
    assert all(store.job("job_1").variant(n).settled for n in (1, 2))
    assert [r for r in caplog.records if getattr(r, "event", None) == "budget_refunded"]


# --------------------------------------------------------------------------- names, events


def test_version_names_parse_back_and_version_1_keeps_todays_name() -> None:
    from shared.contracts.objects import ObjectNames, image_metadata, variant_key

    names = ObjectNames("images/", "thumbnails/")
    job = make_job()
    assert names.image(job, 2, "image/png") == "images/sc-001/job_1/var_2.png"
    v3 = names.image(job, 2, "image/png", 3)
    assert v3 == "images/sc-001/job_1/var_2_v3.png"
    parsed = names.parse_image(v3)
    assert parsed is not None and (parsed.n, parsed.version) == (2, 3)
    assert names.parse_image("images/sc-001/job_1/var_2_v1.png") is None  # not canonical
    assert names.thumbnail(v3, "image/jpeg") == "thumbnails/sc-001/job_1/var_2_v3.jpg"
    assert names.image_stem(job, 1) == "images/sc-001/job_1/var_1."
    key = variant_key(image_metadata(job, 2, SPENT, 3))
    assert key is not None and (key.n, key.version) == (2, 3)
    assert "version" not in image_metadata(job, 2, SPENT)


def test_a_versions_thumbnail_finishes_that_version_only(
    clock: object, store: FakeJobStore
) -> None:
    from shared.adapters.imaging import make_thumbnail
    from shared.services.thumbnails import Thumbnails
    from tests.fakes import IMAGES_BUCKET, FakeObjectStore, finalize_event, make_settings, png_bytes

    job = mark_done(make_job(variant_count=1), 1)
    job.state = lifecycle.derive_state(job)
    job, _ = versions.add_version(job, 1, request(), T0)
    assert job is not None
    store.add(job)
    objects = FakeObjectStore()
    name = "images/sc-001/job_1/var_1_v2.png"
    objects.put(IMAGES_BUCKET, name, png_bytes((32, 32)))
    service = Thumbnails(make_settings(), JobLedger(store), objects, make_thumbnail)
    service.handle(finalize_event(name, 1, version="2", model="m", cost_usd="0.0670"))
    stored = store.job("job_1")
    version = stored.variant(1).versions[0]
    assert version.state == VariantState.DONE and version.cost_usd == "0.0670"
    assert version.thumb_name == "thumbnails/sc-001/job_1/var_1_v2.jpg"
    assert stored.variant(1).current()[0] == 2 and stored.state == JobState.COMPLETED


def test_dead_letters_of_a_version_and_of_an_export_fail_only_those(store: FakeJobStore) -> None:
    import base64
    import json

    from shared.contracts.messages import push_message
    from shared.domain.batch import Batch
    from shared.services.dead_letters import DeadLetters
    from tests.fakes import FakeObjectStore, make_settings

    job = mark_done(make_job(variant_count=1), 1)
    job.state = lifecycle.derive_state(job)
    job, _ = versions.add_version(job, 1, request(), T0)
    assert job is not None
    batch = Batch(
        batch_id="bat_1",
        caller="alice",
        spreadsheet_id="s",
        worksheet="w",
        model="m",
        job_ids=["job_1"],
        image_count=1,
        estimated_cost_usd="0",
        created_at=T0,
    )
    batch, _ = handover.request(batch, "exp_1", "alice", T0)
    assert batch is not None
    store.create_batch(batch, [job])

    def push(body: dict[str, object], **attributes: str) -> object:
        data = base64.b64encode(json.dumps(body).encode()).decode()
        return push_message({"message": {"data": data, "attributes": attributes}})

    letters = DeadLetters(JobLedger(store), make_settings(), FakeObjectStore())
    message = {
        "job_id": "job_1",
        "batch_id": "bat_1",
        "scene_id": "sc-001",
        "variant": 1,
        "version": 2,
    }
    letters.handle(push(message))  # type: ignore[arg-type]
    letters.handle(push({"batch_id": "bat_1", "export_id": "exp_1"}, export_id="exp_1"))  # type: ignore[arg-type]
    stored = store.job("job_1")
    assert stored.variant(1).versions[0].state == VariantState.FAILED
    assert stored.state == JobState.COMPLETED and stored.variant(1).state == VariantState.DONE
    export = store.batches["bat_1"].export
    assert export is not None and export.state == "failed"
    assert export.error == "gave up after several deliveries"


def test_reference_limits_are_the_catalogs_per_model() -> None:
    from tests.fakes import make_settings

    catalog = '{"models": {"gemini-3.1-flash-image": {"max_reference_images": 5}}}'
    cfg = make_settings(model_catalog=catalog)
    assert cfg.reference_limit("gemini-3.1-flash-image") == 5
    assert cfg.reference_limit("gemini-3-pro-image") == 14
    # A model the catalog does not list: this deployment's own cap.
    assert cfg.reference_limit("another-model") == cfg.reference_max_images
    with pytest.raises(ValueError, match="EXPORTS_PREFIX must lie outside IMAGES_PREFIX"):
        make_settings(exports_prefix="images/zips/")
