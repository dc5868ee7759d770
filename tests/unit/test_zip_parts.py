"""A zip too large for one delivery is written in parts and joined (issue 23, item 3):
each delivery writes what its deadline allows, records it and queues the next; the
joined zip is byte for byte a valid zip of every image, once, whatever delivery
died, ran twice or raced another."""

from __future__ import annotations

import io
import itertools
import json
import zipfile
from types import SimpleNamespace

import pytest

from shared.contracts.messages import ExportMessage
from shared.domain.errors import TransientError
from shared.services import exports
from shared.services.exports import MANIFEST, MANIFEST_JSON, Exporter, part_record_name
from shared.services.zip_parts import COMPOSE_MAX, compose_rounds
from tests.fakes import (
    IMAGES_BUCKET,
    FakeClock,
    FakeExportPublisher,
    FakeJobStore,
    FakeObjectStore,
    make_settings,
)
from tests.unit.test_exports import done_job, exports_of, seed


def out_of_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each look at the clock finds the deadline passed: every delivery writes one
    image (never none), then hands on."""
    ticks = itertools.count(0, 10_000)
    monkeypatch.setattr(exports, "time", SimpleNamespace(monotonic=lambda: float(next(ticks))))


@pytest.fixture
def no_time(monkeypatch: pytest.MonkeyPatch) -> None:
    out_of_time(monkeypatch)


def four_scenes(store: FakeJobStore, objects: FakeObjectStore) -> list[str]:
    """Four scenes of two images each; the images' bytes (distinct, of odd sizes)."""
    jobs = [done_job(job_id=f"job_{i}", scene_id=f"sc-00{i}") for i in range(1, 5)]
    seed(store, objects, *jobs)
    names = []
    for job in jobs:
        for variant in job.variants.values():
            assert variant.object_name is not None
            data = variant.object_name.encode() * (97 + len(names) * 13)
            objects.put(IMAGES_BUCKET, variant.object_name, data)
            names.append(variant.object_name)
    return names


def ask(store: FakeJobStore, clock: FakeClock) -> ExportMessage:
    view = exports_of(store, clock)[0].request("bat_1", "alice")
    assert view is not None
    return ExportMessage(batch_id="bat_1", export_id=view.export_id)


def exporting(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock
) -> tuple[Exporter, FakeExportPublisher, ExportMessage]:
    """An export of four scenes asked for: its exporter, publisher and message."""
    four_scenes(store, objects)
    message = ask(store, clock)
    publisher = FakeExportPublisher()
    return Exporter(make_settings(), store, objects, clock, publisher=publisher), publisher, message


def drain(exporter: Exporter, publisher: FakeExportPublisher, first: ExportMessage) -> int:
    """Deliver the message and every continuation it queues; how many deliveries."""
    queue, count = [first], 0
    while queue:
        exporter.handle(queue.pop(0))
        count += 1
        queue += publisher.published
        publisher.published.clear()
    return count


def read_zip(objects: FakeObjectStore, name: str | None) -> zipfile.ZipFile:
    assert name is not None
    archive = zipfile.ZipFile(io.BytesIO(objects.objects[(IMAGES_BUCKET, name)].data))
    assert archive.testzip() is None  # every member's CRC checks at its offset
    return archive


def test_a_zip_past_the_deadline_goes_on_in_parts_and_is_joined_into_one_valid_zip(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock, no_time: None
) -> None:
    names = four_scenes(store, objects)
    message = ask(store, clock)
    publisher = FakeExportPublisher()
    exporter = Exporter(make_settings(), store, objects, clock, publisher=publisher)
    assert drain(exporter, publisher, message) == 8
    export = store.batches["bat_1"].export
    assert export is not None and export.state == "done" and export.images == 8
    assert len(export.parts) == 7 and export.written == 7
    assert export.object_name == f"exports/bat_1/{export.export_id}-8-joined.zip"
    archive = read_zip(objects, export.object_name)
    images = [n for n in archive.namelist() if n not in (MANIFEST, MANIFEST_JSON)]
    assert len(images) == 8 and len(set(images)) == 8
    by_path = {row["file"]: row for row in json.loads(archive.read(MANIFEST_JSON))["images"]}
    assert sorted(by_path) == sorted(images)
    for path, name in zip(images, names, strict=True):
        assert archive.read(path) == objects.objects[(IMAGES_BUCKET, name)].data
    assert export.bytes == len(objects.objects[(IMAGES_BUCKET, export.object_name)].data)


