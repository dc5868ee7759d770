"""Cancel, re-roll/edit, anchors and the hand-over zip: services on recording fakes,
and their routes through functions-framework's app."""

from __future__ import annotations

import csv
import io
import sys
import zipfile
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import functions_framework
import pytest
from flask.testing import FlaskClient

import functions
from functions import wiring
from shared.adapters.identity import hash_key
from shared.config.environment import get_settings
from shared.contracts.links import LinkSigner
from shared.contracts.messages import ExportMessage, JobMessage
from shared.domain import cancellation, handover, lifecycle, versions
from shared.domain.batch import Batch
from shared.domain.errors import NotReady, TransientError
from shared.domain.job import Job, JobState, VariantState
from shared.domain.versions import VersionRequest
from shared.services.cancels import Cancels
from shared.services.daily_budget import OverBudget
from shared.services.exports import Exporter, Exports
from shared.services.generation import Generation
from shared.services.intake import Intake
from shared.services.ledger import JobLedger
from shared.services.preflight import Preflight
from shared.services.rerolls import Queued, Refused, Rerolls
from shared.services.sheet_check import SheetCheck
from tests.fakes import (
    IMAGES_BUCKET,
    LINK_SIGNING_KEY,
    PUBLIC_BASE_URL,
    T0,
    FakeBudgetLedger,
    FakeClock,
    FakeExportPublisher,
    FakeIdempotencyStore,
    FakeImageGenerator,
    FakeJobStore,
    FakeModelDirectory,
    FakeObjectStore,
    FakePublisher,
    FakeSheetLayouts,
    UnseekableSink,
    jpeg_bytes,
    make_batch,
    make_job,
    make_settings,
    mark_done,
    png_bytes,
)

MAIN = Path(__file__).resolve().parents[2] / "main.py"
DAY = T0.strftime("%Y-%m-%d")
PRICE = Decimal("0.067")


def done_job(**overrides: Any) -> Job:
    job = mark_done(make_job(**overrides), *range(1, overrides.get("variant_count", 2) + 1))
    job.state = lifecycle.derive_state(job)
    return job


def batch_of(*jobs: Job, caller: str = "alice") -> Batch:
    return make_batch(*jobs, caller=caller)


# --------------------------------------------------------------------------- cancels


def test_cancel_of_a_batch_cancels_each_job_gives_back_and_queues_row_updates(
    store: FakeJobStore, budget: FakeBudgetLedger, publisher: FakePublisher, clock: FakeClock
) -> None:
    budget.reserve("alice", DAY, "batch:bat_1", 3, PRICE * 3, 100, Decimal(100))
    # Jobs as intake records them: reserved on the day (the ledger settles only those).
    first = make_job(job_id="job_1", budget_day=DAY)
    lease = timedelta(seconds=60)
    running, _ = lifecycle.claim(
        make_job(job_id="job_2", variant_count=1, budget_day=DAY), 1, "c", T0, lease, 3
    )
    assert running is not None
    store.create_batch(batch_of(first, running), [first, running])
    cancels = Cancels(store, JobLedger(store, budget=budget), publisher, clock)
    answer = cancels.cancel_batch("bat_1", "alice")
    assert answer is not None
    assert (answer.stopped, answer.running, answer.kept) == (2, 1, 0)
    assert [j.outcome for j in answer.jobs] == ["cancelled", "cancelling"]
    assert store.job("job_1").state == JobState.CANCELLED
    assert budget.used[("alice", DAY)].images == 1
    assert [m.job_id for m, _ in publisher.published] == ["job_1", "job_2"]
    assert cancels.cancel_batch("bat_1", "bob") is None  # someone else's
    assert cancels.cancel_job("job_1", "bob") is None
    assert cancels.cancel_job("job_1", "root", admin=True) is not None


# --------------------------------------------------------------------------- rerolls


