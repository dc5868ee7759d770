"""Dead letters: messages Pub/Sub gave up on fail their job or variant, with a reason."""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta
from decimal import Decimal

import pytest

from shared.adapters.imaging import make_thumbnail
from shared.config.settings import Settings
from shared.contracts.messages import JobMessage, PushMessage
from shared.contracts.objects import image_metadata
from shared.contracts.sheet_row import Text
from shared.domain import lifecycle, versions
from shared.domain.errors import TransientError
from shared.domain.job import Job, JobState, VariantState
from shared.services.dead_letters import DELIVERY_COUNT, DeadLetters
from shared.services.ledger import JobLedger
from shared.services.sheet_sync import SheetSync
from shared.services.thumbnails import Thumbnails
from tests.fakes import (
    IMAGES_BUCKET,
    T0,
    FakeBudgetLedger,
    FakeClock,
    FakeJobStore,
    FakeObjectStore,
    FakeSheetWriter,
    finalize_event,
    make_job,
    make_settings,
    mark_done,
    png_bytes,
)

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
def service(
    store: FakeJobStore, sheet_sync: SheetSync, objects: FakeObjectStore, clock: FakeClock
) -> DeadLetters:
    return DeadLetters(JobLedger(store, sheet_sync), make_settings(), objects, clock)


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


# ----------------------------------------------------------------- issue 27: made images are kept

SPENT = lifecycle.Spent("gemini-3.1-flash-image", "0.0670")
DAY = T0.strftime("%Y-%m-%d")
V2_NAME = "images/sc-001/job_1/var_1_v2.png"


@pytest.fixture
def kept(
    store: FakeJobStore,
    sheet_sync: SheetSync,
    budget: FakeBudgetLedger,
    objects: FakeObjectStore,
    settings: Settings,
    clock: FakeClock,
) -> DeadLetters:
    """Dead letters as wired: the budget settled, the images bucket looked in."""
    return DeadLetters(JobLedger(store, sheet_sync, budget), settings, objects, clock)


def version_letter(n: int = 1, version: int = 2) -> PushMessage:
    body = JOB_MESSAGE.model_copy(update={"variant": n, "version": version})
    return PushMessage(body.model_dump_json().encode(), {DELIVERY_COUNT: "5"}, "1", "t")


def job_with_version() -> Job:
    """Variant 1 done, its version 2 (a re-roll) claimed by a holder that stopped."""
    done = mark_done(make_job(variant_count=1, started_at=T0), 1)
    done.state = lifecycle.derive_state(done)
    request = versions.VersionRequest(None, 4242, "alice", DAY, "0.0670")
    asked, _ = versions.add_version(done, 1, request, T0)
    assert asked is not None
    claimed, _ = lifecycle.claim(asked, 1, "clm_dead", T0, LEASE, 3, version=2)
    assert claimed is not None
    return claimed


def settles(budget: FakeBudgetLedger) -> list[tuple[object, ...]]:
    return [call[3:] for call in budget.calls if call[0] == "settle"]


def test_a_recorded_upload_of_a_version_is_kept_by_its_dead_letter(
    kept: DeadLetters,
    store: FakeJobStore,
    budget: FakeBudgetLedger,
    objects: FakeObjectStore,
    settings: Settings,
    sheet_sync: SheetSync,
) -> None:
    """The finding as stated: a version recorded as uploaded is not failed by its
    dead letter; it gets its thumbnail and is charged once (fails without the
    UPLOADED guard of ``lifecycle.gave_up_on``)."""
    job, _ = lifecycle.uploaded(job_with_version(), 1, V2_NAME, "image/png", T0, SPENT, 2)
    assert job is not None
    store.add(job)
    objects.put(
        IMAGES_BUCKET, V2_NAME, png_bytes((64, 64)), "image/png", image_metadata(job, 1, SPENT, 2)
    )
    kept.handle(version_letter())
    assert store.job("job_1").slot(1, 2).state == VariantState.UPLOADED

    thumbnails = Thumbnails(settings, JobLedger(store, sheet_sync, budget), objects, make_thumbnail)
    thumbnails.handle(finalize_event(V2_NAME, **image_metadata(job, 1, SPENT, 2)))
    version = store.job("job_1").slot(1, 2)
    assert (version.state, version.thumb_name) == (
        VariantState.DONE,
        "thumbnails/sc-001/job_1/var_1_v2.jpg",
    )
    assert settles(budget) == [("job_1/1/v2", 0, Decimal(0))]


