"""Intake service: dry-run plans, live submission (budget, idempotency) and status."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.contracts.answers import Plan
from shared.contracts.links import LinkSigner
from shared.contracts.messages import JobMessage
from shared.contracts.requests import BatchRequest, Limits
from shared.domain import lifecycle
from shared.domain.batch import Batch
from shared.domain.errors import TransientError
from shared.domain.job import Job, JobState, VariantState
from shared.services.daily_budget import OverBudget
from shared.services.intake import (
    Accepted,
    Intake,
    ModelUnavailable,
    SheetMismatch,
    Submission,
)
from shared.services.ledger import JobLedger
from shared.services.once import InProgress
from shared.services.ports import Usage
from shared.services.preflight import Preflight
from shared.services.sheet_check import SheetCheck
from tests.fakes import (
    IMAGES_BUCKET,
    T0,
    FakeBudgetLedger,
    FakeClock,
    FakeIdempotencyStore,
    FakeJobStore,
    FakeModelDirectory,
    FakePublisher,
    FakeSheetLayouts,
    make_job,
    make_settings,
)

DAY = T0.strftime("%Y-%m-%d")


def counter_ids() -> Callable[[str], str]:
    counter = itertools.count(1)
    return lambda prefix: f"{prefix}_{next(counter)}"


def request(
    *variants: int,
    run_mode: str = "live",
    ref: str | None = None,
    worksheet: str = "Scenes",
    size: str | None = None,
    model: str | None = None,
) -> BatchRequest:
    items = [
        {"scene_id": f"sc-{i:03d}", "prompt": f"prompt {i}", "variants": v}
        | ({"ref_pack_public_url": ref} if ref else {})
        | ({"image_size": size} if size else {})
        for i, v in enumerate(variants, start=1)
    ]
    data: dict[str, Any] = {
        "items": items,
        "runMode": run_mode,
        **({"model": model} if model else {}),
        "spreadsheet_id": "sheet123",
        "worksheet": worksheet,
    }
    return BatchRequest.model_validate(
        data, context={"limits": Limits(max_variants=8, images_bucket=IMAGES_BUCKET)}
    )


@pytest.fixture
def sheets() -> FakeSheetLayouts:
    return FakeSheetLayouts()


@pytest.fixture
def make_intake(
    store: FakeJobStore,
    publisher: FakePublisher,
    links: LinkSigner,
    budget: FakeBudgetLedger,
    idempotency: FakeIdempotencyStore,
    model_directory: FakeModelDirectory,
    clock: FakeClock,
    sheets: FakeSheetLayouts,
) -> Callable[..., Intake]:
    def build(
        store: FakeJobStore = store,
        publisher: Any = publisher,
        idempotency: Any = idempotency,
        **setting_overrides: Any,
    ) -> Intake:
        return Intake(
            make_settings(**setting_overrides),
            store,
            JobLedger(store, budget=budget),
            publisher,
            links,
            budget,
            idempotency,
            Preflight(model_directory, ttl_s=300, monotonic=clock.monotonic),
            SheetCheck(sheets, monotonic=clock.monotonic),
            clock=clock,
            ids=counter_ids(),
        )

    return build


@pytest.fixture
def intake(make_intake: Callable[..., Intake]) -> Intake:
    return make_intake()


def accepted(outcome: Submission) -> dict[str, Any]:
    """The accepted answer as the HTTP layer sends it."""
    assert isinstance(outcome, Accepted), outcome
    return outcome.answer.model_dump(mode="json", by_alias=True, exclude_none=True)


def first_answer(outcome: Submission) -> bool:
    """Accepted now, not a replay."""
    return isinstance(outcome, Accepted) and not outcome.replay


def replayed(outcome: Submission) -> bool:
    return isinstance(outcome, Accepted) and outcome.replay


# --------------------------------------------------------------------------- plan


def test_plan_numbers_with_decimal_prices(
    intake: Intake,
    store: FakeJobStore,
    publisher: FakePublisher,
    budget: FakeBudgetLedger,
    idempotency: FakeIdempotencyStore,
) -> None:
    plan = intake.plan(request(4, 4, 4, 4, 4, 4, 1, run_mode="dry_run"), "alice")
    assert plan.run_mode == "dry_run"
    assert plan.model == "gemini-nano-banana-2.1"
    assert plan.price_per_image_usd == "0.0336"
    assert (plan.job_count, plan.image_count) == (7, 25)
    assert plan.estimated_cost_usd == "0.8400"
    assert [(j.scene_id, j.variants, j.estimated_cost_usd) for j in plan.jobs][::6] == [
        ("sc-001", 4, "0.1344"),
        ("sc-007", 1, "0.0336"),
    ]
    assert plan.warnings == []
    # A plan writes nothing and publishes nothing.
    assert store.writes == []
    assert publisher.calls == []
    assert [c[0] for c in budget.calls] == ["usage"]
    assert budget.used == {}
    assert idempotency.calls == []


def test_plan_dumps_with_run_mode_alias(intake: Intake) -> None:
    body = intake.plan(request(1, run_mode="dry_run"), "alice").model_dump(
        mode="json", by_alias=True
    )
    assert body["runMode"] == "dry_run"
    assert body["estimated_cost_usd"] == "0.0336"


def test_plan_shows_the_days_budget(intake: Intake, budget: FakeBudgetLedger) -> None:
    budget.used[("alice", DAY)] = Usage(images=990, cost=Decimal("66.33"))
    budget.used[("bob", DAY)] = Usage(images=5, cost=Decimal("1"))
    plan = intake.plan(request(4, 4, run_mode="dry_run"), "alice")
    assert plan.budget.model_dump() == {
        "day": DAY,
        "images_limit": 1000,
        "images_used": 990,
        "images_requested": 8,
        "images_remaining": 10,
        "cost_limit_usd": "100.0000",
        "cost_used_usd": "66.3300",
        "cost_requested_usd": "0.2688",
        "cost_remaining_usd": "33.6700",
    }


def test_plan_uses_configured_model_price(make_intake: Callable[..., Intake]) -> None:
    intake = make_intake(gemini_model="gemini-2.5-flash-image")
    plan = intake.plan(request(3, 4), "alice")
    assert isinstance(plan, Plan)
    assert (plan.model, plan.price_per_image_usd, plan.estimated_cost_usd) == (
        "gemini-2.5-flash-image",
        "0.0390",
        "0.2730",
    )


def test_plan_warns_about_active_jobs_for_the_same_scenes(
    intake: Intake, store: FakeJobStore
) -> None:
    store.add(
        make_job(job_id="job_q", scene_id="sc-001"),
        make_job(job_id="job_g", scene_id="sc-002", state=JobState.GENERATING),
        make_job(job_id="job_done", scene_id="sc-001", state=JobState.COMPLETED),
        make_job(job_id="job_other_scene", scene_id="sc-099"),
        make_job(job_id="job_other_tab", scene_id="sc-001", worksheet="Other"),
    )
    plan = intake.plan(request(1, 1, 1, run_mode="dry_run"), "alice")
    assert [(w.scene_id, w.message) for w in plan.warnings] == [
        ("sc-001", "job job_q for this scene is still queued"),
        ("sc-002", "job job_g for this scene is still generating"),
    ]


def test_jobs_record_the_tab_their_worksheet_name_meant(
    intake: Intake, store: FakeJobStore, sheets: FakeSheetLayouts
) -> None:
    sheets.put("sheet123", "Scenes", ["sc-001"], sheet_id=7351)
    answer = accepted(intake.submit(request(1), "alice", "k-tab"))
    job = store.job(answer["jobs"][0]["job_id"])
    assert (job.worksheet, job.worksheet_id) == ("Scenes", 7351)
    assert store.get_batch(answer["batch_id"]).worksheet_id == 7351  # type: ignore[union-attr]


def test_a_caller_sees_and_warns_about_its_own_jobs_only(
    intake: Intake, store: FakeJobStore
) -> None:
    store.add(
        make_job(job_id="job_bob", scene_id="sc-001", caller="bob"),  # still queued
        make_job(  # sent later by alice: the row is hers
            job_id="job_alice",
            scene_id="sc-001",
            state=JobState.COMPLETED,
            created_at=T0 + timedelta(minutes=1),
        ),
    )
    plan = intake.plan(request(1, run_mode="dry_run"), "alice")
    assert not isinstance(plan, SheetMismatch)
    assert plan.warnings == []  # bob's running job is bob's business
    seen = intake.plan(request(1, run_mode="dry_run"), "root", admin=True)
    assert not isinstance(seen, SheetMismatch)
    assert [w.message for w in seen.warnings] == ["job job_bob for this scene is still queued"]


def test_rows_another_callers_job_shows_are_refused_by_row_in_dry_run_and_live(
    intake: Intake, store: FakeJobStore, budget: FakeBudgetLedger, publisher: FakePublisher
) -> None:
    store.add(make_job(job_id="job_bob", scene_id="sc-002", caller="bob"))
    for mode in ("dry_run", "live"):
        outcome = (
            intake.plan(request(1, 1, run_mode=mode), "alice")
            if mode == "dry_run"
            else intake.submit(request(1, 1, run_mode=mode), "alice", "k-1")
        )
        assert isinstance(outcome, SheetMismatch), mode
        assert [p["field"] for p in outcome.problems] == ["items[1].scene_id"]
        assert "another caller's job" in outcome.problems[0]["reason"]
    assert publisher.published == [] and budget.used == {}
    # Bob's own re-send, and an admin's, go through.
    assert isinstance(intake.plan(request(1, 1, run_mode="dry_run"), "bob"), Plan)
    assert isinstance(intake.plan(request(1, 1, run_mode="dry_run"), "root", admin=True), Plan)


@pytest.mark.parametrize(
    ("size", "per_image"), [("1K", "0.0336"), ("2K", "0.0504"), ("4K", "0.1134")]
)
def test_plan_prices_each_item_by_its_size(intake: Intake, size: str, per_image: str) -> None:
    plan = intake.plan(request(2, size=size), "alice")
    assert isinstance(plan, Plan)
    (job,) = plan.jobs
    assert (job.image_size, job.estimated_cost_per_image_usd) == (size, per_image)
    assert job.estimated_cost_usd == str(Decimal(per_image) * 2)


@pytest.mark.parametrize(
    ("ref", "references", "per_image", "pack_note"),
    [
        (None, 0, "0.0336", False),
        ("https://example.com/one.png", 1, "0.0353", False),  # + 1120 tokens at $1.50/M
        ("https://example.com/refs.zip", 14, "0.0571", True),  # the most that is sent
    ],
)
def test_plan_estimates_reference_images_as_input_tokens_and_says_so(
    intake: Intake, ref: str | None, references: int, per_image: str, pack_note: bool
) -> None:
    plan = intake.plan(request(1, ref=ref), "alice")
    assert isinstance(plan, Plan)
    (job,) = plan.jobs
    assert (job.reference_images, job.estimated_cost_per_image_usd) == (references, per_image)
    notes = " ".join(plan.estimate_notes)
    assert "characters a token" in notes
    assert ("zip or manifest pack is estimated" in notes) is pack_note
    assert ("1120 input tokens each" in notes) is bool(references)


def test_a_retired_model_refuses_the_batch_before_anything_is_written(
    make_intake: Callable[..., Intake],
    model_directory: FakeModelDirectory,
    store: FakeJobStore,
    publisher: FakePublisher,
    budget: FakeBudgetLedger,
) -> None:
    model_directory.retired["gemini-nano-banana-2.1"] = "Gemini answered 404 NOT_FOUND"
    intake = make_intake()
    for run_mode in ("dry_run", "live"):
        outcome = (
            intake.plan(request(2, run_mode=run_mode), "alice")
            if run_mode == "dry_run"
            else intake.submit(request(2), "alice", "key-1")
        )
        assert outcome == ModelUnavailable(
            "gemini-nano-banana-2.1", "Gemini answered 404 NOT_FOUND"
        )
    assert (store.writes, publisher.calls, budget.used) == ([], [], {})


def test_the_model_check_is_kept_a_few_minutes(
    intake: Intake, model_directory: FakeModelDirectory, clock: FakeClock
) -> None:
    for _ in range(3):
        intake.plan(request(1), "alice")
    assert model_directory.checks == ["gemini-nano-banana-2.1"]
    clock.advance(301)
    intake.plan(request(1), "alice")
    assert len(model_directory.checks) == 2


def test_a_model_lookup_that_cannot_answer_refuses_nothing_for_good(
    intake: Intake, model_directory: FakeModelDirectory, store: FakeJobStore
) -> None:
    model_directory.unreachable = True
    with pytest.raises(TransientError, match="model lookup"):
        intake.submit(request(1), "alice", "key-1")
    assert store.writes == []


def test_a_batch_may_name_another_model_of_the_catalog(intake: Intake) -> None:
    plan = intake.plan(request(1, size="4K", model="gemini-3-pro-image"), "alice")
    assert isinstance(plan, Plan)
    assert (plan.model, plan.jobs[0].estimated_cost_per_image_usd) == (
        "gemini-3-pro-image",
        "0.2400",
    )


# --------------------------------------------------------------------------- submit


def test_submit_creates_batch_and_one_job_per_item(
    intake: Intake, store: FakeJobStore, budget: FakeBudgetLedger
) -> None:
    outcome = intake.submit(request(2, 3, ref="https://example.com/refs.zip"), "alice")
    assert outcome.replay is False
    body = accepted(outcome)
    assert body["runMode"] == "live"
    assert body["batch_id"] == "bat_1"
    assert body["unpublished"] == []
    # A zip pack is estimated at the most references sent: 14 x 1120 input tokens.
    assert (body["image_count"], body["estimated_cost_usd"]) == (5, "0.2855")
    assert body["jobs"] == [
        {"scene_id": "sc-001", "job_id": "job_1_1", "variants": 2, "state": "queued"},
        {"scene_id": "sc-002", "job_id": "job_1_2", "variants": 3, "state": "queued"},
    ]
    assert body["budget"]["images_requested"] == 5

    assert len(store.created) == 1
    batch, created_jobs = store.created[0]
    assert (batch.batch_id, batch.caller, batch.job_ids) == (
        "bat_1",
        "alice",
        ["job_1_1", "job_1_2"],
    )
    assert (batch.image_count, batch.estimated_cost_usd) == (5, "0.2855")
    assert (batch.spreadsheet_id, batch.worksheet, batch.created_at) == ("sheet123", "Scenes", T0)
    assert [j.job_id for j in created_jobs] == ["job_1_1", "job_1_2"]

    job = store.job("job_1_2")
    assert job.state == JobState.QUEUED
    assert (job.batch_id, job.scene_id, job.prompt, job.caller) == (
        "bat_1",
        "sc-002",
        "prompt 2",
        "alice",
    )
    assert (job.variant_count, sorted(job.variants)) == (3, ["1", "2", "3"])
    assert (job.spreadsheet_id, job.worksheet) == ("sheet123", "Scenes")
    assert (job.model, job.price_per_image, job.budget_day) == (
        "gemini-nano-banana-2.1",
        "0.0571",
        DAY,
    )
    assert job.ref_pack_public_url == "https://example.com/refs.zip"
    assert job.created_at == T0
    assert budget.used[("alice", DAY)] == Usage(5, Decimal("0.2855"))


def test_submit_publishes_one_message_per_job_with_attributes(
    intake: Intake, publisher: FakePublisher
) -> None:
    intake.submit(request(1, 2, 3), "alice")
    assert len(publisher.calls) == 1
    attrs = {"batch_id": "bat_1", "caller": "alice", "run_mode": "live"}
    assert [(m, a) for m, a in publisher.published] == [
        (JobMessage(job_id="job_1_1", batch_id="bat_1", scene_id="sc-001"), attrs),
        (JobMessage(job_id="job_1_2", batch_id="bat_1", scene_id="sc-002"), attrs),
        (JobMessage(job_id="job_1_3", batch_id="bat_1", scene_id="sc-003"), attrs),
    ]


def test_a_partial_publish_failure_is_finished_by_the_retry_with_no_second_batch(
    make_intake: Callable[..., Intake], store: FakeJobStore, budget: FakeBudgetLedger
) -> None:
    """Scenario 1 of the interleavings issue: some jobs of a batch fail to publish."""
    publisher = FakePublisher(fail={"job_1_2": "DeadlineExceeded: 60s", "job_1_4": "NotFound"})
    intake = make_intake(publisher=publisher)
    with pytest.raises(TransientError, match="2 of the batch's jobs could not be queued yet"):
        intake.submit(request(1, 2, 1, 3), "alice", "key-1")
    # Nothing failed, nothing given back: the batch is recorded and reserved once.
    assert [j.state for j in map(store.job, store.job_ids)] == [JobState.QUEUED] * 4
    assert budget.used[("alice", DAY)] == Usage(7, Decimal("0.2352"))
    publisher.fail.clear()
    body = accepted(intake.submit(request(1, 2, 1, 3), "alice", "key-1"))
    assert body["batch_id"] == "bat_1" and body["unpublished"] == []
    assert [j["job_id"] for j in body["jobs"]] == ["job_1_1", "job_1_2", "job_1_3", "job_1_4"]
    assert len(store.batches) == 1 and len(store.job_ids) == 4
    # Every job published; those that went out the first time again (harmless).
    assert sorted({m.job_id for m, _ in publisher.published}) == [
        "job_1_1",
        "job_1_2",
        "job_1_3",
        "job_1_4",
    ]
    assert budget.used[("alice", DAY)] == Usage(7, Decimal("0.2352"))
    assert replayed(intake.submit(request(1, 2, 1, 3), "alice", "key-1"))


@pytest.mark.parametrize(
    ("cap", "used"),
    [({"daily_image_cap": 10}, Usage(8, Decimal(0))), ({}, Usage(0, Decimal("99.9")))],
)
def test_budget_exceeded_is_429_and_writes_nothing(
    make_intake: Callable[..., Intake],
    store: FakeJobStore,
    publisher: FakePublisher,
    budget: FakeBudgetLedger,
    cap: dict[str, Any],
    used: Usage,
) -> None:
    budget.used[("alice", DAY)] = used
    outcome = make_intake(**cap).submit(request(2, 1), "alice", "key-1")
    assert isinstance(outcome, OverBudget)
    assert "this batch needs 3 images ($0.1008)" in outcome.message
    assert outcome.budget.images_used == used.images
    assert store.writes == []
    assert publisher.calls == []
    assert budget.used[("alice", DAY)] == used


def test_refused_batch_is_not_replayed_once_budget_allows(
    make_intake: Callable[..., Intake], budget: FakeBudgetLedger
) -> None:
    budget.used[("alice", DAY)] = Usage(9, Decimal(0))
    refused = make_intake(daily_image_cap=10).submit(request(2), "alice", "k")
    assert isinstance(refused, OverBudget)
    assert first_answer(make_intake(daily_image_cap=20).submit(request(2), "alice", "k"))


# --------------------------------------------------------------------------- idempotency


def test_same_idempotency_key_replays_the_first_answer(
    intake: Intake, store: FakeJobStore, publisher: FakePublisher, budget: FakeBudgetLedger
) -> None:
    first = intake.submit(request(2), "alice", "key-1")
    again = intake.submit(request(2, 2), "alice", "key-1")  # even with another body
    assert replayed(again)
    assert accepted(again) == accepted(first)
    assert len(store.created) == 1
    assert len(publisher.calls) == 1
    assert budget.used[("alice", DAY)].images == 2


def test_idempotency_keys_are_per_caller(intake: Intake, store: FakeJobStore) -> None:
    first = accepted(intake.submit(request(1), "alice", "shared-key"))
    # Bob's own rows (alice's job shows row sc-001 of Scenes: not his to write).
    other = intake.submit(request(1, worksheet="Other"), "bob", "shared-key")
    assert first_answer(other)
    assert accepted(other)["batch_id"] != first["batch_id"]
    assert len(store.created) == 2


def test_identical_content_without_key_is_replayed_only_briefly(
    intake: Intake, store: FakeJobStore, clock: FakeClock
) -> None:
    first = accepted(intake.submit(request(1, 2), "alice"))
    assert replayed(intake.submit(request(1, 2), "alice"))
    assert accepted(intake.submit(request(1, 2), "alice")) == first
    assert first_answer(intake.submit(request(2, 1), "alice"))  # other content
    clock.advance(601)
    assert first_answer(intake.submit(request(1, 2), "alice"))
    assert len(store.created) == 3


def test_explicit_key_outlives_the_content_key(intake: Intake, clock: FakeClock) -> None:
    intake.submit(request(1), "alice", "key-1")
    clock.advance(3600)
    assert replayed(intake.submit(request(1), "alice", "key-1"))
    clock.advance(24 * 3600)
    assert first_answer(intake.submit(request(1), "alice", "key-1"))


class ReentrantPublisher(FakePublisher):
    """Runs another submit while the first one is publishing."""

    def __init__(self, again: Callable[[], Submission]) -> None:
        super().__init__()
        self.again = again
        self.inner: list[Submission] = []

    def publish(self, messages: Sequence[tuple[JobMessage, Mapping[str, str]]]) -> dict[str, str]:
        if not self.inner:
            self.inner.append(self.again())
        return super().publish(messages)


def test_concurrent_duplicate_is_409_in_progress(
    make_intake: Callable[..., Intake], store: FakeJobStore
) -> None:
    holder: list[Intake] = []
    publisher = ReentrantPublisher(lambda: holder[0].submit(request(1), "alice", "key-1"))
    holder.append(make_intake(publisher=publisher))
    first = holder[0].submit(request(1), "alice", "key-1")
    assert first_answer(first)
    assert isinstance(publisher.inner[0], InProgress)
    assert len(store.created) == 1
    # Once the first finished, the duplicate gets its answer.
    assert accepted(holder[0].submit(request(1), "alice", "key-1")) == accepted(first)


class CrashingStore(FakeJobStore):
    """create_batch fails the first ``failures`` times."""

    def __init__(self, requests: FakeIdempotencyStore, failures: int = 1) -> None:
        super().__init__(requests)
        self.failures = failures

    def create_batch(self, batch: Batch, jobs: Sequence[Job], fence: Any = None) -> None:
        if self.failures:
            self.failures -= 1
            raise TransientError("firestore unavailable")
        super().create_batch(batch, jobs, fence)


class Died(BaseException):
    """The instance died: nothing after it runs, not even ``finally`` clean-ups."""


class DyingIdempotencyStore(FakeIdempotencyStore):
    """The instance dies right before it keeps the answer (after publishing)."""

    def __init__(self) -> None:
        super().__init__()
        self.deaths = 1

    def finish(self, key: str, holder: str, body: dict[str, Any]) -> bool:
        if self.deaths:
            self.deaths -= 1
            raise Died
        return super().finish(key, holder, body)

    def let_go(self, key: str, holder: str) -> None:
        pass  # a dead instance lets go of nothing: its lease runs out


def test_a_failed_submit_is_resumed_by_the_retry_with_the_same_key(
    make_intake: Callable[..., Intake],
    budget: FakeBudgetLedger,
    idempotency: FakeIdempotencyStore,
) -> None:
    store = CrashingStore(idempotency)
    intake = make_intake(store=store)
    with pytest.raises(TransientError):
        intake.submit(request(1), "alice", "key-1")
    body = accepted(intake.submit(request(1), "alice", "key-1"))
    assert body["batch_id"] == "bat_1"  # the batch the key named from the start
    assert len(store.batches) == 1
    # Reserved once, though the first run reserved before it failed.
    assert budget.used[("alice", DAY)].images == 1


def test_an_instance_that_died_after_publishing_is_resumed_without_a_second_batch(
    make_intake: Callable[..., Intake],
    publisher: FakePublisher,
    budget: FakeBudgetLedger,
    clock: FakeClock,
) -> None:
    """Scenario 1: death between publishing and keeping the answer."""
    dying = DyingIdempotencyStore()
    store = FakeJobStore(dying)
    budget.requests = dying
    intake = make_intake(store=store, idempotency=dying)
    with pytest.raises(Died):
        intake.submit(request(2, 1), "alice", "key-1")
    # Its lease is held by the dead request for a while: a retry then is in progress.
    assert isinstance(intake.submit(request(2, 1), "alice", "key-1"), InProgress)
    clock.advance(181)
    body = accepted(intake.submit(request(2, 1), "alice", "key-1"))
    assert body["batch_id"] == "bat_1"
    assert len(store.batches) == 1 and len(store.job_ids) == 2
    assert budget.used[("alice", DAY)].images == 3
    # Its jobs were published again (harmless: a duplicate message pays nothing).
    assert len(publisher.published) == 4
    assert replayed(intake.submit(request(2, 1), "alice", "key-1"))


def test_a_refusal_after_an_earlier_run_reserved_gives_the_reservation_back(
    make_intake: Callable[..., Intake],
    model_directory: FakeModelDirectory,
    budget: FakeBudgetLedger,
    idempotency: FakeIdempotencyStore,
) -> None:
    intake = make_intake(store=CrashingStore(idempotency))
    with pytest.raises(TransientError):
        intake.submit(request(3), "alice", "key-1")
    assert budget.used[("alice", DAY)].images == 3
    model_directory.retired["gemini-nano-banana-2.1"] = "Gemini answered 404 NOT_FOUND"
    clock_free = make_intake(store=FakeJobStore(idempotency))
    outcome = clock_free.submit(request(3), "alice", "key-1")
    assert isinstance(outcome, ModelUnavailable)
    assert budget.used[("alice", DAY)].images == 0


# --------------------------------------------------------------------------- status


def test_job_status_hides_other_callers_and_missing_jobs(
    intake: Intake, store: FakeJobStore
) -> None:
    store.add(make_job(job_id="job_a", caller="alice"))
    assert intake.job_status("job_a", "bob") is None
    assert intake.job_status("job_missing", "alice") is None
    view = intake.job_status("job_a", "alice")
    assert view is not None
    assert view.job_id == "job_a"
    admin_view = intake.job_status("job_a", "bob", admin=True)
    assert admin_view is not None
    assert admin_view.job_id == "job_a"


def test_job_status_links_only_for_uploaded_and_done_variants(
    intake: Intake, store: FakeJobStore, links: LinkSigner
) -> None:
    job = make_job(job_id="job_a", variant_count=4, started_at=T0)
    for n, state in enumerate(["done", "uploaded", "failed", "generating"], start=1):
        job.variant(n).state = VariantState(state)
        job.variant(n).object_name = f"images/sc-001/job_a/var_{n}.png"
        job.variant(n).thumb_name = f"thumbnails/sc-001/job_a/var_{n}.jpg"
    job.variant(3).error = "blocked"
    job.state = lifecycle.derive_state(job)
    store.add(job)

    view = intake.job_status("job_a", "alice")
    assert view is not None
    assert (view.state, view.status_text) == ("generating", "generating (1/4)")
    assert view.progress.model_dump() == {"done": 1, "failed": 1, "total": 4}
    assert (view.started_at, view.finished_at, view.duration_s) == (T0.isoformat(), None, None)
    by_n = {v.variant: v for v in view.variants}
    assert by_n[1].image_url == links.link("job_a", 1, "full")
    assert by_n[1].thumbnail_url == links.link("job_a", 1, "thumb")
    assert by_n[2].image_url == links.link("job_a", 2, "full")
    assert by_n[2].thumbnail_url is None
    for n in (3, 4):
        assert (by_n[n].image_url, by_n[n].thumbnail_url) == (None, None)
    assert by_n[3].error == "blocked"

    link = urlsplit(by_n[1].thumbnail_url or "")
    assert link.path == "/assets/job_a/1"
    query = parse_qs(link.query)
    assert links.verify("job_a", 1, query["size"][0], query["sig"][0])


def test_job_status_duration_of_finished_job(intake: Intake, store: FakeJobStore) -> None:
    job, _ = lifecycle.fail_job(make_job(job_id="job_a"), "boom", T0)
    assert job is not None
    job.created_at = T0.replace(second=0)
    store.add(job)
    view = intake.job_status("job_a", "alice")
    assert view is not None
    assert view.duration_s == 5.0


def test_job_status_reports_the_real_cost_per_variant_and_in_total(
    intake: Intake, store: FakeJobStore
) -> None:
    job = make_job(job_id="job_c", variant_count=3)
    job.variant(1).cost_usd = "0.0670"
    job.variant(2).cost_usd = "0.0670"
    store.add(job)
    view = intake.job_status("job_c", "alice")
    assert view is not None
    assert [v.cost_usd for v in view.variants] == ["0.0670", "0.0670", None]
    assert view.cost_usd == "0.1340"


def test_batch_status_counts_and_jobs(intake: Intake, store: FakeJobStore) -> None:
    body = accepted(intake.submit(request(1, 2, 1), "alice"))
    job_ids = [j["job_id"] for j in body["jobs"]]
    store.mutate(job_ids[0], lambda j: setattr(j, "state", JobState.COMPLETED))
    view = intake.batch_status(body["batch_id"], "alice")
    assert view is not None
    assert view.batch_id == body["batch_id"]
    assert (view.image_count, view.estimated_cost_usd) == (4, "0.1344")
    assert view.counts == {"completed": 1, "queued": 2}
    assert [j.job_id for j in view.jobs] == job_ids
    assert intake.batch_status(body["batch_id"], "bob") is None
    assert intake.batch_status(body["batch_id"], "bob", admin=True) is not None
    assert intake.batch_status("bat_missing", "alice") is None


# --------------------------------------------------------------------------- lanes


def test_the_dry_run_prices_both_lanes_side_by_side_and_says_what_economy_means(
    intake: Intake,
) -> None:
    plan = intake.plan(request(2, 1, run_mode="dry_run"), "alice")
    assert isinstance(plan, Plan)
    assert plan.lanes == {"live": "0.1008", "economy": "0.0504"}
    assert plan.estimated_cost_usd == "0.1008"  # the batch's lane: live
    assert "within 24 hours" in plan.economy


def test_economy_items_are_priced_at_half_and_recorded_but_not_published(
    make_intake: Callable[..., Intake], store: FakeJobStore, publisher: FakePublisher
) -> None:
    data = request(2, 1).model_dump(by_alias=True)
    data["items"][1]["lane"] = "economy"
    mixed = BatchRequest.model_validate(data)
    body = accepted(make_intake().submit(mixed, "alice"))
    assert body["estimated_cost_usd"] == str(Decimal("0.0336") * 2 + Decimal("0.0168"))
    live, economy = store.job("job_1_1"), store.job("job_1_2")
    assert (live.lane, economy.lane) == ("live", "economy")
    assert economy.price_per_image == "0.0168"
    assert economy.state == JobState.QUEUED
    assert [m.job_id for m, _ in publisher.published] == ["job_1_1"]


def test_a_whole_batch_can_go_economy(intake: Intake, publisher: FakePublisher) -> None:
    data = request(1, 1).model_dump(by_alias=True) | {"lane": "economy"}
    plan = intake.plan(BatchRequest.model_validate(data | {"runMode": "dry_run"}), "alice")
    assert isinstance(plan, Plan)
    assert {job.lane for job in plan.jobs} == {"economy"}
    assert plan.estimated_cost_usd == plan.lanes["economy"]
    accepted(intake.submit(BatchRequest.model_validate(data), "alice"))
    assert publisher.published == []


# --------------------------------------------------------------------------- models going away


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ("gemini-3.1-flash-image", "no shutdown date is announced yet"),
        ("gemini-2.5-flash-image", "Google announced its shutdown for 2026-10-02"),
    ],
)
def test_a_deprecated_models_batch_is_warned_naming_the_replacement_and_the_date(
    make_intake: Callable[..., Intake], model: str, words: str
) -> None:
    for intake in (make_intake(gemini_model=model), make_intake()):
        named = None if intake.settings.gemini_model == model else model
        plan = intake.plan(request(1, run_mode="dry_run", model=named), "alice")
        assert isinstance(plan, Plan)
        (warning,) = plan.warnings
        assert warning.scene_id is None
        assert f"{model} is deprecated ({words}" in warning.message
        assert "move to gemini-nano-banana-2.1" in warning.message
        assert "GEMINI_MODEL" in warning.message
    live = accepted(make_intake(gemini_model=model).submit(request(1), "alice"))
    assert "move to gemini-nano-banana-2.1" in live["warnings"][0]["message"]


def test_a_current_models_batch_has_no_model_warning(intake: Intake) -> None:
    plan = intake.plan(request(1, run_mode="dry_run"), "alice")
    assert isinstance(plan, Plan) and plan.warnings == []


def test_a_shut_down_model_is_refused_naming_its_replacement_before_anything_is_written(
    intake: Intake,
    model_directory: FakeModelDirectory,
    store: FakeJobStore,
    budget: FakeBudgetLedger,
) -> None:
    for outcome in (
        intake.plan(request(1, run_mode="dry_run", model="gemini-3-pro-image-preview"), "a"),
        intake.submit(request(1, model="gemini-3-pro-image-preview"), "alice", "k"),
    ):
        assert outcome == ModelUnavailable(
            "gemini-3-pro-image-preview",
            "gemini-3-pro-image-preview was shut down by Google on 2026-06-25; "
            "use gemini-3-pro-image",
            "gemini-3-pro-image",
        )
    # Refused from the catalog: the backend was not even asked.
    assert model_directory.checks == []
    assert (store.writes, budget.used) == ([], {})


# ------------------------------------------------------------------ per-row settings


def row_request(*items: dict[str, Any], run_mode: str = "dry_run") -> BatchRequest:
    return BatchRequest.model_validate(
        {"items": list(items), "runMode": run_mode, "spreadsheet_id": "sheet123", "worksheet": "S"},
        context={"limits": Limits(max_variants=8, images_bucket=IMAGES_BUCKET)},
    )


def test_each_row_is_priced_and_made_with_its_own_model_and_size(
    intake: Intake, store: FakeJobStore, model_directory: FakeModelDirectory
) -> None:
    rows = (
        {"scene_id": "a", "prompt": "p", "variants": 2},
        {"scene_id": "b", "prompt": "p", "variants": 1, "model": "gemini-3-pro-image"},
        {
            "scene_id": "c",
            "prompt": "p",
            "variants": 1,
            "model": "gemini-3-pro-image",
            "image_size": "4K",
        },
    )
    plan = intake.plan(row_request(*rows), "alice")
    assert isinstance(plan, Plan)
    assert [(j.model, j.image_size, j.estimated_cost_per_image_usd) for j in plan.jobs] == [
        ("gemini-nano-banana-2.1", "1K", "0.0336"),
        ("gemini-3-pro-image", "1K", "0.1340"),
        ("gemini-3-pro-image", "4K", "0.2400"),
    ]
    assert plan.estimated_cost_usd == "0.4412"  # 2 x 0.0336 + 0.134 + 0.24
    assert model_directory.checks == ["gemini-nano-banana-2.1", "gemini-3-pro-image"]
    outcome = intake.submit(row_request(*rows, run_mode="live"), "alice")
    assert isinstance(outcome, Accepted)
    made = {job.scene_id: job for job in store.get_jobs([f"job_1_{i}" for i in (1, 2, 3)])}
    assert [(made[s].model, made[s].image_size) for s in "abc"] == [
        ("gemini-nano-banana-2.1", None),
        ("gemini-3-pro-image", None),
        ("gemini-3-pro-image", "4K"),
    ]


def test_a_rows_retired_model_refuses_the_batch_and_a_deprecated_one_warns(
    intake: Intake, model_directory: FakeModelDirectory
) -> None:
    deprecated = {"scene_id": "a", "prompt": "p", "variants": 1, "model": "gemini-3.1-flash-image"}
    plan = intake.plan(row_request(deprecated), "alice")
    assert isinstance(plan, Plan)
    assert any("gemini-3.1-flash-image is deprecated" in w.message for w in plan.warnings)
    model_directory.retired["gemini-3-pro-image"] = "gone"
    row = {"scene_id": "b", "prompt": "p", "variants": 1, "model": "gemini-3-pro-image"}
    refused = intake.plan(row_request(deprecated, row), "alice")
    assert isinstance(refused, ModelUnavailable) and refused.model == "gemini-3-pro-image"


def test_a_templated_row_keeps_its_template_prompt_and_references(
    intake: Intake, store: FakeJobStore
) -> None:
    row = {
        "scene_id": "a",
        "variants": 1,
        "template": {"name": "hero", "text": "{character} on {setting}"},
        "fields": {"character": "Mara", "setting": "a cliff"},
        "avoid": "birds",
        "references": [{"role": "character", "name": "Mara", "ref": "https://e.com/m.png"}],
    }
    plan = intake.plan(row_request(row), "alice")
    assert isinstance(plan, Plan)
    prompt = "Mara on a cliff\n\nLeave these out of the image entirely: birds."
    assert plan.jobs[0].prompt == prompt
    assert plan.jobs[0].reference_images == 1
    assert isinstance(intake.submit(row_request(row, run_mode="live"), "alice"), Accepted)
    job = store.job("job_1_1")
    assert job.prompt == prompt
    assert job.template is not None and job.template.text == "{character} on {setting}"
    assert [(r.role, r.name) for r in job.references] == [("character", "Mara")]


def test_drafts_are_made_at_the_cheapest_model_and_priced_both_ways(intake: Intake) -> None:
    items = [
        {"scene_id": f"sc-{i}", "prompt": "p", "variants": 4, "image_size": "2K"} for i in range(2)
    ]
    request = BatchRequest.model_validate(
        {
            "items": items,
            "runMode": "dry_run",
            "spreadsheet_id": "sheet123",
            "worksheet": "Scenes",
            "drafts": True,
        },
        context={"limits": Limits(images_bucket=IMAGES_BUCKET)},
    )
    plan = intake.plan(request, "alice")
    job = plan.jobs[0]
    assert (job.model, job.image_size) == ("gemini-3.1-flash-lite-image", "1K")
    assert (job.final_model, job.final_size) == ("gemini-nano-banana-2.1", "2K")
    paths = plan.delivered
    every, drafted = Decimal(paths.every_image_final_usd), Decimal(paths.drafts_then_promote_usd)
    # Four at 2K ($0.0504 each) against four Lite drafts ($0.0336) and one 2K promotion.
    assert Decimal("0.2016") <= every < Decimal("0.21")
    assert Decimal("0.1848") <= drafted < every