def test_the_joined_zip_is_the_zip_one_delivery_writes(
    store: FakeJobStore,
    objects: FakeObjectStore,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    four_scenes(store, objects)
    publisher = FakeExportPublisher()
    whole = Exporter(make_settings(), store, objects, clock, publisher=publisher)
    drain(whole, publisher, ask(store, clock))
    at_once = store.batches["bat_1"].export
    assert at_once is not None and at_once.parts == []
    store.batches["bat_1"].export = None
    monkeypatch.setattr(
        exports, "time", SimpleNamespace(monotonic=itertools.count(0, 10_000).__next__)
    )
    parts = Exporter(make_settings(), store, objects, clock, publisher=publisher)
    drain(parts, publisher, ask(store, clock))
    joined = store.batches["bat_1"].export
    assert joined is not None and joined.state == "done"
    one = objects.objects[(IMAGES_BUCKET, str(at_once.object_name))].data
    assert objects.objects[(IMAGES_BUCKET, str(joined.object_name))].data == one


def test_two_deliveries_writing_the_same_part_record_it_once(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock, no_time: None
) -> None:
    exporter, publisher, message = exporting(store, objects, clock)
    raced: list[str] = []

    def second_delivery(bucket: str, name: str) -> None:
        # The first delivery's part is written but not yet recorded: a duplicate of
        # its message writes the same part and records it first.
        if name.endswith("-1.zip.json") and not raced:
            raced.append(name)
            exporter.handle(message)

    objects.on_create = second_delivery
    exporter.handle(message)
    export = store.batches["bat_1"].export
    assert export is not None
    assert export.parts == [f"exports/bat_1/{export.export_id}-2.zip"]
    assert len(publisher.published) == 1  # the one recorded part is continued once
    objects.on_create = None
    drain(exporter, publisher, publisher.published.pop())
    export = store.batches["bat_1"].export
    assert export is not None and export.state == "done" and export.images == 8
    assert f"exports/bat_1/{export.export_id}-1.zip" not in export.parts
    images = read_zip(objects, export.object_name).namelist()
    assert len(images) == len(set(images)) == 10  # 8 images and the two manifests


def test_a_part_recorded_whose_next_delivery_was_not_queued_goes_on_at_the_redelivery(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock, no_time: None
) -> None:
    exporter, publisher, message = exporting(store, objects, clock)
    publisher.fail = TransientError("pubsub down")
    with pytest.raises(TransientError):
        exporter.handle(message)  # raised: Pub/Sub delivers the message again
    export = store.batches["bat_1"].export
    assert export is not None and len(export.parts) == 1 and export.state == "running"
    publisher.fail = None
    drain(exporter, publisher, message)
    export = store.batches["bat_1"].export
    assert export is not None and export.state == "done" and export.images == 8
    assert len(read_zip(objects, export.object_name).namelist()) == 10


def test_a_part_without_its_record_is_not_counted(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock, no_time: None
) -> None:
    exporter, publisher, message = exporting(store, objects, clock)

    def die(bucket: str, name: str) -> None:
        raise RuntimeError("the instance died right after writing the part's record")

    objects.on_create = die
    with pytest.raises(RuntimeError):
        exporter.handle(message)
    export = store.batches["bat_1"].export
    assert export is not None and export.parts == [] and export.written == 0
    objects.on_create = None
    drain(exporter, publisher, message)
    export = store.batches["bat_1"].export
    assert export is not None and export.state == "done" and export.images == 8
    assert f"exports/bat_1/{export.export_id}-1.zip" not in export.parts
    assert (IMAGES_BUCKET, part_record_name(export.parts[0])) in objects.objects


@pytest.mark.parametrize("count", [1, 2, 32, 33, 63, 64, 200])
def test_parts_are_joined_within_32_sources_a_call_in_order(count: int) -> None:
    parts = [f"p{i}" for i in range(count)]
    rounds = compose_rounds(parts, "zip-interim")
    assert all(len(sources) <= COMPOSE_MAX for sources, _ in rounds)
    assert rounds[-1][1] == ""
    # Following the rounds gives every part once, in order.
    made: dict[str, list[str]] = {}
    for sources, target in rounds:
        made[target] = [p for source in sources for p in made.get(source, [source])]
    assert made[""] == parts
