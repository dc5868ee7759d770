"""Generation service on fakes: every variant made and paid for exactly once."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from shared.adapters.cloud_logging import setup_logging
from shared.adapters.image_check import image_mime
from shared.adapters.imaging import make_thumbnail
from shared.contracts.links import LinkSigner
from shared.contracts.messages import JobMessage
from shared.contracts.sheet_row import Formula, Text, row_digest
from shared.domain.errors import ModelGone, PermanentError, TransientError
from shared.domain.job import JobState, VariantState
from shared.services.generation import Generation
from shared.services.ledger import JobLedger
from shared.services.ports import GeneratedImage, ReferenceImage
from shared.services.sheet_sync import SheetSync
from shared.services.thumbnails import Thumbnails
from tests.fakes import (
    IMAGES_BUCKET,
    T0,
    FakeClock,
    FakeImageGenerator,
    FakeJobStore,
    FakeObjectStore,
    FakeQuotaGate,
    FakeReferenceLoader,
    FakeSheetWriter,
    ManualHeartbeat,
    finalize_event,
    jpeg_bytes,
    make_job,
    make_settings,
    mark_done,
    png_bytes,
)

PROMPT = "a red fox in the snow"
MESSAGE = JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001")
Build = Callable[..., Generation]


def image_names(objects: FakeObjectStore) -> list[str]:
    return objects.names(IMAGES_BUCKET)


def test_generates_every_variant_with_object_names_and_metadata(
    make_generation: Build,
    store: FakeJobStore,
    objects: FakeObjectStore,
    generator: FakeImageGenerator,
) -> None:
    store.add(make_job(variant_count=3))
    generator.on(PROMPT, 2, GeneratedImage(jpeg_bytes(), "image/jpeg", {"prompt_tokens": 7}))
    make_generation().handle(MESSAGE)

    assert image_names(objects) == [
        "images/sc-001/job_1/var_1.png",
        "images/sc-001/job_1/var_2.jpg",
        "images/sc-001/job_1/var_3.png",
    ]
    stored = objects.objects[(IMAGES_BUCKET, "images/sc-001/job_1/var_2.jpg")]
    assert stored.content_type == "image/jpeg"
    assert stored.metadata == {
        "job_id": "job_1",
        "scene_id": "sc-001",
        "batch_id": "bat_1",
        "variant": "2",
        "model": "gemini-3.1-flash-image",
        "cost_usd": "0.0670",
        "prompt_tokens": "7",
    }
    assert (
        objects.objects[(IMAGES_BUCKET, "images/sc-001/job_1/var_1.png")].metadata["total_tokens"]
        == "1290"
    )

    assert sorted(c.seed for c in generator.calls) == [1, 2, 3]
    assert {(c.model, c.prompt, c.references) for c in generator.calls} == {
        ("gemini-3.1-flash-image", PROMPT, ())
    }
    job = store.job("job_1")
    assert job.state == JobState.GENERATING  # done once thumbnails exist
    assert job.started_at == T0
    for n in (1, 2, 3):
        v = job.variant(n)
        assert v.state == VariantState.UPLOADED
        assert (v.claim_id, v.claim_expires, v.attempts) == (None, None, 1)
    assert job.variant(2).object_name == "images/sc-001/job_1/var_2.jpg"
    assert job.variant(2).content_type == "image/jpeg"


def test_references_are_passed_to_the_generator(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    references: FakeReferenceLoader,
) -> None:
    refs = [ReferenceImage(png_bytes(), "image/png")]
    references.packs["https://example.com/refs.zip"] = refs
    store.add(make_job(variant_count=1, ref_pack_public_url="https://example.com/refs.zip"))
    make_generation().handle(MESSAGE)
    assert references.loads == ["https://example.com/refs.zip"]
    assert [c.references for c in generator.calls] == [tuple(refs)]


def test_missing_job_is_dropped(
    make_generation: Build, generator: FakeImageGenerator, sheet_writer: FakeSheetWriter
) -> None:
    make_generation().handle(MESSAGE)
    assert generator.calls == []
    assert sheet_writer.attempts == []


@pytest.mark.parametrize("state", [JobState.COMPLETED, JobState.PARTIAL, JobState.FAILED])
def test_terminal_job_is_skipped(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    objects: FakeObjectStore,
    sheet_writer: FakeSheetWriter,
    links: LinkSigner,
    state: JobState,
) -> None:
    job = make_job(state=state)
    job.sheet_digest = row_digest(job, links)  # the row shows the job already
    store.add(job)
    make_generation().handle(MESSAGE)
    assert generator.calls == []
    assert objects.calls == []
    assert sheet_writer.attempts == []
    assert ("update_job", "job_1") not in store.calls


def test_redelivery_of_a_finished_job_writes_a_stale_row_once(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    sheet_writer: FakeSheetWriter,
) -> None:
    # The instance died after finishing the job, before writing its row.
    store.add(make_job(state=JobState.COMPLETED))
    make_generation().handle(MESSAGE)
    make_generation().handle(MESSAGE)
    assert generator.calls == []
    assert [w.cells["status_img"] for w in sheet_writer.attempts] == [Text("completed")]


def test_redelivery_after_success_generates_nothing_more(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    objects: FakeObjectStore,
) -> None:
    store.add(make_job())
    service = make_generation()
    service.handle(MESSAGE)
    assert generator.count() == 2
    creates = [c for c in objects.calls if c[0] == "create"]

    service.handle(MESSAGE)
    assert generator.count() == 2
    assert [c for c in objects.calls if c[0] == "create"] == creates
    assert {v.attempts for v in store.job("job_1").variants.values()} == {1}


def test_existing_object_is_recorded_not_regenerated(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    objects: FakeObjectStore,
) -> None:
    store.add(make_job())
    objects.put(IMAGES_BUCKET, "images/sc-001/job_1/var_1.webp", b"RIFF....WEBP")
    # var_10-style names must not be mistaken for var_1.
    objects.put(IMAGES_BUCKET, "images/sc-001/job_1/var_20.png", png_bytes())
    make_generation().handle(MESSAGE)

    assert [c.seed for c in generator.calls] == [2]
    job = store.job("job_1")
    assert job.variant(1).state == VariantState.UPLOADED
    assert job.variant(1).object_name == "images/sc-001/job_1/var_1.webp"
    assert job.variant(2).object_name == "images/sc-001/job_1/var_2.png"
    assert ("create", IMAGES_BUCKET, "images/sc-001/job_1/var_1.png") not in objects.calls


def test_permanent_failure_of_one_variant_keeps_the_others(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    objects: FakeObjectStore,
    sheet_sync: SheetSync,
    sheet_writer: FakeSheetWriter,
    clock: FakeClock,
) -> None:
    store.add(make_job(variant_count=3))
    generator.on(PROMPT, 2, PermanentError("prompt blocked by Gemini (SAFETY)"))
    make_generation().handle(MESSAGE)  # no exception: nothing to retry

    job = store.job("job_1")
    assert [job.variant(n).state for n in (1, 2, 3)] == [
        VariantState.UPLOADED,
        VariantState.FAILED,
        VariantState.UPLOADED,
    ]
    assert job.variant(2).error == "prompt blocked by Gemini (SAFETY)"
    assert image_names(objects) == [
        "images/sc-001/job_1/var_1.png",
        "images/sc-001/job_1/var_3.png",
    ]
    assert generator.count() == 3

    # The thumbnails finish the job as partial, with the reason.
    thumbnails = Thumbnails(
        make_settings(), JobLedger(store, sheet_sync), objects, make_thumbnail, clock
    )
    for n in (1, 3):
        thumbnails.handle(finalize_event(f"images/sc-001/job_1/var_{n}.png", variant=n))
    job = store.job("job_1")
    assert job.state == JobState.PARTIAL
    assert job.error == "variant 2: prompt blocked by Gemini (SAFETY)"
    row = sheet_writer.row("sc-001")
    assert row["status_img"] == Text("partial (2/3): variant 2: prompt blocked by Gemini (SAFETY)")
    assert isinstance(row["nano_img_1"], Formula)
    assert "nano_img_2" not in row


def test_permanent_failure_of_every_variant_fails_the_job(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    sheet_writer: FakeSheetWriter,
) -> None:
    store.add(make_job(variant_count=1))
    generator.on(PROMPT, 1, PermanentError("Gemini returned no image (finish reason IMAGE_SAFETY)"))
    make_generation().handle(MESSAGE)
    job = store.job("job_1")
    assert job.state == JobState.FAILED
    assert job.finished_at == T0
    assert job.error == "variant 1: Gemini returned no image (finish reason IMAGE_SAFETY)"
    assert sheet_writer.row("sc-001")["status_img"] == Text(
        "failed: variant 1: Gemini returned no image (finish reason IMAGE_SAFETY)"
    )


def test_transient_failure_releases_claim_and_redelivery_makes_only_the_missing_variant(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    objects: FakeObjectStore,
) -> None:
    store.add(make_job(variant_count=3))
    generator.on(PROMPT, 2, TransientError("Gemini answered 429 RESOURCE_EXHAUSTED"))
    service = make_generation()

    with pytest.raises(TransientError, match="429 RESOURCE_EXHAUSTED"):
        service.handle(MESSAGE)
    job = store.job("job_1")
    v2 = job.variant(2)
    assert (v2.state, v2.claim_id, v2.claim_expires) == (VariantState.PENDING, None, None)
    assert v2.error == "Gemini answered 429 RESOURCE_EXHAUSTED"
    assert job.variant(1).state == VariantState.UPLOADED
    assert job.variant(3).state == VariantState.UPLOADED
    assert job.state == JobState.GENERATING
    assert (generator.count(variant=1), generator.count(variant=2), generator.count(variant=3)) == (
        1,
        1,
        1,
    )

    service.handle(MESSAGE)  # the redelivery
    assert (generator.count(variant=1), generator.count(variant=2), generator.count(variant=3)) == (
        1,
        2,
        1,
    )
    job = store.job("job_1")
    assert job.variant(2).state == VariantState.UPLOADED
    assert job.variant(2).error is None
    assert job.variant(2).attempts == 2
    assert (job.variant(1).attempts, job.variant(3).attempts) == (1, 1)
    assert "images/sc-001/job_1/var_2.png" in image_names(objects)


def test_variant_held_by_live_claim_waits_then_asks_for_retry(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    clock: FakeClock,
) -> None:
    job = make_job(variant_count=1, started_at=T0, state=JobState.GENERATING)
    job.variant(1).state = VariantState.GENERATING
    job.variant(1).claim_id = "clm_other"
    job.variant(1).claim_expires = T0 + timedelta(seconds=300)
    job.variant(1).attempts = 1
    store.add(job)

    with pytest.raises(TransientError, match="variant 1 is held by another delivery"):
        make_generation(claim_wait_s=5).handle(MESSAGE)
    assert clock.sleeps == [2.0, 2.0, 1.0]  # polled until the 5 s wait ran out
    assert generator.calls == []
    v = store.job("job_1").variant(1)
    assert (v.state, v.claim_id, v.attempts) == (VariantState.GENERATING, "clm_other", 1)


def test_variant_held_by_claim_that_expires_is_taken_over(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    clock: FakeClock,
) -> None:
    job = make_job(variant_count=1, started_at=T0, state=JobState.GENERATING)
    job.variant(1).state = VariantState.GENERATING
    job.variant(1).claim_id = "clm_dead"
    job.variant(1).claim_expires = T0 + timedelta(seconds=5)
    job.variant(1).attempts = 1
    store.add(job)

    make_generation(claim_wait_s=240).handle(MESSAGE)
    assert sum(clock.sleeps) == pytest.approx(5.0)
    assert generator.count() == 1
    v = store.job("job_1").variant(1)
    assert (v.state, v.attempts) == (VariantState.UPLOADED, 2)


def test_reference_pack_permanent_error_fails_the_job(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    references: FakeReferenceLoader,
    sheet_writer: FakeSheetWriter,
) -> None:
    url = "https://example.com/refs.zip"
    references.packs[url] = PermanentError(f"reference URL {url} answered 404")
    store.add(make_job(ref_pack_public_url=url))
    make_generation().handle(MESSAGE)

    assert generator.calls == []
    job = store.job("job_1")
    assert job.state == JobState.FAILED
    assert {v.state for v in job.variants.values()} == {VariantState.FAILED}
    assert "reference pack" in (job.error or "")
    assert "answered 404" in (job.error or "")
    status = sheet_writer.row("sc-001")["status_img"]
    assert status.value.startswith("failed: ")
    assert "reference pack" in status.value


def test_a_pack_not_read_in_time_counts_as_a_failure_until_the_budget_is_used_up(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    references: FakeReferenceLoader,
    sheet_writer: FakeSheetWriter,
) -> None:
    url = "https://example.com/refs.zip"
    slow = f"reference {url}: the pack took longer than the 20 s allowed"
    references.packs[url] = TransientError(slow)
    store.add(make_job(ref_pack_public_url=url))
    # Retried (the server may recover), each delivery one real failure of every image.
    for failures in (1, 2):
        with pytest.raises(TransientError):
            make_generation(gemini_failure_budget=3).handle(MESSAGE)
        job = store.job("job_1")
        assert job.state == JobState.GENERATING
        assert [v.failures for v in job.variants.values()] == [failures] * job.variant_count
    # The third uses the budget up: the job fails with the reason and the delivery is done.
    make_generation(gemini_failure_budget=3).handle(MESSAGE)
    assert generator.calls == []
    job = store.job("job_1")
    assert job.state == JobState.FAILED
    assert job.variant(1).error == f"gave up after 3 failed attempts; the last: {slow}"
    assert "took longer than the 20 s allowed" in sheet_writer.row("sc-001")["status_img"].value


def test_message_older_than_max_event_age_fails_the_job(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    sheet_writer: FakeSheetWriter,
) -> None:
    # Made 7201 s ago; its message came again just now (the sweeper's, say): the
    # limit is on the job's wait in all.
    store.add(make_job(created_at=T0 - timedelta(seconds=7201)))
    make_generation(max_event_age_s=7200).handle(MESSAGE, T0)  # acknowledged
    assert generator.calls == []
    job = store.job("job_1")
    assert job.state == JobState.FAILED
    assert "dropped: the job waited 7201 s, over the 7200 s limit" in (job.error or "")
    assert sheet_writer.row("sc-001")["status_img"].value.startswith("failed: ")


@pytest.mark.parametrize("age_s", [0, 7200])
def test_message_within_max_event_age_is_generated(
    make_generation: Build, store: FakeJobStore, generator: FakeImageGenerator, age_s: int
) -> None:
    store.add(make_job())
    make_generation(max_event_age_s=7200).handle(MESSAGE, T0 - timedelta(seconds=age_s))
    assert generator.count() == 2


def test_old_message_for_finished_job_changes_nothing(
    make_generation: Build, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job(state=JobState.COMPLETED))
    make_generation(max_event_age_s=60).handle(MESSAGE, T0 - timedelta(days=2))
    job = store.job("job_1")
    assert (job.state, job.error) == (JobState.COMPLETED, None)
    assert [w.cells["status_img"] for w in sheet_writer.attempts] == [Text("completed")]


def test_aspect_ratio_and_image_size_reach_the_generator(
    make_generation: Build, store: FakeJobStore, generator: FakeImageGenerator
) -> None:
    store.add(make_job(variant_count=1, aspect_ratio="16:9", image_size="2K"))
    make_generation().handle(MESSAGE)
    assert len(generator.calls) == 1
    passed = repr(generator.calls[0].options)
    assert "16:9" in passed
    assert "2K" in passed


@pytest.mark.parametrize(
    ("on_job", "configured", "expected"),
    [
        ((None, None), ("", ""), {"aspect_ratio": None, "image_size": None}),
        ((None, None), ("3:4", "4K"), {"aspect_ratio": "3:4", "image_size": "4K"}),
        (("16:9", None), ("3:4", "4K"), {"aspect_ratio": "16:9", "image_size": "4K"}),
        (("1:1", "1K"), ("3:4", "4K"), {"aspect_ratio": "1:1", "image_size": "1K"}),
        (("1:8", "512"), ("", ""), {"aspect_ratio": "1:8", "image_size": "512"}),
    ],
)
def test_image_shape_comes_from_the_job_else_from_configuration(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    on_job: tuple[str | None, str | None],
    configured: tuple[str, str],
    expected: dict[str, str | None],
) -> None:
    store.add(make_job(variant_count=1, aspect_ratio=on_job[0], image_size=on_job[1]))
    build = make_generation(gemini_aspect_ratio=configured[0], gemini_image_size=configured[1])
    build.handle(MESSAGE)
    # The catalog's lowest thinking level of the model, unless configured.
    assert generator.calls[0].options == {**expected, "thinking_level": "MINIMAL"}


@pytest.mark.parametrize(
    ("model", "configured", "sent"),
    [
        ("gemini-nano-banana-2.1", "", "MINIMAL"),
        ("gemini-nano-banana-2.1", "MEDIUM", "MEDIUM"),
        ("gemini-3.1-flash-image", "HIGH", "HIGH"),
        ("gemini-3.1-flash-image", "MEDIUM", "MINIMAL"),  # a level it does not take
        ("gemini-3-pro-image", "HIGH", None),  # thinks always, takes no level
        ("gemini-2.5-flash-image", "HIGH", None),  # takes no thinking level
    ],
)
def test_thinking_level_is_the_models_lowest_unless_configured(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    model: str,
    configured: str,
    sent: str | None,
) -> None:
    store.add(make_job(variant_count=1, model=model))
    make_generation(gemini_thinking_level=configured).handle(MESSAGE)
    assert generator.calls[0].options["thinking_level"] == sent


def test_references_beyond_the_models_limit_are_not_sent(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    references: FakeReferenceLoader,
) -> None:
    refs = [ReferenceImage(png_bytes(color=(i, i, i)), "image/png") for i in range(6)]
    references.packs["https://example.com/refs.zip"] = refs
    url = "https://example.com/refs.zip"
    store.add(make_job(variant_count=1, model="gemini-2.5-flash-image", ref_pack_public_url=url))
    make_generation().handle(MESSAGE)
    assert generator.calls[0].references == tuple(refs[:3])  # 2.5 Flash Image takes 3


def test_sheet_row_is_synced(
    make_generation: Build, store: FakeJobStore, sheet_writer: FakeSheetWriter
) -> None:
    store.add(make_job())
    make_generation().handle(MESSAGE)
    assert sheet_writer.writes
    last = sheet_writer.writes[-1]
    assert (last.spreadsheet_id, last.worksheet, last.scene_id) == ("sheet123", "Scenes", "sc-001")
    assert last.cells["status_img"] == Text("generating (0/2)")
    assert last.cells["job_id"] == Text("job_1")
    assert store.job("job_1").sheet_digest is not None


def test_fast_thumbnail_failure_is_not_undone_by_the_upload_record(
    make_generation: Build,
    store: FakeJobStore,
    objects: FakeObjectStore,
    generator: FakeImageGenerator,
    sheet_sync: SheetSync,
    clock: FakeClock,
) -> None:
    # The finalize notification is handled before generation records the upload,
    # and the image turns out to be undecodable.
    store.add(make_job(variant_count=1))
    generator.on(PROMPT, 1, GeneratedImage(b"\x89PNG\r\n\x1a\n" + b"garbage", "image/png"))
    thumbnails = Thumbnails(
        make_settings(), JobLedger(store, sheet_sync), objects, make_thumbnail, clock
    )

    def notify(bucket: str, name: str) -> None:
        if name.startswith("images/"):
            thumbnails.handle(finalize_event(name, variant=1))

    objects.on_create = notify
    make_generation().handle(MESSAGE)

    job = store.job("job_1")
    assert job.variant(1).state == VariantState.FAILED
    assert job.terminal


# --------------------------------------------------------------------------- cost and usage


def test_model_tokens_and_cost_are_kept_on_the_variant_and_the_object(
    make_generation: Build,
    store: FakeJobStore,
    objects: FakeObjectStore,
    generator: FakeImageGenerator,
) -> None:
    store.add(make_job(variant_count=3))
    usage = {
        "prompt_tokens": 2000,
        "output_tokens": 2540,
        "output_image_tokens": 2520,
        "thought_tokens": 100,
        "total_tokens": 4640,
    }
    generator.on(PROMPT, 1, GeneratedImage(png_bytes(), "image/png", usage))
    generator.on(PROMPT, 3, PermanentError("Gemini returned no image: ... (NO_IMAGE)"))
    make_generation().handle(MESSAGE)

    job = store.job("job_1")
    v1, v2, v3 = (job.variant(n) for n in (1, 2, 3))
    # 2000 x $0.50/M + 2520 x $60/M + (20 + 100) x $3/M = 0.00100 + 0.15120 + 0.00036
    assert (v1.model, v1.cost_usd, v1.usage) == ("gemini-3.1-flash-image", "0.1526", usage)
    # No tokens reported: the catalog's price per image at the size.
    assert (v2.cost_usd, v2.usage) == ("0.0670", {"total_tokens": 1290})
    assert (v3.cost_usd, v3.usage) == (None, {})  # no image, nothing billed per image
    assert job.cost() == Decimal("0.2196")
    meta = objects.objects[(IMAGES_BUCKET, "images/sc-001/job_1/var_1.png")].metadata
    assert {k: meta[k] for k in ("model", "cost_usd", "output_image_tokens", "total_tokens")} == {
        "model": "gemini-3.1-flash-image",
        "cost_usd": "0.1526",
        "output_image_tokens": "2520",
        "total_tokens": "4640",
    }


def test_object_found_from_a_dead_delivery_is_recorded_with_its_cost(
    make_generation: Build, store: FakeJobStore, objects: FakeObjectStore
) -> None:
    store.add(make_job(variant_count=1))
    objects.put(IMAGES_BUCKET, "images/sc-001/job_1/var_1.jpg", jpeg_bytes(), "image/jpeg")
    make_generation().handle(MESSAGE)
    v = store.job("job_1").variant(1)
    assert (v.state, v.content_type, v.cost_usd) == (
        VariantState.UPLOADED,
        "image/jpeg",
        "0.0670",
    )


# --------------------------------------------------------------------------- logs


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    """The fields of the log records of one event (``extra`` lands on the record)."""
    return [vars(r) for r in caplog.records if getattr(r, "event", None) == name]


def test_every_state_change_is_logged_with_job_batch_scene_variant_attempt_duration(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    store.add(make_job(variant_count=2))
    generator.on(PROMPT, 2, TransientError("Gemini answered 503 UNAVAILABLE"))
    with pytest.raises(TransientError):
        make_generation().handle(MESSAGE)

    (started,) = events(caplog, "job_started")
    assert (started["job_id"], started["batch_id"], started["scene_id"]) == (
        "job_1",
        "bat_1",
        "sc-001",
    )
    (uploaded,) = events(caplog, "variant_uploaded")
    (released,) = events(caplog, "attempt_failed")
    for record, n in ((uploaded, 1), (released, 2)):
        assert (record["job_id"], record["batch_id"], record["scene_id"]) == (
            "job_1",
            "bat_1",
            "sc-001",
        )
        assert (record["variant"], record["attempt"]) == (n, 1)
        assert isinstance(record["duration_ms"], int)
    assert (uploaded["state"], uploaded["cost_usd"], uploaded["tokens"]) == (
        "uploaded",
        "0.0670",
        1290,
    )
    assert (released["state"], released["error"]) == ("pending", "Gemini answered 503 UNAVAILABLE")
    assert events(caplog, "job_finished") == []  # nothing ended here


def test_job_finished_is_logged_when_the_last_variant_fails(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    store.add(make_job(variant_count=2))
    clock.advance(12.5)
    for n in (1, 2):
        generator.on(PROMPT, n, PermanentError(f"blocked {n}"))
    make_generation().handle(MESSAGE)

    assert [r["variant"] for r in events(caplog, "variant_failed")] in ([1, 2], [2, 1])
    (finished,) = events(caplog, "job_finished")
    assert (finished["state"], finished["duration_s"]) == ("failed", 12.5)
    assert finished["error"] == "variant 1: blocked 1; variant 2: blocked 2"
    assert (finished["job_id"], finished["batch_id"], finished["scene_id"]) == (
        "job_1",
        "bat_1",
        "sc-001",
    )


def test_job_finished_is_logged_as_partial_when_a_failure_ends_a_job_with_done_variants(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    job = make_job(variant_count=2, started_at=T0, state=JobState.GENERATING)
    mark_done(job, 1)
    store.add(job)
    generator.on(PROMPT, 2, PermanentError("no image"))
    make_generation().handle(MESSAGE)
    (finished,) = events(caplog, "job_finished")
    assert finished["state"] == "partial"
    assert store.job("job_1").state == JobState.PARTIAL


@pytest.mark.parametrize("cause", ["age", "references"])
def test_job_finished_is_logged_when_the_whole_job_fails(
    make_generation: Build,
    store: FakeJobStore,
    references: FakeReferenceLoader,
    caplog: pytest.LogCaptureFixture,
    cause: str,
) -> None:
    caplog.set_level(logging.INFO)
    url = "https://example.com/refs.zip"
    references.packs[url] = PermanentError("refused")
    waited = 7201 if cause == "age" else 0
    store.add(
        make_job(
            ref_pack_public_url=url if cause == "references" else None,
            created_at=T0 - timedelta(seconds=waited),
        )
    )
    make_generation(max_event_age_s=7200).handle(MESSAGE, T0)
    (finished,) = events(caplog, "job_finished")
    assert finished["state"] == "failed"
    assert finished["duration_s"] == waited
    assert ("dropped" if cause == "age" else "reference pack: refused") in finished["error"]


def test_json_log_line_carries_the_fields(
    make_generation: Build, store: FakeJobStore, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging()
    store.add(make_job(variant_count=1))
    make_generation().handle(MESSAGE)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (uploaded,) = [line for line in lines if line.get("event") == "variant_uploaded"]
    assert uploaded["severity"] == "INFO"
    assert uploaded["message"] == "variant uploaded"
    for name in ("job_id", "batch_id", "scene_id", "variant", "attempt", "duration_ms"):
        assert name in uploaded, name


# --------------------------------------------------------------------------- time budget


class RecordingGenerator(FakeImageGenerator):
    """Also records the variant's stored claim while Gemini is being called."""

    def __init__(self, store: FakeJobStore, clock: FakeClock) -> None:
        super().__init__()
        self.store, self.clock = store, clock
        self.leases: list[float] = []

    def generate(self, *args: Any, **kwargs: Any) -> GeneratedImage:
        variant = self.store.job("job_1").variant(kwargs["seed"])
        assert variant.claim_expires is not None
        self.leases.append((variant.claim_expires - self.clock()).total_seconds())
        return super().generate(*args, **kwargs)


