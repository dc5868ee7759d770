"""Generation service on fakes: every variant made and paid for exactly once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from shared.errors import PermanentError, TransientError
from shared.imaging import make_thumbnail
from shared.models import JobMessage, JobState, VariantState
from shared.ports import Formula, GeneratedImage, ReferenceImage, Text
from shared.services.generation import Generation
from shared.services.sheet_sync import SheetSync
from shared.services.thumbnails import Thumbnails
from tests.fakes import (
    IMAGES_BUCKET,
    T0,
    FakeClock,
    FakeImageGenerator,
    FakeJobStore,
    FakeObjectStore,
    FakeReferenceLoader,
    FakeSheetWriter,
    finalize_event,
    jpeg_bytes,
    make_job,
    make_settings,
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
    state: JobState,
) -> None:
    store.add(make_job(state=state))
    make_generation().handle(MESSAGE)
    assert generator.calls == []
    assert objects.calls == []
    assert sheet_writer.attempts == []
    assert ("update_job", "job_1") not in store.calls


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
    thumbnails = Thumbnails(make_settings(), store, objects, make_thumbnail, sheet_sync, clock)
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


def test_reference_pack_transient_error_is_retried_without_failing(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    references: FakeReferenceLoader,
) -> None:
    url = "https://example.com/refs.zip"
    references.packs[url] = TransientError("reference URL answered 503")
    store.add(make_job(ref_pack_public_url=url))
    with pytest.raises(TransientError):
        make_generation().handle(MESSAGE)
    assert generator.calls == []
    assert store.job("job_1").state == JobState.GENERATING


def test_message_older_than_max_event_age_fails_the_job(
    make_generation: Build,
    store: FakeJobStore,
    generator: FakeImageGenerator,
    sheet_writer: FakeSheetWriter,
) -> None:
    store.add(make_job())
    published = T0 - timedelta(seconds=7201)
    make_generation(max_event_age_s=7200).handle(MESSAGE, published)  # acknowledged
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
    assert store.job("job_1").state == JobState.COMPLETED
    assert sheet_writer.attempts == []


@pytest.mark.xfail(
    strict=True,
    reason="BUG: aspect_ratio and image_size are accepted by the API and stored on the job, "
    "but Generation never passes them to the image generator (nor does the Gemini adapter "
    "set image_config), so every image comes out in the model's default shape",
)
def test_aspect_ratio_and_image_size_reach_the_generator(
    make_generation: Build, store: FakeJobStore, generator: FakeImageGenerator
) -> None:
    store.add(make_job(variant_count=1, aspect_ratio="16:9", image_size="2K"))
    make_generation().handle(MESSAGE)
    assert len(generator.calls) == 1
    passed = repr(generator.calls[0].options)
    assert "16:9" in passed
    assert "2K" in passed


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
    thumbnails = Thumbnails(make_settings(), store, objects, make_thumbnail, sheet_sync, clock)

    def notify(bucket: str, name: str) -> None:
        if name.startswith("images/"):
            thumbnails.handle(finalize_event(name, variant=1))

    objects.on_create = notify
    make_generation().handle(MESSAGE)

    job = store.job("job_1")
    assert job.variant(1).state == VariantState.FAILED
    assert job.terminal