def test_a_reroll_is_budgeted_recorded_and_published_once_per_key(
    rerolls: Rerolls, store: FakeJobStore, budget: FakeBudgetLedger, publisher: FakePublisher
) -> None:
    store.add(done_job())
    first = rerolls.request("job_1", 2, None, "alice", idempotency_key="k1")
    assert isinstance(first, Queued) and not first.replay
    assert (first.answer.version, first.answer.kind, first.answer.state) == (2, "reroll", "queued")
    version = store.job("job_1").variant(2).versions[0]
    assert (version.seed, version.caller, version.budget_day) == (777, "alice", DAY)
    assert [(m.variant, m.version) for m, _ in publisher.published] == [(2, 2)]
    assert budget.used[("alice", DAY)].images == 1
    again = rerolls.request("job_1", 2, None, "alice", idempotency_key="k1")
    assert isinstance(again, Queued) and again.replay and again.answer.version == 2
    assert len(publisher.published) == 1 and budget.used[("alice", DAY)].images == 1
    assert rerolls.request("job_1", 2, None, "bob", idempotency_key="k1") is None
    assert rerolls.request("job_1", 9, None, "alice") is None


def test_a_reroll_that_cannot_be_made_gives_the_budget_back(
    rerolls: Rerolls, store: FakeJobStore, budget: FakeBudgetLedger, publisher: FakePublisher
) -> None:
    store.add(make_job())  # still queued: nothing to re-roll yet
    refused = rerolls.request("job_1", 1, "brighter", "alice")
    assert isinstance(refused, Refused) and "still being made" in refused.message
    assert budget.used[("alice", DAY)].images == 0 and publisher.published == []
    budget.reserve("alice", DAY, "batch:bat_1", 5, PRICE * 5, 100, Decimal(100))
    store.add(done_job(job_id="job_2"))
    over = rerolls.request("job_2", 1, None, "alice")
    assert isinstance(over, OverBudget) and over.budget.images_remaining == 0
    assert store.job("job_2").variant(1).versions == []


def test_a_reroll_of_a_job_whose_scene_was_sent_again_is_refused_before_reserving(
    rerolls: Rerolls, store: FakeJobStore, budget: FakeBudgetLedger, publisher: FakePublisher
) -> None:
    store.add(done_job(), done_job(job_id="job_2", created_at=T0 + timedelta(minutes=5)))
    refused = rerolls.request("job_1", 1, None, "alice", idempotency_key="k1")
    assert isinstance(refused, Refused) and "sent again as job job_2" in refused.message
    assert refused.code == "row_taken"
    assert budget.used.get(("alice", DAY)) is None or budget.used[("alice", DAY)].images == 0
    assert publisher.published == [] and store.job("job_1").variant(1).versions == []
    assert isinstance(rerolls.request("job_2", 1, None, "alice"), Queued)  # the row's job


def test_a_reroll_that_cannot_be_queued_yet_is_finished_by_its_retry(
    rerolls: Rerolls, store: FakeJobStore, budget: FakeBudgetLedger, publisher: FakePublisher
) -> None:
    store.add(done_job())
    publisher.fail["job_1"] = "pubsub down"
    with pytest.raises(TransientError, match="could not be queued yet: pubsub down"):
        rerolls.request("job_1", 1, None, "alice", idempotency_key="k1")
    # The version is recorded and reserved once; nothing is failed or given back.
    (version,) = store.job("job_1").variant(1).versions
    assert version.state == VariantState.PENDING
    assert budget.used[("alice", DAY)].images == 1
    del publisher.fail["job_1"]
    answer = rerolls.request("job_1", 1, None, "alice", idempotency_key="k1")
    assert isinstance(answer, Queued) and not answer.replay
    assert answer.answer.version == 2 and answer.answer.state == "queued"
    assert len(store.job("job_1").variant(1).versions) == 1
    assert budget.used[("alice", DAY)].images == 1
    assert [(m.variant, m.version) for m, _ in publisher.published] == [(1, 2)]


# --------------------------------------------------------------------------- generation


def with_version(job: Job, n: int, instruction: str | None = None) -> Job:
    updated, added = versions.add_version(
        job, n, VersionRequest(instruction, 4242, job.caller, DAY, "0.0670"), T0
    )
    assert updated is not None and added.version == 2
    return updated


def test_a_reroll_makes_a_new_object_with_a_new_seed_and_leaves_the_job_as_it_was(
    make_generation: Callable[..., Generation],
    store: FakeJobStore,
    objects: FakeObjectStore,
    generator: FakeImageGenerator,
) -> None:
    store.add(with_version(done_job(), 1))
    message = JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001", variant=1, version=2)
    make_generation().handle(message)
    make_generation().handle(message)  # a redelivery pays nothing more
    assert [(c.prompt, c.seed) for c in generator.calls] == [("a red fox in the snow", 4242)]
    assert objects.names(IMAGES_BUCKET) == ["images/sc-001/job_1/var_1_v2.png"]
    stored = objects.objects[(IMAGES_BUCKET, "images/sc-001/job_1/var_1_v2.png")]
    assert stored.metadata["version"] == "2"
    job = store.job("job_1")
    assert job.variant(1).versions[0].state == VariantState.UPLOADED
    assert job.state == JobState.COMPLETED


