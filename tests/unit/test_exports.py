"""The hand-over zip holds what was there when it was asked for (issue 27, item 4):
a request after the batch changed gets a new zip, the zip's list of images is fixed
and recorded with the export, and its counts come from that list."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from shared.contracts.links import LinkSigner
from shared.contracts.messages import ExportMessage
from shared.domain import handover, lifecycle, versions
from shared.domain.batch import Batch
from shared.domain.handover import Member
from shared.domain.job import Job, VariantState
from shared.domain.versions import VersionRequest
from shared.services.exports import MANIFEST, MANIFEST_JSON, Exporter, Exports
from shared.services.generation import Generation
from shared.services.rerolls import Queued, Rerolls
from shared.services.views import batch_view
from tests.fakes import (
    IMAGES_BUCKET,
    T0,
    FakeClock,
    FakeExportPublisher,
    FakeJobStore,
    FakeObjectStore,
    FakePublisher,
    make_batch,
    make_job,
    make_settings,
    mark_done,
)

DAY = T0.strftime("%Y-%m-%d")


def done_job(**overrides: Any) -> Job:
    job = mark_done(make_job(**overrides), *range(1, overrides.get("variant_count", 2) + 1))
    job.state = lifecycle.derive_state(job)
    return job


def seed(store: FakeJobStore, objects: FakeObjectStore, *jobs: Job) -> None:
    """A batch of ``jobs`` with their images in the bucket."""
    store.create_batch(make_batch(*jobs), jobs)
    for job in jobs:
        for variant in job.variants.values():
            assert variant.object_name is not None
            objects.put(IMAGES_BUCKET, variant.object_name, variant.object_name.encode())


def finish_reroll(store: FakeJobStore, objects: FakeObjectStore, job_id: str, n: int) -> str:
    """A re-roll of variant ``n`` that has finished: its image stored, its version done."""

    def reroll(job: Job) -> tuple[Job | None, str]:
        updated, added = versions.add_version(
            job, n, VersionRequest(None, 4242, "alice", DAY, "0.0670"), T0
        )
        assert updated is not None and added.version is not None
        version = updated.slot(n, added.version)
        version.state = VariantState.DONE
        version.object_name = f"images/{job.scene_id}/{job_id}/var_{n}_v{added.version}.png"
        return updated, version.object_name

    name = store.update_job(job_id, reroll)
    objects.put(IMAGES_BUCKET, name, name.encode())
    return name


def exports_of(store: FakeJobStore, clock: FakeClock) -> tuple[Exports, FakeExportPublisher]:
    publisher = FakeExportPublisher()
    return Exports(store, publisher, LinkSigner("k", "https://x"), clock), publisher


def zip_of(objects: FakeObjectStore, name: str | None) -> tuple[list[str], list[dict[str, str]]]:
    """The images a stored zip holds and its manifest rows."""
    assert name is not None
    with zipfile.ZipFile(io.BytesIO(objects.objects[(IMAGES_BUCKET, name)].data)) as archive:
        rows = list(csv.DictReader(io.StringIO(archive.read(MANIFEST).decode())))
        return [n for n in archive.namelist() if n not in (MANIFEST, MANIFEST_JSON)], rows


def test_a_request_after_the_batch_changed_gets_a_new_zip_one_while_nothing_changed_the_same(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock
) -> None:
    seed(store, objects, done_job())
    exports, publisher = exports_of(store, clock)
    first = exports.request("bat_1", "alice")
    assert first is not None
    exporter = Exporter(make_settings(), store, objects, clock)
    store.update_batch("bat_1", lambda b: handover.start(b, first.export_id, clock()))
    same = exports.request("bat_1", "alice")  # nothing changed: the zip being made
    assert same is not None and same.export_id == first.export_id
    finish_reroll(store, objects, "job_1", 1)
    second = exports.request("bat_1", "alice")  # a re-roll finished since: a new zip
    assert second is not None and second.export_id != first.export_id
    assert (second.state, second.images) == ("queued", 3)
    assert [m.export_id for m in publisher.published] == [first.export_id, second.export_id]
    # The superseded export's (re)delivery records nothing; the new one is the zip.
    exporter.handle(ExportMessage(batch_id="bat_1", export_id=first.export_id))
    exporter.handle(ExportMessage(batch_id="bat_1", export_id=second.export_id))
    export = store.batches["bat_1"].export
    assert export is not None and export.export_id == second.export_id
    assert export.state == "done" and export.images == 3
    assert zip_of(objects, export.object_name)[0] == [
        "sc-001/var_1.png",
        "sc-001/var_1_v2.png",
        "sc-001/var_2.png",
    ]
    assert exports.finished_zip("bat_1", first.export_id) is None


def test_the_zip_holds_the_images_recorded_when_it_was_asked_for(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock
) -> None:
    seed(store, objects, done_job(), done_job(job_id="job_2", scene_id="sc-002", variant_count=1))
    view = exports_of(store, clock)[0].request("bat_1", "alice")
    assert view is not None
    # Before its delivery starts, a re-roll finishes: the zip is still what was asked for.
    finish_reroll(store, objects, "job_2", 1)
    Exporter(make_settings(), store, objects, clock).handle(
        ExportMessage(batch_id="bat_1", export_id=view.export_id)
    )
    export = store.batches["bat_1"].export
    assert export is not None and export.state == "done" and export.images == 3
    images, rows = zip_of(objects, export.object_name)
    assert images == ["sc-001/var_1.png", "sc-001/var_2.png", "sc-002/var_1.png"]
    assert [(r["scene"], r["variant"], r["version"]) for r in rows] == [
        ("sc-001", "1", "1"),
        ("sc-001", "2", "1"),
        ("sc-002", "1", "1"),
    ]
    # The list is recorded with the export, as it was when asked for.
    asked = [Member("job_1", 1, 1), Member("job_1", 2, 1), Member("job_2", 1, 1)]
    assert handover.unpack(export.contents or "") == asked


def test_a_redelivery_after_a_delivery_died_counts_the_recorded_images_not_the_jobs_now(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock, links: LinkSigner
) -> None:
    seed(store, objects, done_job(), done_job(job_id="job_2", scene_id="sc-002", variant_count=1))
    view = exports_of(store, clock)[0].request("bat_1", "alice")
    assert view is not None and view.images == 3  # counted from its list at once
    # The first delivery started, wrote its zip and died before recording it; then a
    # re-roll of sc-002 finished.
    store.update_batch("bat_1", lambda b: handover.start(b, view.export_id, clock()))
    left = f"exports/bat_1/{view.export_id}-1.zip"
    objects.put(IMAGES_BUCKET, left, b"PK-what-the-dead-delivery-wrote")
    finish_reroll(store, objects, "job_2", 1)
    batch = store.batches["bat_1"]
    shown = batch_view(batch, store.get_jobs(batch.job_ids), links).export
    assert shown is not None and (shown.state, shown.images) == ("running", 3)
    Exporter(make_settings(), store, objects, clock).handle(
        ExportMessage(batch_id="bat_1", export_id=view.export_id)
    )
    export = store.batches["bat_1"].export
    assert export is not None and export.state == "done"
    assert export.object_name == f"exports/bat_1/{view.export_id}-2.zip"
    images, rows = zip_of(objects, export.object_name)
    assert export.images == len(images) == 3
    assert Counter(r["scene"] for r in rows) == {"sc-001": 2, "sc-002": 1}
    assert objects.objects[(IMAGES_BUCKET, left)].data == b"PK-what-the-dead-delivery-wrote"
    batch = store.batches["bat_1"]
    shown = batch_view(batch, store.get_jobs(batch.job_ids), links).export
    assert shown is not None and (shown.state, shown.images) == ("done", 3)


def test_an_export_asked_for_after_a_reroll_holds_the_rerolled_version(
    store: FakeJobStore,
    objects: FakeObjectStore,
    clock: FakeClock,
    publisher: FakePublisher,
    rerolls: Rerolls,
    make_generation: Callable[..., Generation],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issue's acceptance case: a zip is being written when a re-roll finishes,
    and the team asks again; the zip they get holds the new version."""
    seed(store, objects, done_job())
    exports, export_publisher = exports_of(store, clock)
    first = exports.request("bat_1", "alice")
    assert first is not None
    asked: list[str] = []
    original = objects.write_stream

    def rerolled_meanwhile(*args: Any) -> int | None:
        if not asked:  # while the first zip is written: re-roll, then ask again
            outcome = rerolls.request("job_1", 1, None, "alice", idempotency_key="k1")
            assert isinstance(outcome, Queued)
            ((message, _),) = publisher.published
            make_generation().handle(message)
            view = exports.request("bat_1", "alice")
            assert view is not None
            asked.append(view.export_id)
        return original(*args)

    monkeypatch.setattr(objects, "write_stream", rerolled_meanwhile)
    exporter = Exporter(make_settings(), store, objects, clock)
    for message in list(export_publisher.published):
        exporter.handle(message)
    for message in export_publisher.published[1:]:  # what the second request queued
        exporter.handle(message)
    (export_id,) = asked
    assert store.job("job_1").variant(1).versions[0].state == VariantState.UPLOADED
    name = exports.finished_zip("bat_1", export_id)
    assert name is not None, "the zip asked for after the re-roll was never finished"
    assert zip_of(objects, name)[0] == [
        "sc-001/var_1.png",
        "sc-001/var_1_v2.png",
        "sc-001/var_2.png",
    ]
    export = store.batches["bat_1"].export
    assert export is not None and export.images == 3


