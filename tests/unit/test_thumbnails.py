"""Thumbnails service on fakes: skip rules, thumbnail objects, job completion."""

from __future__ import annotations

import dataclasses
import io
import logging
import struct
import threading
import time
import zlib
from collections.abc import Callable

import pytest
from PIL import Image
from pydantic import ValidationError

from shared.adapters.imaging import make_thumbnail
from shared.config.settings import Settings
from shared.contracts.messages import StorageObject
from shared.contracts.objects import THUMBNAIL_MARKER, ObjectNames
from shared.contracts.sheet_row import Formula, Text
from shared.domain.errors import PermanentError, TransientError
from shared.domain.job import JobState, VariantState
from shared.services.ledger import JobLedger
from shared.services.ports import ThumbnailSpec
from shared.services.sheet_sync import SheetSync
from shared.services.thumbnails import Thumbnails, skip_reason
from tests.fakes import (
    IMAGES_BUCKET,
    T0,
    FakeClock,
    FakeJobStore,
    FakeObjectStore,
    FakeSheetWriter,
    RowWrite,
    finalize_event,
    make_job,
    make_settings,
    png_bytes,
)

NAME_1 = "images/sc-001/job_1/var_1.png"
NAME_2 = "images/sc-001/job_1/var_2.png"


@pytest.fixture
def store() -> FakeJobStore:
    """A job of two variants whose images were uploaded."""
    store = FakeJobStore()
    job = make_job(variant_count=2, started_at=T0, state=JobState.GENERATING)
    for n in (1, 2):
        job.variant(n).state = VariantState.UPLOADED
        job.variant(n).object_name = f"images/sc-001/job_1/var_{n}.png"
    store.add(job)
    return store


@pytest.fixture
def make_service(
    settings: Settings,
    store: FakeJobStore,
    objects: FakeObjectStore,
    sheet_sync: SheetSync,
    clock: FakeClock,
) -> Callable[..., Thumbnails]:
    def build(thumbnailer: Callable[[bytes, ThumbnailSpec], bytes] = make_thumbnail) -> Thumbnails:
        return Thumbnails(settings, JobLedger(store, sheet_sync), objects, thumbnailer, clock)

    return build


def finished_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "job_finished"]


def put_images(objects: FakeObjectStore, *names: str) -> None:
    for name in names:
        objects.put(IMAGES_BUCKET, name, png_bytes((600, 300)), "image/png", {"job_id": "job_1"})


# --------------------------------------------------------------------------- skip_reason


def test_skip_reason_none_for_our_image(settings: Settings) -> None:
    assert skip_reason(finalize_event(NAME_1), settings) is None
    # An event without a type (direct Eventarc delivery) is also ours.
    assert skip_reason(finalize_event(NAME_1, event_type=""), settings) is None


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (finalize_event(NAME_1, event_type="OBJECT_DELETE"), "event type OBJECT_DELETE"),
        (
            finalize_event(NAME_1, bucket="other-bucket"),
            "bucket other-bucket is not the images bucket",
        ),
        (
            finalize_event("refs/pack.zip"),
            "object refs/pack.zip is outside images/",
        ),
        (
            finalize_event(NAME_1, **{THUMBNAIL_MARKER: "1"}),
            "object is a thumbnail",
        ),
        (
            dataclasses.replace(finalize_event(NAME_1), metadata={}),
            "object has no job_id/variant metadata",
        ),
        (finalize_event(NAME_1, job_id=""), "object has no job_id/variant metadata"),
        (finalize_event(NAME_1, variant="x"), "object has no job_id/variant metadata"),
    ],
)
def test_skip_reason(settings: Settings, event: StorageObject, expected: str) -> None:
    assert skip_reason(event, settings) == expected


def test_thumbnail_name() -> None:
    names = ObjectNames("images/", "thumbnails/")
    assert names.thumbnail(NAME_1, "image/jpeg") == "thumbnails/sc-001/job_1/var_1.jpg"
    assert names.thumbnail("images/a.b/j/var_2.webp", "image/webp") == "thumbnails/a.b/j/var_2.webp"


@pytest.mark.parametrize(
    "event",
    [
        finalize_event(NAME_1, event_type="OBJECT_METADATA_UPDATE"),
        finalize_event("thumbnails/sc-001/job_1/var_1.jpg"),
        finalize_event(NAME_1, **{THUMBNAIL_MARKER: "1"}),
    ],
)
def test_skipped_notification_touches_nothing(
    make_service: Callable[..., Thumbnails],
    store: FakeJobStore,
    objects: FakeObjectStore,
    sheet_writer: FakeSheetWriter,
    event: StorageObject,
) -> None:
    make_service().handle(event)
    assert store.calls == []
    assert objects.calls == []
    assert sheet_writer.attempts == []