def test_an_edit_sends_the_current_image_with_the_instruction(
    make_generation: Callable[..., Generation],
    store: FakeJobStore,
    objects: FakeObjectStore,
    generator: FakeImageGenerator,
) -> None:
    source = jpeg_bytes()
    objects.put(IMAGES_BUCKET, "images/sc-001/job_1/var_1.png", source)
    store.add(with_version(done_job(), 1, "make it night"))
    message = JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001", variant=1, version=2)
    make_generation().handle(message)
    (call,) = generator.calls
    assert call.prompt == "make it night"
    assert [(r.data, r.mime_type) for r in call.references] == [(source, "image/jpeg")]


def test_an_edit_whose_image_is_gone_fails_only_that_version(
    make_generation: Callable[..., Generation], store: FakeJobStore, generator: FakeImageGenerator
) -> None:
    store.add(with_version(done_job(), 1, "make it night"))
    message = JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001", variant=1, version=2)
    make_generation().handle(message)
    job = store.job("job_1")
    assert generator.calls == []
    assert job.variant(1).versions[0].error == (
        "the image to edit (images/sc-001/job_1/var_1.png) is gone"
    )
    assert job.state == JobState.COMPLETED


def test_a_cancelled_jobs_message_makes_nothing(
    make_generation: Callable[..., Generation], store: FakeJobStore, generator: FakeImageGenerator
) -> None:
    job, _ = cancellation.cancel(make_job(), "alice", T0)
    assert job is not None
    store.add(job)
    make_generation().handle(JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001"))
    assert generator.calls == []


def anchored(objects: FakeObjectStore, store: FakeJobStore, caller: str = "alice") -> bytes:
    """An earlier job of scene sc-004 with an image for variant 2."""
    image = png_bytes((16, 16))
    source = done_job(job_id="job_src", scene_id="sc-004", caller=caller)
    source.variant(2).object_name = "images/sc-004/job_src/var_2.png"
    objects.put(IMAGES_BUCKET, "images/sc-004/job_src/var_2.png", image)
    store.add(source)
    return image


def test_style_refs_and_anchors_come_first_up_to_the_models_limit(
    make_generation: Callable[..., Generation],
    store: FakeJobStore,
    objects: FakeObjectStore,
    generator: FakeImageGenerator,
) -> None:
    image = anchored(objects, store)
    store.add(make_job(style_refs=["scene:sc-004#2", "job:job_src#2"], variant_count=1))
    # The model's limit is its catalog entry's max_reference_images.
    generation = make_generation(
        model_catalog='{"models": {"gemini-3.1-flash-image": {"max_reference_images": 1}}}'
    )
    generation.handle(JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001"))
    (call,) = generator.calls
    assert [r.data for r in call.references] == [image]


def test_an_anchor_to_another_callers_output_fails_the_job_with_the_reason(
    make_generation: Callable[..., Generation],
    store: FakeJobStore,
    objects: FakeObjectStore,
    generator: FakeImageGenerator,
) -> None:
    anchored(objects, store, caller="bob")
    store.add(make_job(ref_pack_public_url="scene:sc-004#2", variant_count=1))
    make_generation().handle(JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001"))
    job = store.job("job_1")
    assert generator.calls == [] and job.state == JobState.FAILED
    assert "style anchor scene:sc-004#2 names no output the job's caller may see" in str(job.error)


def test_an_anchor_still_being_made_is_waited_for(
    make_generation: Callable[..., Generation], store: FakeJobStore
) -> None:
    store.add(make_job(job_id="job_src", scene_id="sc-004"))
    store.add(make_job(style_refs=["job:job_src#1"], variant_count=1))
    for _ in range(5):  # more deliveries than the failure budget: waiting is no failure
        with pytest.raises(NotReady, match="its image is not made yet"):
            message = JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001")
            make_generation().handle(message)
    job = store.job("job_1")
    assert (job.state, job.variant(1).failures) == (JobState.GENERATING, 0)


# --------------------------------------------------------------------------- exports


def test_the_zip_streams_every_kept_version_and_a_manifest(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock
) -> None:
    job = done_job()
    job = with_version(job, 1)
    version = job.variant(1).versions[0]
    version.state, version.object_name = VariantState.DONE, "images/sc-001/job_1/var_1_v2.png"
    version.cost_usd = "0.0670"
    failed = make_job(job_id="job_2", scene_id="sc-002", variant_count=1)
    failed, _ = lifecycle.variant_failed(failed, 1, "blocked", T0)
    assert failed is not None
    store.create_batch(batch_of(job, failed), [job, failed])
    big = b"x" * (3 * 1024 * 1024)
    for name in ("var_1.png", "var_2.png", "var_1_v2.png"):
        objects.put(IMAGES_BUCKET, f"images/sc-001/job_1/{name}", big + name.encode())
    exports = Exports(store, FakeExportPublisher(), LinkSigner("k", "https://x"), clock)
    view = exports.request("bat_1", "alice")
    assert view is not None and view.state == "queued"
    export_id = view.export_id
    sinks: list[UnseekableSink] = []
    original = objects.write_stream

    def recording(*args: Any) -> int | None:
        write = args[-1]

        def wrapped(out: Any) -> None:
            sinks.append(out)
            write(out)

        return original(*args[:-1], wrapped)

    objects.write_stream = recording  # type: ignore[method-assign]
    exporter = Exporter(make_settings(), store, objects, clock)
    exporter.handle(ExportMessage(batch_id="bat_1", export_id=export_id))
    exporter.handle(ExportMessage(batch_id="bat_1", export_id=export_id))  # a redelivery: done
    export = store.batches["bat_1"].export
    assert export is not None and export.state == "done" and export.images == 3
    name = f"exports/bat_1/{export_id}-1.zip"
    assert export.object_name == name and [c[0] for c in objects.calls].count("write_stream") == 1
    data = objects.objects[(IMAGES_BUCKET, name)].data
    assert export.bytes == len(data)
    # Streamed: nothing near a whole image was written at once.
    assert sinks[0].largest_write < 64 * 1024
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == [
            "sc-001/var_1.png",
            "sc-001/var_1_v2.png",
            "sc-001/var_2.png",
            "manifest.csv",
            "manifest.json",
        ]
        assert archive.read("sc-001/var_1_v2.png") == big + b"var_1_v2.png"
        rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert [(r["variant"], r["version"], r["cost"]) for r in rows] == [
        ("1", "1", ""),
        ("1", "2", "0.0670"),
        ("2", "1", ""),
    ]
    link = exports.request("bat_1", "alice")
    assert link is not None and link.export_id != export_id  # a finished zip: a new one


def test_a_second_request_while_a_zip_is_made_answers_that_zip(
    store: FakeJobStore, clock: FakeClock
) -> None:
    store.create_batch(batch_of(done_job()), [done_job()])
    publisher = FakeExportPublisher()
    exports = Exports(store, publisher, LinkSigner("k", "https://x"), clock)
    first, second = exports.request("bat_1", "alice"), exports.request("bat_1", "alice")
    assert first is not None and second is not None and first.export_id == second.export_id
    # Still queued: its message may never have gone out (the first request died right
    # after recording it), so asking again sends it again; the exporter makes one zip.
    assert [m.export_id for m in publisher.published] == [first.export_id] * 2
    store.update_batch("bat_1", lambda b: handover.start(b, first.export_id, clock()))
    third = exports.request("bat_1", "alice")
    assert third is not None and third.export_id == first.export_id
    assert len(publisher.published) == 2  # a delivery has it: nothing to send again
    assert exports.request("bat_1", "bob") is None


def test_an_error_while_an_image_is_copied_into_the_zip_is_the_error_raised() -> None:
    from shared.services.exports import Entry, write_zip

    def copy(name: str, member: Any) -> None:
        member.write(b"half an image")
        raise TransientError("the download broke off")

    entry = Entry("sc-001/var_1.png", "images/x.png", {"created": T0.isoformat()}, "j/1/1")
    with pytest.raises(TransientError, match="broke off"):
        write_zip(io.BytesIO(), [entry], copy)


def test_an_export_that_cannot_be_queued_is_failed_with_the_reason(
    store: FakeJobStore, clock: FakeClock
) -> None:
    store.create_batch(batch_of(done_job()), [done_job()])
    publisher = FakeExportPublisher()
    publisher.fail = TransientError("pubsub down")
    exports = Exports(store, publisher, LinkSigner("k", "https://x"), clock)
    with pytest.raises(TransientError):
        exports.request("bat_1", "alice")
    export = store.batches["bat_1"].export
    assert export is not None and export.state == "failed"
    assert export.error == "could not be queued: pubsub down"


def test_write_zip_leaves_out_an_image_that_is_gone() -> None:
    from shared.services.exports import Entry, write_zip

    def copy(name: str, out: Any) -> None:
        if name == "gone":
            from shared.domain.errors import NotFound

            raise NotFound(name)
        out.write(b"data")

    sink = UnseekableSink()
    row = {"created": "2030-01-02T03:04:05+00:00", "file": "a"}
    entries = [
        Entry("s/var_1.png", "gone", dict(row), "j/1/1"),
        Entry("s/var_2.png", "ok", dict(row), "j/2/1"),
    ]
    assert len(write_zip(sink, entries, copy).rows) == 1  # type: ignore[arg-type]
    with zipfile.ZipFile(io.BytesIO(sink.data())) as archive:
        assert archive.namelist() == ["s/var_2.png", "manifest.csv", "manifest.json"]


# --------------------------------------------------------------------------- HTTP


@pytest.fixture
def app(
    monkeypatch: pytest.MonkeyPatch,
    store: FakeJobStore,
    budget: FakeBudgetLedger,
    publisher: FakePublisher,
    idempotency: FakeIdempotencyStore,
    objects: FakeObjectStore,
    clock: FakeClock,
) -> FlaskClient:
    for name, value in {
        "GOOGLE_CLOUD_PROJECT": "test-project",
        "IMAGES_BUCKET": IMAGES_BUCKET,
        "API_KEY_HASHES": f"alice:{hash_key('alice-key')},bob:{hash_key('bob-key')}",
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "LINK_SIGNING_KEY": LINK_SIGNING_KEY,
        "ALLOWED_SPREADSHEET_IDS": "sheet123",
        "DAILY_IMAGE_CAP": "3",
    }.items():
        monkeypatch.setenv(name, value)
    links = LinkSigner(LINK_SIGNING_KEY, PUBLIC_BASE_URL)
    ledger = JobLedger(store, budget=budget)
    cfg = get_settings()
    exporter_publisher = FakeExportPublisher()
    monkeypatch.setattr(wiring, "job_store", lambda: store)
    monkeypatch.setattr(wiring, "object_store", lambda: objects)
    monkeypatch.setattr(wiring, "link_signer", lambda: links)
    monkeypatch.setattr(wiring, "cancels", lambda: Cancels(store, ledger, publisher, clock))
    monkeypatch.setattr(
        wiring,
        "rerolls",
        lambda: Rerolls(cfg, store, ledger, publisher, budget, idempotency, clock),
    )
    monkeypatch.setattr(wiring, "exports", lambda: Exports(store, exporter_publisher, links, clock))
    monkeypatch.setattr(
        wiring,
        "intake",
        lambda: Intake(
            cfg,
            store,
            ledger,
            publisher,
            links,
            budget,
            idempotency,
            Preflight(FakeModelDirectory(), ttl_s=300),
            SheetCheck(FakeSheetLayouts()),
            clock,
        ),
    )
    for name in ("main", "functions.http_api"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.delattr(functions, "http_api", raising=False)
    client: FlaskClient = functions_framework.create_app(
        target="http_api", source=str(MAIN)
    ).test_client()
    return client


ALICE = {"X-API-Key": "alice-key"}


def test_routes_answer_cancel_reroll_and_export(app: FlaskClient, store: FakeJobStore) -> None:
    job = done_job()
    store.create_batch(batch_of(job), [job])
    cancelled = app.post("/jobs/job_1:cancel", headers=ALICE)
    assert cancelled.status_code == 200 and cancelled.json["outcome"] == "already_finished"
    assert app.post("/jobs/job_1:cancel", headers={"X-API-Key": "bob-key"}).status_code == 404
    assert app.post("/batches/bat_1:cancel", headers=ALICE).json["kept"] == 2
    rerolled = app.post(
        "/jobs/job_1/variants/2:reroll",
        json={"instruction": "make it night"},
        headers={**ALICE, "Idempotency-Key": "k"},
    )
    assert rerolled.status_code == 202, rerolled.json
    assert (rerolled.json["version"], rerolled.json["kind"]) == (2, "edit")
    replay = app.post(
        "/jobs/job_1/variants/2:reroll",
        json={"instruction": "make it night"},
        headers={**ALICE, "Idempotency-Key": "k"},
    )
    assert replay.headers["Idempotent-Replay"] == "true"
    plain = app.post("/jobs/job_1/variants/1:reroll", headers=ALICE)  # no body at all
    assert plain.status_code == 202 and plain.json["kind"] == "reroll"
    assert app.post("/jobs/job_1/variants/5:reroll", headers=ALICE).status_code == 404
    bad = app.post("/jobs/job_1/variants/1:reroll", json={"nope": 1}, headers=ALICE)
    assert bad.status_code == 400 and bad.json["details"][0]["field"] == "nope"
    exported = app.post("/batches/bat_1:export", headers=ALICE)
    assert exported.status_code == 202 and exported.json["state"] == "queued"
    shown = app.get("/batches/bat_1", headers=ALICE)
    assert shown.status_code == 200


def test_reroll_refusals_map_to_409_and_429(
    app: FlaskClient, store: FakeJobStore, budget: FakeBudgetLedger
) -> None:
    store.add(make_job())
    assert app.post("/jobs/job_1/variants/1:reroll", headers=ALICE).json["error"] == "not_ready"
    store.add(done_job(job_id="job_2"))
    budget.reserve("alice", DAY, "batch:bat_1", 3, PRICE * 3, 100, Decimal(100))
    over = app.post("/jobs/job_2/variants/1:reroll", headers=ALICE)
    assert over.status_code == 429 and over.json["budget"]["images_remaining"] == 0


def test_version_links_are_signed_apart_and_version_1_links_are_unchanged(
    app: FlaskClient, store: FakeJobStore, objects: FakeObjectStore
) -> None:
    links = LinkSigner(LINK_SIGNING_KEY, PUBLIC_BASE_URL)
    import hashlib
    import hmac

    old = hmac.new(LINK_SIGNING_KEY.encode(), b"job_1/1/thumb", hashlib.sha256).hexdigest()[:32]
    assert links.link("job_1", 1, "thumb") == (
        f"{PUBLIC_BASE_URL}/assets/job_1/1?size=thumb&sig={old}"
    )
    job = with_version(done_job(), 1)
    slot = job.variant(1).versions[0]
    slot.state, slot.object_name = VariantState.DONE, "images/sc-001/job_1/var_1_v2.png"
    slot.thumb_name = "thumbnails/sc-001/job_1/var_1_v2.jpg"
    store.add(job)
    link = links.link("job_1", 1, "full", 2).removeprefix(PUBLIC_BASE_URL)
    answer = app.get(link)
    assert answer.status_code == 302
    assert objects.calls[-1] == ("signed_url", IMAGES_BUCKET, "images/sc-001/job_1/var_1_v2.png")
    assert app.get(link.replace("version=2", "version=3")).status_code == 403
    assert app.get(link.replace("version=2", "version=x")).status_code == 403


def test_the_zip_link_redirects_once_done_and_refuses_a_bad_signature(
    app: FlaskClient, store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock
) -> None:
    job = done_job()
    store.create_batch(batch_of(job), [job])
    view = app.post("/batches/bat_1:export", headers=ALICE).json
    export_id = view["export_id"]
    links = LinkSigner(LINK_SIGNING_KEY, PUBLIC_BASE_URL)
    link = links.export_link("bat_1", export_id).removeprefix(PUBLIC_BASE_URL)
    assert app.get(link).status_code == 404  # not made yet
    Exporter(make_settings(), store, objects, clock).handle(
        ExportMessage(batch_id="bat_1", export_id=export_id)
    )
    answer = app.get(link)
    assert answer.status_code == 302
    assert objects.calls[-1] == ("signed_url", IMAGES_BUCKET, f"exports/bat_1/{export_id}-1.zip")
    # One hex digit changed (the id is random: "0" may be the last digit already).
    forged = link[:-1] + ("1" if link.endswith("0") else "0")
    assert app.get(forged).status_code == 403
    shown = app.get("/batches/bat_1", headers=ALICE).json["export"]
    assert shown["state"] == "done" and shown["download_url"].endswith(link)


def test_style_refs_naming_no_visible_output_are_refused_by_field(
    app: FlaskClient, store: FakeJobStore
) -> None:
    store.add(done_job(job_id="job_bob", scene_id="sc-009", caller="bob"))
    body = {
        "runMode": "dry_run",
        "spreadsheet_id": "sheet123",
        "worksheet": "Scenes",
        "style_refs": ["scene:sc-009#1", "https://example.com/a.png"],
        "items": [
            {
                "scene_id": "sc-001",
                "prompt": "p",
                "variants": 1,
                "ref_pack_public_url": "job:job_bob#1",
            }
        ],
    }
    answer = app.post("/batch/images", json=body, headers=ALICE)
    assert answer.status_code == 400
    assert [d["field"] for d in answer.json["details"]] == [
        "style_refs[0]",
        "items[0].ref_pack_public_url",
    ]
    bob = app.post("/batch/images", json=body, headers={"X-API-Key": "bob-key"})
    assert bob.status_code == 200


def test_a_redelivery_after_a_delivery_died_writes_and_records_its_own_zip(
    store: FakeJobStore, objects: FakeObjectStore, clock: FakeClock
) -> None:
    """Found by the simulation (seed 1518): the first delivery wrote its zip and died
    before recording it; an image was made meanwhile; the redelivery recorded the
    first zip with its own count (one image more than the zip held)."""
    job = done_job()
    store.create_batch(batch_of(job), [job])
    view = Exports(store, FakeExportPublisher(), LinkSigner("k", "https://x"), clock).request(
        "bat_1", "alice"
    )
    assert view is not None
    for n in (1, 2):
        objects.put(IMAGES_BUCKET, f"images/sc-001/job_1/var_{n}.png", b"img")
    # The first delivery: started, wrote its zip (of one image), died.
    store.update_batch("bat_1", lambda b: handover.start(b, view.export_id, clock()))
    first = f"exports/bat_1/{view.export_id}-1.zip"
    objects.put(IMAGES_BUCKET, first, b"PK-a-zip-of-one-image")
    Exporter(make_settings(), store, objects, clock).handle(
        ExportMessage(batch_id="bat_1", export_id=view.export_id)
    )
    export = store.batches["bat_1"].export
    second = f"exports/bat_1/{view.export_id}-2.zip"
    assert export is not None and export.state == "done" and export.object_name == second
    with zipfile.ZipFile(io.BytesIO(objects.objects[(IMAGES_BUCKET, second)].data)) as archive:
        assert len(archive.namelist()) - 2 == export.images == 2
    assert objects.objects[(IMAGES_BUCKET, first)].data == b"PK-a-zip-of-one-image"


def test_images_are_read_ahead_in_parallel_in_order_and_bounded() -> None:
    import threading

    from shared.services.exports import ReadAhead

    started: list[str] = []
    release = threading.Event()
    lock = threading.Lock()

    def read(name: str) -> bytes:
        with lock:
            started.append(name)
        release.wait(5)
        return name.encode()

    names = [f"img{i}" for i in range(6)]
    with ReadAhead(read, names, ahead=3) as ahead:
        out = io.BytesIO()
        threading.Timer(0.2, release.set).start()
        ahead.copy("img0", out)  # type: ignore[arg-type]
        # Three reads were started at once (not one after the other), no more.
        assert sorted(started[:3]) == ["img0", "img1", "img2"]
        for name in names[1:]:
            ahead.copy(name, out)  # type: ignore[arg-type]
    assert out.getvalue() == b"".join(n.encode() for n in names)
    with ReadAhead(read, names, ahead=2) as ahead, pytest.raises(ValueError):
        ahead.copy("img3", io.BytesIO())  # type: ignore[arg-type]


def test_with_no_read_ahead_each_image_streams_in_the_callers_thread() -> None:
    import threading

    from shared.services.exports import ReadAhead

    threads: list[str] = []

    def stream(name: str, out: Any) -> None:
        threads.append(threading.current_thread().name)
        out.write(name.encode())

    out = io.BytesIO()
    with ReadAhead(lambda name: b"never", ["a", "b"], ahead=1, stream=stream) as ahead:
        ahead.copy("a", out)  # type: ignore[arg-type]
        ahead.copy("b", out)  # type: ignore[arg-type]
    assert out.getvalue() == b"ab"
    assert threads == [threading.current_thread().name] * 2