class SlowGenerator(FakeImageGenerator):
    """A Gemini call that takes ``minutes`` of the fake clock, its holder's heartbeat
    beating every 20 s meanwhile; ``during`` runs halfway (another delivery)."""

    def __init__(
        self, clock: FakeClock, heartbeat: ManualHeartbeat, minutes: float, during: Any = None
    ) -> None:
        super().__init__()
        self.clock, self.heartbeat, self.minutes, self.during = clock, heartbeat, minutes, during

    def generate(self, *args: Any, **kwargs: Any) -> GeneratedImage:
        steps = int(self.minutes * 3)
        for step in range(steps):
            self.clock.advance(20)
            assert self.heartbeat.beat() == [True]  # the claim is still ours
            if step == steps // 2 and self.during is not None:
                self.during()
        return super().generate(*args, **kwargs)


def test_a_live_holder_renews_its_claim_through_a_ten_minute_call_and_is_never_taken_over(
    store: FakeJobStore,
    objects: FakeObjectStore,
    references: FakeReferenceLoader,
    sheet_sync: SheetSync,
    fake_monotonic: FakeClock,
) -> None:
    store.add(make_job(variant_count=1))
    heartbeat = ManualHeartbeat()
    settings = make_settings(claim_lease_s=60, claim_wait_s=0)

    def build(generator: FakeImageGenerator) -> Generation:
        return Generation(
            settings=settings,
            ledger=JobLedger(store, sheet_sync),
            objects=objects,
            generator=generator,
            references=references,
            quota=FakeQuotaGate(),
            probe=image_mime,
            clock=fake_monotonic,
            sleep=fake_monotonic.sleep,
            monotonic=fake_monotonic.monotonic,
            heartbeat=heartbeat,
        )

    redelivered: list[Exception] = []
    other = FakeImageGenerator()

    def redelivery() -> None:
        with pytest.raises(TransientError, match="held by another delivery") as info:
            build(other).handle(MESSAGE)
        redelivered.append(info.value)

    slow = SlowGenerator(fake_monotonic, heartbeat, minutes=10, during=redelivery)
    build(slow).handle(MESSAGE)
    assert redelivered and other.calls == []  # five minutes in: still held, not taken over
    assert heartbeat.every == [20.0]  # a third of the 60 s lease
    v = store.job("job_1").variant(1)
    assert (v.state, v.failures, v.attempts) == (VariantState.UPLOADED, 0, 1)
    assert slow.count() == 1


