"""Dead letters: messages Pub/Sub gave up on fail their job or variant, with a reason."""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta

import pytest

from shared.contracts.messages import JobMessage, PushMessage
from shared.contracts.sheet_row import Text
from shared.domain import lifecycle
from shared.domain.errors import TransientError
from shared.domain.job import JobState, VariantState
from shared.services.dead_letters import DELIVERY_COUNT, DeadLetters
from shared.services.ledger import JobLedger
from shared.services.sheet_sync import SheetSync
from tests.fakes import T0, FakeClock, FakeJobStore, FakeSheetWriter, make_job, mark_done

LEASE = timedelta(seconds=300)
JOB_MESSAGE = JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001")


def job_letter(attempts: str | None = "5", data: bytes | None = None) -> PushMessage:
    attributes = {"batch_id": "bat_1"} | ({DELIVERY_COUNT: attempts} if attempts else {})
    body = JOB_MESSAGE.model_dump_json().encode() if data is None else data
    return PushMessage(body, attributes, "1", "t")


def thumbnail_letter(**metadata: str) -> PushMessage:
    payload = {"name": "images/sc-001/job_1/var_2.png", "metadata": metadata}
    attributes = {
        "eventType": "OBJECT_FINALIZE",
        "bucketId": "images-bucket",
        "objectId": "images/sc-001/job_1/var_2.png",
        DELIVERY_COUNT: "7",
    }
    return PushMessage(json.dumps(payload).encode(), attributes, "1", "t")


@pytest.fixture
def service(store: FakeJobStore, sheet_sync: SheetSync, clock: FakeClock) -> DeadLetters:
    return DeadLetters(JobLedger(store, sheet_sync), clock)


