"""Pick, promote, hand over: decisions by version, final picks that follow their
promotion, drafts priced both ways, approved-only deliveries to Drive."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from shared.contracts.messages import ExportMessage
from shared.contracts.requests import (
    ExportRequest,
    FinalRequest,
    ReviewRequest,
)
from shared.domain import handover, lifecycle, reviews
from shared.domain.errors import PermanentError, TransientError
from shared.domain.job import VariantState, Version
from shared.domain.reviews import ReviewRefused
from shared.services.exports import MANIFEST_COLUMNS, Exporter, ExportRefusal
from shared.services.ledger import JobLedger
from shared.services.rerolls import Promotion, Queued, Refused, Rerolls
from shared.services.reviews import Refusal, Reviews
from tests.fakes import (
    IMAGES_BUCKET,
    T0,
    FakeBudgetLedger,
    FakeClock,
    FakeDriveFolder,
    FakeJobStore,
    FakeObjectStore,
    FakePublisher,
    make_settings,
    png_bytes,
)
from tests.unit.test_exports import done_job, exports_of, finish_reroll, seed


def test_a_decision_applies_to_the_version_named_not_a_newer_one() -> None:
    job = done_job()
    # A re-roll of variant 1 is on its way (version 2, not made yet).
    job.variant(1).versions.append(
        Version(
            version=2,
            seed=1,
            requested_at=T0,
            caller="alice",
            budget_day="d",
            price_per_image="0.01",
        )
    )
    updated, number = reviews.decide(job, 1, None, "approved", "bob", T0)
    assert updated is not None and number == 1  # the one the sheet shows
    assert job.slot(1, 1).review is not None and job.slot(1, 2).review is None
    with pytest.raises(ReviewRefused, match="version 2 of variant 1 has no finished image"):
        reviews.decide(job, 1, 2, "approved", "bob", T0)
    # Once version 2 is done, the sheet shows it: it is unreviewed.
    slot = job.slot(1, 2)
    slot.state, slot.object_name = VariantState.DONE, "images/v2.png"
    assert job.variant(1).current()[0] == 2 and slot.review is None
    assert reviews.selected(job, "approved") == [(1, 1)]


def test_final_picks_approve_and_rejecting_the_final_clears_it() -> None:
    job = done_job()
    reviews.pick_final(job, 2, None, "bob", T0)
    assert job.final is not None and (job.final.variant, job.final.version) == (2, 1)
    assert reviews.selected(job, "approved") == [(2, 1)]
    assert reviews.selected(job, "final") == [(2, 1)]
    reviews.decide(job, 2, 1, "rejected", "carol", T0)
    assert job.final is None
    assert reviews.selected(job, "approved") == [] and reviews.selected(job, "final") == []
    assert reviews.selected(job, "all") == [(1, 1), (2, 1)]


def test_the_final_pick_follows_its_promotion_when_it_is_done() -> None:
    job = done_job()
    reviews.pick_final(job, 1, 1, "bob", T0)
    job.variant(1).versions.append(
        Version(
            version=2,
            seed=1,
            requested_at=T0,
            caller="bob",
            budget_day="d",
            price_per_image="0.05",
            promotes=1,
            image_size="2K",
        )
    )
    lifecycle.thumbnail_done(job, 1, "images/v2.png", "thumbs/v2.jpg", T0, version=2)
    assert job.final is not None and (job.final.variant, job.final.version) == (1, 2)
    review = job.slot(1, 2).review
    assert review is not None and review.decision == "approved" and review.by == "bob"


def test_reviews_over_http_record_who_and_when(
    store: FakeJobStore, budget: FakeBudgetLedger, clock: FakeClock
) -> None:
    store.add(done_job())
    service = Reviews(store, JobLedger(store, budget=budget), clock)
    answer = service.decide("job_1", 1, ReviewRequest(decision="approved"), "alice")
    assert answer is not None and not isinstance(answer, Refusal)
    assert (answer.version, answer.by) == (1, "alice")
    stored = store.job("job_1").slot(1, 1).review
    assert stored is not None and (stored.by, stored.at) == ("alice", clock())
    assert service.decide("job_1", 1, ReviewRequest(decision="approved"), "mallory") is None
    by_admin = service.decide("job_1", 2, ReviewRequest(decision="rejected"), "root", admin=True)
    assert by_admin is not None and not isinstance(by_admin, Refusal) and by_admin.by == "root"
    picked = service.pick("job_1", FinalRequest(variant=2), "alice")
    assert picked is not None and not isinstance(picked, Refusal)
    assert picked.final is not None and picked.final.variant == 2
    refused = service.decide("job_1", 1, ReviewRequest(decision="approved", version=5), "alice")
    assert isinstance(refused, Refusal) and "no version 5" in refused.message


# ------------------------------------------------------------------ promotion


def test_a_promotion_is_a_version_at_the_larger_size_priced_so(
    rerolls: Rerolls, store: FakeJobStore, publisher: FakePublisher
) -> None:
    job = done_job(model="gemini-nano-banana-2.1", variant_count=1)
    store.add(job)
    outcome = rerolls.request("job_1", 1, None, "alice", promotion=Promotion("4K"))
    assert isinstance(outcome, Queued)
    assert outcome.answer.kind == "promote"
    # 4K on Nano Banana 2.1: $0.1134, plus its instruction and one reference image.
    assert Decimal(outcome.answer.price_per_image_usd) > Decimal("0.1134")
    version = store.job("job_1").slot(1, 2)
    assert isinstance(version, Version)
    assert (version.promotes, version.image_size, version.kind) == (1, "4K", "promote")
    assert version.source_object == job.slot(1, 1).object_name
    assert publisher.published[-1][0].version == 2
    same = rerolls.request("job_1", 1, None, "alice", promotion=Promotion("1K"))
    assert isinstance(same, Refused) and same.code == "bad_size"


def test_a_promoted_version_is_made_at_its_size_and_model(
    make_generation: Any, store: FakeJobStore, generator: Any, objects: FakeObjectStore
) -> None:
    job = done_job(model="gemini-3.1-flash-lite-image", variant_count=1)
    job.final_model, job.final_size = "gemini-nano-banana-2.1", "2K"
    source = job.slot(1, 1).object_name
    assert source is not None
    draft = png_bytes()
    objects.put(IMAGES_BUCKET, source, draft)
    job.variant(1).versions.append(
        Version(
            version=2,
            seed=3,
            requested_at=T0,
            caller="alice",
            budget_day="d",
            price_per_image="0.06",
            promotes=1,
            image_size="2K",
            target_model="gemini-nano-banana-2.1",
            instruction="keep it",
            source_object=source,
            source_version=1,
        )
    )
    store.add(job)
    from shared.contracts.messages import JobMessage

    make_generation().handle(
        JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001", variant=1, version=2)
    )
    (call,) = generator.calls
    assert call.model == "gemini-nano-banana-2.1"
    assert call.options["image_size"] == "2K"
    assert [r.data for r in call.references] == [draft]


# ------------------------------------------------------------------ drafts


# ------------------------------------------------------------------ delivery


def approve(store: FakeJobStore, job_id: str, n: int, version: int = 1) -> None:
    store.update_job(job_id, lambda j: reviews.decide(j, n, version, "approved", "bob", T0))


def test_an_approved_only_export_needs_an_approval_and_checks_its_names(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock
) -> None:
    seed(store, objects, done_job())
    exports, _ = exports_of(store, clock)
    refused = exports.request("bat_1", "alice", asked=ExportRequest(only="approved"))
    assert refused == ExportRefusal("only", "no image of batch bat_1 is approved yet")
    approve(store, "job_1", 2)
    bad = exports.request(
        "bat_1", "alice", asked=ExportRequest(only="approved", name_template="{scene_id}_{shot}")
    )
    assert bad == ExportRefusal("name_template", "scene sc-001: {shot} has no column 'shot'")


def deliver(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock, drive: FakeDriveFolder
) -> Any:
    exports, _ = exports_of(store, clock)
    asked = ExportRequest(
        only="approved",
        name_template="{scene_id}_{shot}_{variant}_{version}",
        destination="drive",
        drive_folder_id="folder_1",
    )
    view = exports.request("bat_1", "alice", asked=asked)
    assert view is not None and not isinstance(view, ExportRefusal)
    exporter = Exporter(make_settings(), store, objects, clock, drive=drive)
    exporter.handle(ExportMessage(batch_id="bat_1", export_id=view.export_id))
    return store.batches["bat_1"].export


def test_a_drive_delivery_holds_exactly_the_approved_images_and_a_second_adds_nothing(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock
) -> None:
    job = done_job(fields={"shot": "wide"})
    seed(store, objects, job)
    finish_reroll(store, objects, "job_1", 1)
    approve(store, "job_1", 1, 2)  # the re-roll, not the first
    store.update_job("job_1", lambda j: reviews.pick_final(j, 2, 1, "bob", T0))
    drive = FakeDriveFolder()
    export = deliver(store, objects, clock, drive)
    assert export.state == "done" and (export.images, export.added, export.present) == (2, 2, 0)
    images = sorted(n for n in drive.names() if not n.startswith("manifest_"))
    assert images == ["sc-001_wide_1_2.png", "sc-001_wide_2_1.png"]
    # Byte for byte what the bucket holds.
    stored = {name: data for _, name, data, _ in drive.files.values()}
    assert (
        stored["sc-001_wide_2_1.png"]
        == objects.objects[(IMAGES_BUCKET, job.slot(2, 1).object_name or "")].data
    )
    manifest = next(d for _, n, d, _ in drive.files.values() if n.endswith(".json"))
    rows = json.loads(manifest)["images"]
    assert [(r["variant"], r["version"], r["decision"], r["final"]) for r in rows] == [
        ("1", "2", "approved", ""),
        ("2", "1", "approved", "yes"),
    ]
    assert set(MANIFEST_COLUMNS) <= set(rows[0])
    files = len(drive.files)
    again = deliver(store, objects, clock, drive)
    assert (again.added, again.present) == (0, 2) and len(drive.files) == files


def test_a_rejected_or_unreviewed_image_is_never_delivered(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock
) -> None:
    seed(store, objects, done_job(variant_count=3, fields={"shot": "x"}))
    approve(store, "job_1", 1)
    store.update_job("job_1", lambda j: reviews.decide(j, 2, 1, "rejected", "bob", T0))
    drive = FakeDriveFolder()
    deliver(store, objects, clock, drive)
    assert [n for n in drive.names() if not n.startswith("manifest_")] == ["sc-001_x_1_1.png"]


def test_a_folder_not_shared_fails_the_export_with_the_reason(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock
) -> None:
    seed(store, objects, done_job(fields={"shot": "x"}))
    approve(store, "job_1", 1)
    export = deliver(store, objects, clock, FakeDriveFolder(folders=()))
    assert export.state == "failed"
    assert "folder folder_1 is not shared" in (export.error or "")


def test_a_delivery_cut_short_is_finished_by_the_next_one_without_duplicates(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock
) -> None:
    seed(store, objects, done_job(fields={"shot": "x"}))
    approve(store, "job_1", 1)
    approve(store, "job_1", 2)
    drive = FakeDriveFolder()
    exports, _ = exports_of(store, clock)
    view = exports.request(
        "bat_1",
        "alice",
        asked=ExportRequest(only="approved", destination="drive", drive_folder_id="folder_1"),
    )
    assert view is not None and not isinstance(view, ExportRefusal)
    exporter = Exporter(make_settings(), store, objects, clock, drive=drive)
    uploads: list[str] = []
    real = drive.upload

    def dies_after_one(*args: Any, **kwargs: Any) -> Any:
        if uploads:
            raise TransientError("Drive answered 503")
        uploads.append(args[1])
        return real(*args, **kwargs)

    drive.upload = dies_after_one  # type: ignore[method-assign]
    with pytest.raises(TransientError):
        exporter.handle(ExportMessage(batch_id="bat_1", export_id=view.export_id))
    drive.upload = real  # type: ignore[method-assign]
    exporter.handle(ExportMessage(batch_id="bat_1", export_id=view.export_id))
    export = store.batches["bat_1"].export
    assert export is not None and (export.state, export.added, export.present) == ("done", 1, 1)
    assert len([n for n in drive.names() if not n.startswith("manifest_")]) == 2


def test_a_second_delivery_while_one_holds_the_export_waits(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock
) -> None:
    seed(store, objects, done_job())
    approve(store, "job_1", 1)
    exports, _ = exports_of(store, clock)
    view = exports.request(
        "bat_1",
        "alice",
        asked=ExportRequest(only="approved", destination="drive", drive_folder_id="folder_1"),
    )
    assert view is not None and not isinstance(view, ExportRefusal)
    held = store.update_batch(
        "bat_1",
        lambda b: handover.take(b, view.export_id, "other", clock(), timedelta(seconds=660)),
    )
    assert held
    drive = FakeDriveFolder()
    exporter = Exporter(make_settings(), store, objects, clock, drive=drive)
    with pytest.raises(TransientError, match="another delivery"):
        exporter.handle(ExportMessage(batch_id="bat_1", export_id=view.export_id))
    assert drive.files == {}
    clock.advance(661)  # the holder surely ended
    exporter.handle(ExportMessage(batch_id="bat_1", export_id=view.export_id))
    export = store.batches["bat_1"].export
    assert export is not None and export.state == "done" and export.added == 1


def test_drive_refusals_fail_the_export(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock
) -> None:
    seed(store, objects, done_job())
    approve(store, "job_1", 1)
    drive = FakeDriveFolder()
    drive.fail_upload = PermanentError("403 storageQuotaExceeded")
    exports, _ = exports_of(store, clock)
    view = exports.request(
        "bat_1",
        "alice",
        asked=ExportRequest(only="approved", destination="drive", drive_folder_id="folder_1"),
    )
    assert view is not None and not isinstance(view, ExportRefusal)
    Exporter(make_settings(), store, objects, clock, drive=drive).handle(
        ExportMessage(batch_id="bat_1", export_id=view.export_id)
    )
    export = store.batches["bat_1"].export
    assert export is not None and export.state == "failed"
    assert "storageQuotaExceeded" in (export.error or "")