# --------------------------------------------------------------------------- handle


def test_thumbnail_written_with_marker_and_variant_done(
    make_service: Callable[..., Thumbnails],
    store: FakeJobStore,
    objects: FakeObjectStore,
    sheet_writer: FakeSheetWriter,
    clock: FakeClock,
) -> None:
    put_images(objects, NAME_1)
    make_service().handle(finalize_event(NAME_1))

    thumb = objects.objects[(IMAGES_BUCKET, "thumbnails/sc-001/job_1/var_1.jpg")]
    assert thumb.content_type == "image/jpeg"
    assert thumb.metadata == {
        THUMBNAIL_MARKER: "1",
        "source": NAME_1,
        "job_id": "job_1",
        "variant": "1",
    }
    with Image.open(io.BytesIO(thumb.data)) as image:
        assert (image.format, image.size) == ("JPEG", (256, 128))
    # The thumbnail's own notification would be skipped.
    thumb_event = finalize_event("thumbnails/sc-001/job_1/var_1.jpg", **thumb.metadata)
    assert skip_reason(thumb_event, make_settings()) is not None

    job = store.job("job_1")
    v = job.variant(1)
    assert (v.state, v.thumb_name, v.done_at) == (
        VariantState.DONE,
        "thumbnails/sc-001/job_1/var_1.jpg",
        T0,
    )
    assert job.state == JobState.GENERATING
    assert sheet_writer.row("sc-001")["status_img"] == Text("generating (1/2)")
    assert isinstance(sheet_writer.row("sc-001")["nano_img_1"], Formula)


def test_thumbnails_go_to_separate_bucket_when_configured(
    store: FakeJobStore, objects: FakeObjectStore, sheet_sync: SheetSync
) -> None:
    put_images(objects, NAME_1)
    settings = make_settings(thumbnails_bucket="thumbs-bucket")
    Thumbnails(settings, JobLedger(store, sheet_sync), objects, make_thumbnail).handle(
        finalize_event(NAME_1)
    )
    assert objects.names("thumbs-bucket") == ["thumbnails/sc-001/job_1/var_1.jpg"]