def test_a_versions_dead_letter_keeps_an_image_stored_but_not_recorded(
    kept: DeadLetters,
    store: FakeJobStore,
    budget: FakeBudgetLedger,
    objects: FakeObjectStore,
    settings: Settings,
    sheet_sync: SheetSync,
    sheet_writer: FakeSheetWriter,
) -> None:
    """Its holder stored the image and stopped before recording it: the image was
    made and paid, so the dead letter records it (charged once, never given back)
    and its notification makes its thumbnail."""
    job = job_with_version()
    store.add(job)
    objects.put(
        IMAGES_BUCKET, V2_NAME, png_bytes((64, 64)), "image/png", image_metadata(job, 1, SPENT, 2)
    )
    kept.handle(version_letter())

    version = store.job("job_1").slot(1, 2)
    assert (version.state, version.object_name, version.cost_usd) == (
        VariantState.UPLOADED,
        V2_NAME,
        "0.0670",
    )
    assert settles(budget) == [("job_1/1/v2", 0, Decimal(0))]
    thumbnails = Thumbnails(settings, JobLedger(store, sheet_sync, budget), objects, make_thumbnail)
    thumbnails.handle(finalize_event(V2_NAME, **image_metadata(job, 1, SPENT, 2)))
    stored = store.job("job_1")
    assert stored.slot(1, 2).state == VariantState.DONE
    assert stored.variant(1).current()[0] == 2
    assert settles(budget) == [("job_1/1/v2", 0, Decimal(0))]  # nothing given back, ever
    assert sheet_writer.row("sc-001")["status_img"] == Text("completed")


def test_a_version_with_no_image_is_still_failed_and_given_back(
    kept: DeadLetters, store: FakeJobStore, budget: FakeBudgetLedger
) -> None:
    store.add(job_with_version())
    kept.handle(version_letter())
    version = store.job("job_1").slot(1, 2)
    assert (version.state, version.error) == (VariantState.FAILED, "gave up after 5 deliveries")
    assert settles(budget) == [("job_1/1/v2", -1, Decimal("-0.0670"))]


def test_made_and_paid_never_ends_failed_and_free_whichever_letter_comes_first(
    kept: DeadLetters, store: FakeJobStore, budget: FakeBudgetLedger, objects: FakeObjectStore
) -> None:
    """The version's dead letter, then its thumbnail's (the thumbnail could not be
    made either): the image stays recorded and charged, as in the other order."""
    job = job_with_version()
    store.add(job)
    metadata = image_metadata(job, 1, SPENT, 2)
    objects.put(IMAGES_BUCKET, V2_NAME, png_bytes((64, 64)), "image/png", metadata)
    kept.handle(version_letter())
    payload = {"name": V2_NAME, "metadata": metadata}
    attributes = {"eventType": "OBJECT_FINALIZE", "bucketId": IMAGES_BUCKET, "objectId": V2_NAME}
    kept.handle(PushMessage(json.dumps(payload).encode(), attributes, "2", "t"))

    version = store.job("job_1").slot(1, 2)
    assert (version.state, version.object_name, version.cost_usd) == (
        VariantState.FAILED,
        V2_NAME,
        "0.0670",
    )
    assert version.error == "thumbnail gave up after several deliveries"
    assert settles(budget) == [("job_1/1/v2", 0, Decimal(0))]