def test_no_gemini_call_starts_without_its_budget_left_in_the_delivery(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    clock: FakeClock,
) -> None:
    store.add(make_job(variant_count=2))
    # The delivery loses 25 s before it gets to the variants (say, a slow job store).
    store.hook = lambda operation, _: clock.advance(25) if operation == "get_job" else None
    service = make_generation(gemini_budget_s=280, delivery_deadline_s=300)
    with pytest.raises(TransientError, match="no time left in this delivery"):
        service.handle(MESSAGE)
    assert generator.calls == []
    job = store.job("job_1")
    for n in (1, 2):
        v = job.variant(n)
        assert (v.state, v.claim_id, v.attempts) == (VariantState.PENDING, None, 1)

    store.hook = None
    service.handle(MESSAGE)  # the redelivery has its full budget
    assert generator.count() == 2


def test_waiting_for_a_held_variant_leaves_the_gemini_budget(
    make_generation: Build, store: FakeJobStore, generator: FakeImageGenerator, clock: FakeClock
) -> None:
    job = make_job(variant_count=1, started_at=T0, state=JobState.GENERATING)
    job.variant(1).state = VariantState.GENERATING
    job.variant(1).claim_id = "clm_other"
    job.variant(1).claim_expires = T0 + timedelta(seconds=300)
    store.add(job)
    with pytest.raises(TransientError, match="held by another delivery"):
        make_generation(claim_wait_s=240, gemini_budget_s=280, delivery_deadline_s=285).handle(
            MESSAGE
        )
    assert sum(clock.sleeps) == pytest.approx(5.0)  # 285 - 280, not the 240 s claim wait
    assert generator.calls == []


