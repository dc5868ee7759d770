"""A zip in parts on the Cloud Storage protocol (fake-gcs-server): the adapter's
create-only compose (a missing source is not tried here: fake-gcs-server answers
500 where Cloud Storage answers 404), and a zip written a part per delivery
joined into one valid zip (more parts than one compose call takes)."""

from __future__ import annotations

import io
import json
import uuid
import zipfile

import pytest

from shared.adapters.gcs_store import GcsObjectStore
from shared.contracts.messages import ExportMessage
from shared.services.exports import MANIFEST_JSON, Exporter
from tests.fakes import FakeClock, FakeExportPublisher, FakeJobStore, make_batch, make_settings
from tests.integration.conftest import LiveStack
from tests.unit.test_exports import done_job, exports_of
from tests.unit.test_zip_parts import out_of_time

pytestmark = pytest.mark.integration


def test_compose_joins_in_order_once(stack: LiveStack) -> None:
    bucket = stack.env["IMAGES_BUCKET"]
    objects = GcsObjectStore(stack.storage)
    base = f"exports/compose-{uuid.uuid4().hex[:8]}"
    parts = [f"{base}/p{i}" for i in range(3)]
    for i, name in enumerate(parts):
        assert objects.create(bucket, name, f"part {i};".encode() * (i + 1), "application/zip", {})
    size = objects.compose(bucket, parts, f"{base}/all.zip", "application/zip", {"k": "v"})
    blob = stack.storage.bucket(bucket).get_blob(f"{base}/all.zip")
    assert blob is not None and blob.download_as_bytes() == b"part 0;" + b"part 1;" * 2 + (
        b"part 2;" * 3
    )
    assert size == blob.size == 42
    assert objects.compose(bucket, parts, f"{base}/all.zip", "application/zip", {}) is None


def test_a_zip_of_forty_parts_is_joined_into_one_valid_zip(
    stack: LiveStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = stack.env["IMAGES_BUCKET"]
    objects = GcsObjectStore(stack.storage)
    store, clock = FakeJobStore(), FakeClock()
    tag = uuid.uuid4().hex[:8]
    jobs = [
        done_job(job_id=f"job_{tag}_{i}", scene_id=f"zp-{tag}-{i:02d}", variant_count=2)
        for i in range(20)
    ]
    store.create_batch(make_batch(*jobs), jobs)
    images: dict[str, bytes] = {}
    for job in jobs:
        for variant in job.variants.values():
            assert variant.object_name is not None
            data = uuid.uuid4().bytes * (500 + len(images))
            objects.create(bucket, variant.object_name, data, "image/png", {})
            images[variant.object_name] = data
    view = exports_of(store, clock)[0].request("bat_1", "alice")
    assert view is not None
    publisher = FakeExportPublisher()
    settings = make_settings(images_bucket=bucket)
    exporter = Exporter(settings, store, objects, clock, publisher=publisher)
    out_of_time(monkeypatch)  # one image per delivery: 40 parts, two compose calls
    queue = [ExportMessage(batch_id="bat_1", export_id=view.export_id)]
    while queue:
        exporter.handle(queue.pop(0))
        queue += publisher.published
        publisher.published.clear()
    export = store.batches["bat_1"].export
    assert export is not None and export.state == "done" and len(export.parts) == 39
    blob = stack.storage.bucket(bucket).get_blob(str(export.object_name))
    assert blob is not None and blob.size == export.bytes
    with zipfile.ZipFile(io.BytesIO(blob.download_as_bytes())) as archive:
        assert archive.testzip() is None
        rows = json.loads(archive.read(MANIFEST_JSON))["images"]
        assert len(rows) == 40
        contents = sorted(archive.read(row["file"]) for row in rows)
    assert contents == sorted(images.values())