def test_job_gave_up_fails_its_unfinished_variants(
    service: DeadLetters, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    job = make_job(variant_count=3, started_at=T0, state=JobState.GENERATING)
    mark_done(job, 1)
    job.variant(2).error = "Gemini answered 429 RESOURCE_EXHAUSTED"
    store.add(job)
    service.handle(job_letter("5"))

    job = store.job("job_1")
    reason = "gave up after 5 deliveries: Gemini answered 429 RESOURCE_EXHAUSTED"
    assert [job.variant(n).state for n in (1, 2, 3)] == [
        VariantState.DONE,
        VariantState.FAILED,
        VariantState.FAILED,
    ]
    assert job.variant(3).error == reason
    assert job.state == JobState.PARTIAL
    assert job.finished_at == T0
    assert sheet_writer.row("sc-001")["status_img"] == Text(
        f"partial (1/3): variant 2: {reason}; variant 3: {reason}"
    )


def test_job_gave_up_without_delivery_count_or_error(
    service: DeadLetters, store: FakeJobStore
) -> None:
    store.add(make_job(variant_count=1))
    service.handle(job_letter(attempts=None))
    job = store.job("job_1")
    assert job.state == JobState.FAILED
    assert job.variant(1).error == (
        "gave up after several deliveries: no delivery reached a Gemini call "
        "(instances busy or failing before it)"
    )


def test_dead_letter_for_finished_job_changes_nothing(
    service: DeadLetters,
    store: FakeJobStore,
    sheet_sync: SheetSync,
    sheet_writer: FakeSheetWriter,
) -> None:
    job, _ = lifecycle.fail_job(make_job(), "earlier reason", T0)
    assert job is not None
    store.add(job)
    sheet_sync.sync("job_1")  # its row is up to date
    writes = len(sheet_writer.attempts)
    service.handle(job_letter())
    assert store.job("job_1").error == "variant 1: earlier reason; variant 2: earlier reason"
    assert len(sheet_writer.attempts) == writes


@pytest.mark.parametrize("data", [b"not json", b"{}"])
def test_malformed_or_unknown_job_letters_are_dropped(
    service: DeadLetters, store: FakeJobStore, sheet_writer: FakeSheetWriter, data: bytes
) -> None:
    service.handle(job_letter(data=data))
    service.handle(job_letter())  # job_1 does not exist
    assert store.writes == []
    assert sheet_writer.attempts == []


def test_thumbnail_gave_up_fails_the_variant(
    service: DeadLetters, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    job = make_job(started_at=T0, state=JobState.GENERATING)
    mark_done(job, 1)
    job.variant(2).state = VariantState.UPLOADED
    store.add(job)
    service.handle(thumbnail_letter(job_id="job_1", variant="2"))
    job = store.job("job_1")
    assert job.variant(2).state == VariantState.FAILED
    assert job.variant(2).error == "thumbnail gave up after 7 deliveries"
    assert job.state == JobState.PARTIAL
    assert sheet_writer.row("sc-001")["status_img"].value.startswith("partial (1/2)")


@pytest.mark.parametrize(
    "metadata", [{}, {"job_id": "job_1"}, {"job_id": "job_1", "variant": "two"}]
)
def test_thumbnail_letter_without_job_is_dropped(
    service: DeadLetters, store: FakeJobStore, metadata: dict[str, str]
) -> None:
    store.add(make_job())
    service.handle(thumbnail_letter(**metadata))
    assert store.writes == []


def test_thumbnail_letter_for_missing_job_is_dropped(
    service: DeadLetters, sheet_writer: FakeSheetWriter
) -> None:
    service.handle(thumbnail_letter(job_id="job_gone", variant="1"))
    assert sheet_writer.attempts == []


def test_transient_sheet_error_is_repaired_by_the_redelivery(
    service: DeadLetters, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job(variant_count=1))
    sheet_writer.errors.append(TransientError("Sheets API 503"))
    with contextlib.suppress(TransientError):
        service.handle(job_letter())
    assert store.job("job_1").state == JobState.FAILED
    service.handle(job_letter())  # Pub/Sub delivers the dead letter again
    assert sheet_writer.row("sc-001")["status_img"].value.startswith("failed: ")


def test_last_cause_is_the_latest_listed_error() -> None:
    job = make_job(variant_count=3)
    job.variant(1).error = "first"
    job.variant(3).error = "third"
    assert lifecycle.last_cause(job) == "third"


def test_last_cause_ignores_finished_variants() -> None:
    job = make_job(variant_count=2)
    job.variant(1).error = "Gemini answered 503 UNAVAILABLE"  # pending, retried
    job.variant(2).state = VariantState.FAILED
    job.variant(2).error = "prompt blocked by Gemini (SAFETY)"
    assert lifecycle.last_cause(job) == "Gemini answered 503 UNAVAILABLE"


def test_last_cause_names_a_holder_that_never_came_back() -> None:
    job, _ = lifecycle.claim(make_job(variant_count=1), 1, "clm_a", T0, LEASE, 3)
    assert job is not None
    assert lifecycle.last_cause(job) == (
        "the instance stopped during the Gemini call (or was still in it)"
    )


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("quota", "it was waiting for the Gemini quota"),
        ("daily_quota", "it was paused: the daily Gemini quota was used up"),
    ],
)
def test_last_cause_names_the_wait_a_job_died_in(reason: str, words: str) -> None:
    job = make_job(variant_count=1)
    job.variant(1).error = "Gemini answered 503 UNAVAILABLE"  # an earlier attempt
    waited, _ = lifecycle.wait(job, reason, T0 + LEASE, T0)  # type: ignore[arg-type]
    assert waited is not None
    assert lifecycle.last_cause(waited) == words


def test_dead_letter_never_says_no_error_was_recorded(
    service: DeadLetters, store: FakeJobStore
) -> None:
    job, _ = lifecycle.claim(make_job(variant_count=1), 1, "clm_dead", T0, LEASE, 3)
    assert job is not None
    store.add(job)
    service.handle(job_letter("100"))
    assert store.job("job_1").error == (
        "variant 1: gave up after 100 deliveries: "
        "the instance stopped during the Gemini call (or was still in it)"
    )


def test_job_finished_is_logged_once_for_the_metrics(
    service: DeadLetters, store: FakeJobStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.add(make_job(variant_count=2))
    with caplog.at_level("INFO", logger="shared.services.ledger"):
        service.handle(job_letter("5"))
        service.handle(job_letter("6"))  # a redelivered dead letter
    finished = [r for r in caplog.records if getattr(r, "event", None) == "job_finished"]
    assert len(finished) == 1
    assert finished[0].state == "failed"  # type: ignore[attr-defined]
    assert finished[0].job_id == "job_1"  # type: ignore[attr-defined]