def test_settings_refuse_retries_that_do_not_fit_the_budget() -> None:
    # 3 x 120 s + delays of at most 1 + 1 and 2 + 1 s.
    with pytest.raises(ValidationError, match=r"= 365 s exceeds GEMINI_BUDGET_S \(280 s\)"):
        make_settings(gemini_retry_attempts=3, gemini_timeout_s=120)
    # The delay cap applies: 3 x 10 s + min(1.5, 2) + min(1.5, 3).
    assert make_settings(
        gemini_retry_attempts=3, gemini_timeout_s=10, gemini_retry_max_delay_s=1.5
    ).gemini_worst_case_s == pytest.approx(33.0)
    with pytest.raises(ValidationError, match="must be below DELIVERY_DEADLINE_S"):
        make_settings(gemini_budget_s=540)
    defaults = make_settings()
    # 2 attempts x 120 s + one delay of at most 1 s x 2^0 + 1 s jitter.
    assert defaults.gemini_worst_case_s == 242.0
    assert defaults.gemini_budget_s < defaults.delivery_deadline_s <= 600


# --------------------------------------------------------------------------- exactly once


def test_concurrent_deliveries_generate_each_variant_once(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    objects: FakeObjectStore,
) -> None:
    store.add(make_job(variant_count=3))
    service = make_generation()
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def deliver() -> None:
        barrier.wait()
        try:
            service.handle(MESSAGE)
            outcomes.append("acked")
        except TransientError:
            outcomes.append("retry")

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(outcomes) == 4 and "acked" in outcomes
    assert [generator.count(variant=n) for n in (1, 2, 3)] == [1, 1, 1]
    assert len(image_names(objects)) == 3
    assert {v.state for v in store.job("job_1").variants.values()} == {VariantState.UPLOADED}