def test_an_export_asked_for_before_contents_were_recorded_fails_with_the_reason(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock
) -> None:
    seed(store, objects, done_job())
    store.update_batch("bat_1", lambda b: handover.request(b, "exp_old", "alice", clock()))

    def forget(batch: Batch) -> tuple[Batch | None, None]:
        assert batch.export is not None
        batch.export.contents = None  # as an export recorded by the earlier code
        return batch, None

    store.update_batch("bat_1", forget)
    Exporter(make_settings(), store, objects, clock).handle(
        ExportMessage(batch_id="bat_1", export_id="exp_old")
    )
    export = store.batches["bat_1"].export
    assert export is not None and export.state == "failed"
    assert "ask for it again" in (export.error or "")
    assert not [n for n in objects.names(IMAGES_BUCKET) if n.startswith("exports/")]


def test_an_image_the_list_names_that_is_no_longer_recorded_is_left_out_and_not_counted(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock
) -> None:
    seed(store, objects, done_job())
    view = exports_of(store, clock)[0].request("bat_1", "alice")
    assert view is not None

    def lose_variant_2(job: Job) -> tuple[Job | None, None]:
        job.variant(2).object_name = None  # not made after all (records repaired, say)
        return job, None

    store.update_job("job_1", lose_variant_2)
    Exporter(make_settings(), store, objects, clock).handle(
        ExportMessage(batch_id="bat_1", export_id=view.export_id)
    )
    export = store.batches["bat_1"].export
    assert export is not None and export.state == "done" and export.images == 1
    assert zip_of(objects, export.object_name)[0] == ["sc-001/var_1.png"]