def test_a_jobs_dead_letter_keeps_first_images_stored_but_not_recorded(
    kept: DeadLetters, store: FakeJobStore, budget: FakeBudgetLedger, objects: FakeObjectStore
) -> None:
    """The same for the job's first images: variant 1 stored (its holder stopped
    before recording it) is kept and charged; variant 2, never made, fails."""
    job, _ = lifecycle.claim(make_job(budget_day=DAY), 1, "clm_dead", T0, LEASE, 3)
    assert job is not None
    store.add(job)
    objects.put(
        IMAGES_BUCKET,
        "images/sc-001/job_1/var_1.png",
        png_bytes(),
        "image/png",
        image_metadata(job, 1, SPENT),
    )
    kept.handle(job_letter("5"))

    stored = store.job("job_1")
    assert [stored.variant(n).state for n in (1, 2)] == [
        VariantState.UPLOADED,
        VariantState.FAILED,
    ]
    assert stored.variant(1).cost_usd == "0.0670"
    assert stored.state == JobState.GENERATING  # variant 1's thumbnail ends it
    assert sorted(settles(budget)) == [
        ("job_1/1", 0, Decimal(0)),
        ("job_1/2", -1, Decimal("-0.0670")),
    ]


def test_a_thumbnail_letter_for_an_object_that_is_not_the_variants_image_is_dropped(
    kept: DeadLetters, store: FakeJobStore, budget: FakeBudgetLedger
) -> None:
    """A stray object under images/ naming a variant in its metadata fails nothing
    and charges nothing."""
    job = make_job(started_at=T0, state=JobState.GENERATING, budget_day=DAY)
    job.variant(1).state = VariantState.UPLOADED
    job.variant(1).object_name = "images/sc-001/job_1/var_1.png"
    store.add(job)
    stray = "images/sc-001/job_1/var_1.webp"
    payload = {"name": stray, "metadata": {"job_id": "job_1", "variant": "1", "cost_usd": "9"}}
    attributes = {"eventType": "OBJECT_FINALIZE", "bucketId": IMAGES_BUCKET, "objectId": stray}
    kept.handle(PushMessage(json.dumps(payload).encode(), attributes, "3", "t"))
    assert store.job("job_1").variant(1).state == VariantState.UPLOADED
    assert store.writes == []
    assert settles(budget) == []


@pytest.mark.parametrize("ended", [VariantState.FAILED, VariantState.CANCELLED])
def test_a_thumbnail_letter_records_an_image_given_up_on_before_it_was_recorded(
    kept: DeadLetters, store: FakeJobStore, budget: FakeBudgetLedger, ended: VariantState
) -> None:
    """Given up on while its stopped holder had stored it (the sweeper's age limit,
    a cancel), then its thumbnail could not be made: the image was made and paid,
    so it ends failed with its name and cost, charged once, not failed for free."""
    job = make_job(variant_count=1, budget_day=DAY, started_at=T0)
    job.variant(1).state, job.variant(1).error = ended, "dropped"
    job.state = lifecycle.derive_state(job)
    store.add(job)
    kept.ledger.follow_up("job_1")  # its budget was given back, as for any unmade image
    assert settles(budget) == [("job_1/1", -1, Decimal("-0.0670"))]

    name = "images/sc-001/job_1/var_1.png"
    payload = {"name": name, "metadata": image_metadata(job, 1, SPENT)}
    attributes = {"eventType": "OBJECT_FINALIZE", "bucketId": IMAGES_BUCKET, "objectId": name}
    kept.handle(PushMessage(json.dumps(payload).encode(), attributes, "4", "t"))

    variant = store.job("job_1").variant(1)
    assert (variant.state, variant.object_name, variant.cost_usd) == (
        VariantState.FAILED,
        name,
        "0.0670",
    )
    assert settles(budget)[1:] == [("job_1/1/made", 1, Decimal("0.0670"))]


def test_a_letter_for_a_version_that_does_not_exist_is_dropped(
    kept: DeadLetters, store: FakeJobStore
) -> None:
    store.add(make_job(variant_count=1))
    kept.handle(version_letter(1, 7))  # acknowledged, not raised (retried for ever)
    assert store.writes == []