def test_the_first_sheet_write_does_not_hold_up_the_gemini_calls(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    sheet_writer: FakeSheetWriter,
) -> None:
    store.add(make_job(variant_count=2))
    calling = threading.Event()
    original = generator.generate

    def generate(*args: Any, **kwargs: Any) -> GeneratedImage:
        calling.set()
        return original(*args, **kwargs)

    generator.generate = generate  # type: ignore[method-assign]
    # A slow sheet (coalescing window, write quota): the row write waits for Gemini.
    waited: list[bool] = []
    sheet_writer.on_write = lambda write: waited.append(calling.wait(timeout=5))
    make_generation().handle(MESSAGE)
    assert waited and waited[0] is True
    assert generator.count() == 2


def test_a_job_whose_model_google_stopped_serving_fails_saying_what_to_do(
    make_generation: Build, store: FakeJobStore, generator: FakeImageGenerator
) -> None:
    store.add(make_job(variant_count=1, model="gemini-3.1-flash-image"))
    generator.on(PROMPT, 1, ModelGone("Gemini answered 404 NOT_FOUND: models/x is not found"))
    make_generation().handle(MESSAGE)
    variant = store.job("job_1").variant(1)
    assert variant.state == VariantState.FAILED
    assert variant.error == (
        "gemini-3.1-flash-image is not served any more (Google shut it down); send the row "
        "again to make it with gemini-nano-banana-2.1"
    )
    assert generator.count() == 1