def test_job_finishes_exactly_once_across_duplicate_events(
    make_service: Callable[..., Thumbnails],
    store: FakeJobStore,
    objects: FakeObjectStore,
    sheet_writer: FakeSheetWriter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    put_images(objects, NAME_1, NAME_2)
    service = make_service()
    caplog.set_level(logging.INFO, logger="shared.services.ledger")
    for name, n in [(NAME_1, 1), (NAME_2, 2), (NAME_2, 2), (NAME_1, 1)]:
        service.handle(finalize_event(name, variant=n))

    assert len(finished_logs(caplog)) == 1
    job = store.job("job_1")
    assert job.state == JobState.COMPLETED
    assert job.finished_at == T0
    assert sheet_writer.row("sc-001")["status_img"] == Text("completed")
    assert [w.cells["status_img"] for w in sheet_writer.writes] == [
        Text("generating (1/2)"),
        Text("completed"),
    ]
    assert len([c for c in objects.calls if c[0] == "create"]) == 2


def test_concurrent_duplicate_event_finishes_the_job_once(
    make_service: Callable[..., Thumbnails],
    store: FakeJobStore,
    objects: FakeObjectStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    put_images(objects, NAME_1, NAME_2)
    make_service().handle(finalize_event(NAME_2, variant=2))
    calls = 0
    service: Thumbnails | None = None

    def thumbnailer(data: bytes, spec: ThumbnailSpec) -> bytes:
        # The duplicate arrives while the first delivery is still thumbnailing.
        nonlocal calls
        calls += 1
        if calls == 1 and service is not None:
            service.handle(finalize_event(NAME_1))
        return make_thumbnail(data, spec)

    service = make_service(thumbnailer)
    caplog.set_level(logging.INFO, logger="shared.services.ledger")
    service.handle(finalize_event(NAME_1))

    assert calls == 2
    assert len(finished_logs(caplog)) == 1
    assert store.job("job_1").state == JobState.COMPLETED
    creates = [c for c in objects.calls if c[2] == "thumbnails/sc-001/job_1/var_1.jpg"]
    assert len(creates) == 2  # the second create found the object and kept it
    assert len(objects.names(IMAGES_BUCKET)) == 4


def test_corrupt_image_fails_the_variant_without_raising(
    make_service: Callable[..., Thumbnails],
    store: FakeJobStore,
    objects: FakeObjectStore,
    sheet_writer: FakeSheetWriter,
) -> None:
    put_images(objects, NAME_2)
    objects.put(IMAGES_BUCKET, NAME_1, b"\x89PNG\r\n\x1a\n not really a png")
    service = make_service()
    service.handle(finalize_event(NAME_1))

    job = store.job("job_1")
    assert job.variant(1).state == VariantState.FAILED
    assert (job.variant(1).error or "").startswith("thumbnail: image could not be decoded")
    assert objects.names(IMAGES_BUCKET) == [NAME_1, NAME_2]  # no thumbnail written

    service.handle(finalize_event(NAME_2, variant=2))
    job = store.job("job_1")
    assert job.state == JobState.PARTIAL
    assert (job.error or "").startswith("variant 1: thumbnail: image could not be decoded")
    assert sheet_writer.row("sc-001")["status_img"].value.startswith("partial (1/2): variant 1")


def test_missing_source_object_fails_the_variant(
    make_service: Callable[..., Thumbnails], store: FakeJobStore
) -> None:
    make_service().handle(finalize_event(NAME_1))
    v = store.job("job_1").variant(1)
    assert v.state == VariantState.FAILED
    assert (v.error or "").startswith("thumbnail: gs://images-bucket/")


def test_transient_error_propagates_and_changes_nothing(
    make_service: Callable[..., Thumbnails], store: FakeJobStore, objects: FakeObjectStore
) -> None:
    put_images(objects, NAME_1)

    def thumbnailer(data: bytes, spec: ThumbnailSpec) -> bytes:
        raise TransientError("storage 503")

    with pytest.raises(TransientError):
        make_service(thumbnailer).handle(finalize_event(NAME_1))
    assert store.job("job_1").variant(1).state == VariantState.UPLOADED


def test_thumbnailer_gets_configured_size(
    store: FakeJobStore, objects: FakeObjectStore, sheet_sync: SheetSync
) -> None:
    put_images(objects, NAME_1)
    specs: list[ThumbnailSpec] = []

    def thumbnailer(data: bytes, spec: ThumbnailSpec) -> bytes:
        specs.append(spec)
        raise PermanentError("nope")

    settings = make_settings(
        thumbnail_size=64,
        thumbnail_format="WEBP",
        thumbnail_quality=70,
        thumbnail_max_pixels=2_000_000,
    )
    Thumbnails(settings, JobLedger(store, sheet_sync), objects, thumbnailer).handle(
        finalize_event(NAME_1)
    )
    assert specs == [
        ThumbnailSpec(longest_side=64, format="webp", quality=70, max_pixels=2_000_000)
    ]


def test_unknown_job_or_variant_is_dropped(
    make_service: Callable[..., Thumbnails],
    store: FakeJobStore,
    objects: FakeObjectStore,
    sheet_writer: FakeSheetWriter,
) -> None:
    put_images(objects, NAME_1)
    service = make_service()
    service.handle(finalize_event(NAME_1, job_id="job_missing"))
    service.handle(finalize_event(NAME_1, variant=7))
    assert [c for c in objects.calls if c[0] != "find"] == []
    assert sheet_writer.attempts == []
    assert store.job("job_1").variant(1).state == VariantState.UPLOADED


def test_redelivered_event_after_completion_writes_the_sheet_only_once(
    make_service: Callable[..., Thumbnails],
    objects: FakeObjectStore,
    sheet_writer: FakeSheetWriter,
) -> None:
    put_images(objects, NAME_1, NAME_2)
    service = make_service()
    service.handle(finalize_event(NAME_1))
    service.handle(finalize_event(NAME_2, variant=2))
    writes = len(sheet_writer.attempts)
    reads = len([c for c in objects.calls if c[0] == "read"])

    service.handle(finalize_event(NAME_2, variant=2))
    service.handle(finalize_event(NAME_1))
    assert len(sheet_writer.attempts) == writes
    assert len([c for c in objects.calls if c[0] == "read"]) == reads


def test_redelivered_event_retries_a_sheet_write_that_failed(
    make_service: Callable[..., Thumbnails],
    store: FakeJobStore,
    objects: FakeObjectStore,
    sheet_writer: FakeSheetWriter,
) -> None:
    put_images(objects, NAME_1, NAME_2)
    service = make_service()
    service.handle(finalize_event(NAME_2, variant=2))
    # The write in the background and the one before the delivery ends both fail.
    sheet_writer.errors += [TransientError("Sheets API 503"), TransientError("Sheets API 503")]
    with pytest.raises(TransientError):
        service.handle(finalize_event(NAME_1))
    assert store.job("job_1").state == JobState.COMPLETED
    assert sheet_writer.row("sc-001")["status_img"] == Text("generating (1/2)")

    service.handle(finalize_event(NAME_1))  # the redelivery
    assert sheet_writer.row("sc-001")["status_img"] == Text("completed")


# --------------------------------------------------------------------------- issue 5


def test_job_finished_is_logged_once_with_state_and_duration(
    make_service: Callable[..., Thumbnails],
    objects: FakeObjectStore,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    put_images(objects, NAME_1, NAME_2)
    service = make_service()
    caplog.set_level(logging.INFO, logger="shared.services.ledger")
    service.handle(finalize_event(NAME_1))
    assert finished_logs(caplog) == []
    clock.advance(90.5)  # the job was created at T0
    service.handle(finalize_event(NAME_2, variant=2))
    service.handle(finalize_event(NAME_2, variant=2))

    (record,) = finished_logs(caplog)
    assert record.__dict__["state"] == "completed"
    assert record.__dict__["duration_s"] == 90.5
    assert record.__dict__["cost_usd"] == "0.0000"  # the seeded images carry no cost
    assert record.__dict__["job_id"] == "job_1"


def test_job_finished_by_a_failed_thumbnail_is_logged_as_partial(
    make_service: Callable[..., Thumbnails],
    objects: FakeObjectStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    put_images(objects, NAME_2)
    objects.put(IMAGES_BUCKET, NAME_1, b"not an image")
    service = make_service()
    caplog.set_level(logging.INFO, logger="shared.services.ledger")
    for name, n in [(NAME_2, 2), (NAME_1, 1), (NAME_1, 1)]:
        service.handle(finalize_event(name, variant=n))
    (record,) = finished_logs(caplog)
    assert record.__dict__["state"] == "partial"


def test_concurrent_duplicate_events_finish_once_and_write_the_final_row_once(
    make_service: Callable[..., Thumbnails],
    store: FakeJobStore,
    objects: FakeObjectStore,
    sheet_writer: FakeSheetWriter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    put_images(objects, NAME_1, NAME_2)
    service = make_service()
    caplog.set_level(logging.INFO, logger="shared.services.ledger")
    events = [finalize_event(NAME_1)] * 4 + [finalize_event(NAME_2, variant=2)] * 4
    start = threading.Barrier(len(events))

    def slow_write(write: RowWrite) -> None:
        time.sleep(0.05)  # keep a write in flight while the duplicates sync

    sheet_writer.on_write = slow_write

    def deliver(event: StorageObject) -> None:
        start.wait(timeout=10)
        service.handle(event)

    threads = [threading.Thread(target=deliver, args=(e,)) for e in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(finished_logs(caplog)) == 1
    job = store.job("job_1")
    assert job.state == JobState.COMPLETED
    assert (job.sheet_claim_id, job.sheet_error) == (None, None)
    completed = [w for w in sheet_writer.attempts if w.cells["status_img"] == Text("completed")]
    assert len(completed) == 1
    assert sheet_writer.row("sc-001")["status_img"] == Text("completed")


def test_webp_thumbnails_are_named_and_typed_as_webp(
    store: FakeJobStore, objects: FakeObjectStore, sheet_sync: SheetSync
) -> None:
    put_images(objects, NAME_1)
    settings = make_settings(thumbnail_format="webp")
    ledger = JobLedger(store, sheet_sync)
    Thumbnails(settings, ledger, objects, make_thumbnail).handle(finalize_event(NAME_1))
    thumb = objects.objects[(IMAGES_BUCKET, "thumbnails/sc-001/job_1/var_1.webp")]
    assert thumb.content_type == "image/webp"
    assert Image.open(io.BytesIO(thumb.data)).format == "WEBP"
    assert store.job("job_1").variant(1).thumb_name == "thumbnails/sc-001/job_1/var_1.webp"


def test_thumbnails_prefix_inside_the_images_prefix_is_refused() -> None:
    with pytest.raises(ValidationError, match="THUMBNAILS_PREFIX must lie outside"):
        make_settings(thumbnails_prefix="images/thumbs/")
    # In a second bucket the same prefix cannot trigger the notification.
    assert make_settings(thumbnails_prefix="images/thumbs/", thumbnails_bucket="other-bucket")


def test_decompression_bomb_fails_its_variant_with_the_reason(
    make_service: Callable[..., Thumbnails],
    store: FakeJobStore,
    objects: FakeObjectStore,
    sheet_writer: FakeSheetWriter,
) -> None:
    rows = zlib.compress(b"\x00" * (8001 * 8000), 9)
    ihdr = struct.pack(">IIBBBBB", 8000, 8000, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    objects.put(IMAGES_BUCKET, NAME_1, bomb)
    make_service().handle(finalize_event(NAME_1))  # returns: the event is acknowledged
    variant = store.job("job_1").variant(1)
    assert variant.state == VariantState.FAILED
    assert variant.error == "thumbnail: image is 8000x8000; limit 50000000 pixels"
    assert objects.names(IMAGES_BUCKET) == [NAME_1]
    assert sheet_writer.row("sc-001")["status_img"] == Text("generating (0/2)")


# --------------------------------------------------------------------------- issue 27: whose image


def pixel(data: bytes) -> tuple[int, ...]:
    with Image.open(io.BytesIO(data)) as image:
        return tuple(image.convert("RGB").getpixel((0, 0)))  # type: ignore[arg-type]


def near(color: tuple[int, ...], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 12 for a, b in zip(color, expected, strict=True))


RED, BLUE = (200, 30, 30), (30, 30, 200)


@pytest.mark.parametrize(
    "stray",
    [
        "images/sc-001/job_1/var_1.webp",  # the recorded image is var_1.png
        "images/sc-001/job_1/other.png",  # not an image name at all
        NAME_2,  # another variant's name
        "images/sc-001/job_1/var_1_v2.png",  # a version's name, metadata of version 1
        "images/sc-002/job_1/var_1.png",  # another scene's folder
    ],
)
def test_a_notification_for_another_object_than_the_recorded_image_is_ignored(
    make_service: Callable[..., Thumbnails],
    store: FakeJobStore,
    objects: FakeObjectStore,
    sheet_writer: FakeSheetWriter,
    stray: str,
) -> None:
    """A stray upload (or another object) under images/ whose metadata names a
    variant: nothing is read, written or marked; the variant's own image then makes
    its thumbnail, from its own bytes."""
    objects.put(IMAGES_BUCKET, NAME_1, png_bytes((600, 300), RED), "image/png")
    objects.put(IMAGES_BUCKET, stray, png_bytes((600, 300), BLUE), "image/png")
    service = make_service()
    service.handle(finalize_event(stray, model="m", cost_usd="9.0000"))

    assert [c for c in objects.calls if c[0] != "find"] == []
    assert store.writes == []
    assert sheet_writer.attempts == []
    assert store.job("job_1").variant(1).state == VariantState.UPLOADED

    service.handle(finalize_event(NAME_1))
    v = store.job("job_1").variant(1)
    assert (v.state, v.object_name, v.cost_usd) == (VariantState.DONE, NAME_1, None)
    thumb = objects.objects[(IMAGES_BUCKET, "thumbnails/sc-001/job_1/var_1.jpg")]
    assert near(pixel(thumb.data), RED)


@pytest.mark.parametrize("state", [VariantState.GENERATING, VariantState.FAILED])
def test_a_stray_object_never_finishes_or_revives_a_variant_with_no_recorded_image(
    make_service: Callable[..., Thumbnails],
    store: FakeJobStore,
    objects: FakeObjectStore,
    state: VariantState,
) -> None:
    """Before its image is recorded (its holder is at work, or it was given up on),
    only the name generation gives the image is the variant's: a stray object
    neither marks it done nor revives and charges it."""
    job = store.job("job_1")
    job.variant(1).state, job.variant(1).object_name = state, None
    store.add(job)
    stray = "images/sc-001/job_1/upload.png"
    objects.put(IMAGES_BUCKET, stray, png_bytes((600, 300), BLUE), "image/png")
    objects.put(IMAGES_BUCKET, NAME_1, png_bytes((600, 300), RED), "image/png")
    service = make_service()
    service.handle(finalize_event(stray, model="m", cost_usd="9.0000"))
    v = store.job("job_1").variant(1)
    assert (v.state, v.object_name, v.cost_usd) == (state, None, None)
    assert objects.names(IMAGES_BUCKET) == [stray, NAME_1]  # no thumbnail

    # The variant's own image, under the name generation gives it, is its image.
    service.handle(finalize_event(NAME_1, model="m", cost_usd="0.0670"))
    v = store.job("job_1").variant(1)
    assert (v.state, v.object_name, v.cost_usd) == (VariantState.DONE, NAME_1, "0.0670")
    thumb = objects.objects[(IMAGES_BUCKET, "thumbnails/sc-001/job_1/var_1.jpg")]
    assert near(pixel(thumb.data), RED)