# --------------------------------------------------------------------------- the list


def test_members_come_in_scene_job_variant_and_version_order_and_pack_both_ways() -> None:
    late = mark_done(make_job(job_id="job_b", scene_id="sc-001", variant_count=3), 1, 2)
    early = done_job(job_id="job_a", scene_id="sc-002", variant_count=1)
    slot = versions.add_version(late, 1, VersionRequest(None, 1, "a", DAY, "0.0670"), T0)[0]
    assert slot is not None
    pending = versions.add_version(slot, 2, VersionRequest(None, 2, "a", DAY, "0.0670"), T0)[0]
    assert pending is not None
    made = pending.slot(1, 2)
    made.state, made.object_name = VariantState.DONE, "images/sc-001/job_b/var_1_v2.png"
    members = handover.members_of([early, pending])
    assert members == [
        Member("job_b", 1, 1),
        Member("job_b", 1, 2),
        Member("job_b", 2, 1),
        Member("job_a", 1, 1),
    ]
    assert handover.pack(members) == "job_b=1,1.2,2;job_a=1"
    assert handover.unpack(handover.pack(members)) == members
    assert handover.unpack("") == [] and handover.pack([]) == ""
    with pytest.raises(ValueError, match="cannot be packed"):
        handover.pack([Member("job;1", 1)])


@pytest.mark.parametrize(
    ("jobs", "variants", "rerolled"),
    [(2000, 1, 0), (500, 4, 0), (250, 4, 1000)],
    ids=["2000x1", "500x4", "250x4+1000-versions"],
)
def test_the_list_of_2000_images_keeps_the_batch_document_small(
    jobs: int, variants: int, rerolled: int
) -> None:
    """With intake's job ids (``job_{16 hex}_{index}``) the list takes 6 to 28 bytes
    an image; the whole batch document stays far from Firestore's 1 MiB."""
    made = [
        done_job(job_id=f"job_0123456789abcdef_{i}", scene_id=f"s{i}", variant_count=variants)
        for i in range(1, jobs + 1)
    ]
    for job in made[: rerolled // variants]:
        for n in range(1, variants + 1):
            request = VersionRequest(None, 1, "a", DAY, "0.0670")
            version, _ = versions.add_version(job, n, request, T0)
            assert version is not None
            slot = version.slot(n, 2)
            slot.state, slot.object_name = VariantState.DONE, f"x/var_{n}_v2.png"
    batch = Batch(
        batch_id="bat_0123456789abcdef",
        caller="alice",
        spreadsheet_id="sheet123",
        worksheet="Scenes",
        model="gemini-3.1-flash-image",
        job_ids=[job.job_id for job in made],
        image_count=jobs * variants,
        estimated_cost_usd=str(Decimal("0.067") * jobs * variants),
        created_at=T0,
    )
    members = handover.members_of(made)
    assert len(members) == 2000
    updated, _ = handover.request(batch, "exp_0123456789abcdef", "alice", T0, members)
    assert updated is not None and updated.export is not None
    contents = updated.export.contents or ""
    document = len(json.dumps(updated.to_doc(), default=str).encode())
    assert len(contents) < 64 * 1024
    assert document < 256 * 1024
