"""Issue 5 on the local stack: exactly-once completion, the sheet's writes, durable links.

Counts come from where they happen: the Sheets stub's write log and
statistics, Firestore in its emulator, and the thumbnail function's own
structured log.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from devstack.stack import HEADER
from shared.adapters.firestore_store import FirestoreJobStore
from shared.domain import lifecycle
from shared.domain.batch import Batch
from shared.domain.job import Job, JobState, VariantState
from shared.services.ledger import JobLedger
from tests.integration.conftest import LiveStack

pytestmark = pytest.mark.integration

ROW_RANGE = re.compile(r"(?P<sheet>.+)!(?P<first>[A-Z]+)(?P<row>\d+)(?::[A-Z]+(?P<end_row>\d+))?")
BURST_JOBS = 100


# --------------------------------------------------------------------------- helpers


def png(color: tuple[int, int, int] = (200, 30, 30), size: int = 96) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format="PNG")
    return out.getvalue()


def stub(stack: LiveStack, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    url = f"{stack.env['SHEETS_API_URL']}/_stub/{path}"
    answer = (
        requests.post(url, json=payload, timeout=10)
        if payload is not None
        else requests.get(url, timeout=10)
    )
    answer.raise_for_status()
    data: dict[str, Any] = answer.json()
    return data


def function_log(stack: LiveStack, name: str) -> list[dict[str, Any]]:
    """The structured entries a function process logged (one JSON object a line)."""
    path = Path(stack.env["SHEET_CSV"]).parent / "logs" / f"fn-{name}.log"
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries


def finished_entries(stack: LiveStack, job_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in function_log(stack, "thumbnail")
        if e.get("event") == "job_finished" and e.get("job_id") == job_id
    ]


def row_number(stack: LiveStack, scene_id: str) -> int:
    keys = stack.worksheet.col_values(HEADER.index("scene_id") + 1)
    return keys.index(scene_id) + 1


def status_writes(stack: LiveStack, scene_id: str, value: str | None = None) -> list[str]:
    """Every status the sheet received for the scene's row (from the stub's write log:
    a write covers a row from one column to another, ``Scenes!A5:H5``)."""
    row = row_number(stack, scene_id)
    status = HEADER.index("status_img")
    seen = []
    for write in stub(stack, "writes")["writes"]:
        for entry in write["data"]:
            found = ROW_RANGE.fullmatch(entry["range"].replace("'", ""))
            if found is None or found["sheet"] != stack.env["WORKSHEET"]:
                continue
            if int(found["row"]) != row or int(found["end_row"] or row) != row:
                continue
            first = column_index(found["first"])
            line = entry["values"][0]
            if first <= status < first + len(line) and line[status - first] is not None:
                seen.append(line[status - first])
    return [s for s in seen if value is None or s == value]


def column_index(letters: str) -> int:
    """A column's index from 0 ("A" is 0)."""
    index = 0
    for letter in letters:
        index = index * 26 + ord(letter) - ord("A") + 1
    return index - 1


def seed_jobs(stack: LiveStack, scenes: list[str], variants: int) -> list[Job]:
    """Jobs whose images are generated and uploaded, as the generate function leaves them."""
    now = datetime.now(UTC)
    batch_id = f"bat_{uuid.uuid4().hex[:12]}"
    jobs = []
    for scene_id in scenes:
        job = Job(
            job_id=f"job_{uuid.uuid4().hex[:16]}",
            batch_id=batch_id,
            scene_id=scene_id,
            prompt="seeded",
            variant_count=variants,
            caller="local-dev",
            spreadsheet_id=stack.env["SPREADSHEET_ID"],
            worksheet=stack.env["WORKSHEET"],
            model="gemini-3.1-flash-image",
            price_per_image="0.0670",
            created_at=now,
            updated_at=now,
            started_at=now,
            state=JobState.GENERATING,
        )
        for n in range(1, variants + 1):
            job.variant(n).state = VariantState.UPLOADED
            job.variant(n).object_name = image_name(job, n)
        jobs.append(job)
    batch = Batch(
        batch_id=batch_id,
        caller="local-dev",
        spreadsheet_id=stack.env["SPREADSHEET_ID"],
        worksheet=stack.env["WORKSHEET"],
        model="gemini-3.1-flash-image",
        job_ids=[j.job_id for j in jobs],
        image_count=len(jobs) * variants,
        estimated_cost_usd="0",
        created_at=now,
    )
    FirestoreJobStore(stack.firestore).create_batch(batch, jobs)
    return jobs


def image_name(job: Job, n: int) -> str:
    return f"images/{job.scene_id}/{job.job_id}/var_{n}.png"


def upload(stack: LiveStack, name: str, metadata: dict[str, str]) -> None:
    blob = stack.storage.bucket(stack.env["IMAGES_BUCKET"]).blob(name)
    blob.metadata = metadata
    blob.upload_from_string(png(), content_type="image/png")


def push_finalize(stack: LiveStack, name: str, job_id: str, n: int) -> int:
    """Deliver an OBJECT_FINALIZE notification to the thumbnail function, as Pub/Sub pushes it."""
    bucket = stack.env["IMAGES_BUCKET"]
    payload = {
        "bucket": bucket,
        "name": name,
        "generation": "1",
        "size": "1000",
        "contentType": "image/png",
        "metadata": {"job_id": job_id, "variant": str(n)},
    }
    body = {
        "message": {
            "data": base64.b64encode(json.dumps(payload).encode()).decode(),
            "attributes": {
                "eventType": "OBJECT_FINALIZE",
                "bucketId": bucket,
                "objectId": name,
                "objectGeneration": "1",
                "payloadFormat": "JSON_API_V1",
            },
            "messageId": uuid.uuid4().hex,
            "publishTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        },
        "subscription": "projects/local-project/subscriptions/duplicates",
    }
    topic = f"/projects/{stack.env['GOOGLE_CLOUD_PROJECT']}/topics/{stack.env['GCS_EVENTS_TOPIC']}"
    return requests.post(stack.env["THUMBNAIL_URL"] + topic, json=body, timeout=120).status_code


def run_together(calls: list[Callable[[], Any]]) -> list[Any]:
    results: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait(timeout=30)
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    return results


def job_doc(stack: LiveStack, job_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = stack.firestore.collection("jobs").document(job_id).get().to_dict()
    return doc


@pytest.fixture
def add_worksheet(stack: LiveStack) -> Iterator[Callable[[str, list[str]], Any]]:
    """Extra worksheets in the stack's spreadsheet, removed afterwards."""
    book = stack.worksheet.spreadsheet
    added: list[Any] = []

    def add(title: str, header: list[str]) -> Any:
        sheet = book.add_worksheet(title, rows=50, cols=len(header))
        sheet.update([header], "A1", value_input_option="RAW")
        added.append(sheet)
        return sheet

    yield add
    for sheet in added:
        book.del_worksheet(sheet)


# --------------------------------------------------------------------------- exactly once


def test_completion_is_detected_once_under_concurrent_updates_in_firestore(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    """The ledger on the store's compare-and-set on update_time, against the emulator."""
    (job,) = seed_jobs(stack, [scene("cas")], variants=4)
    ledger = JobLedger(FirestoreJobStore(stack.firestore))
    now = datetime.now(UTC)

    def finish(n: int) -> bool:
        return ledger.apply(
            job.job_id,
            lambda j: lifecycle.thumbnail_done(j, n, image_name(job, n), f"thumbs/{n}.jpg", now),
        ).finished

    # Four deliveries of each of the four variants, all at once.
    results = run_together([lambda n=n: finish(n) for n in (1, 2, 3, 4) for _ in range(4)])
    assert results.count(True) == 1
    doc = job_doc(stack, job.job_id)
    assert doc["state"] == "completed"
    assert {v["state"] for v in doc["variants"].values()} == {"done"}


def test_duplicate_and_concurrent_finalize_events_write_the_final_row_once(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    scene_id = scene("dup")
    stack.add_rows([{"scene_id": scene_id, "prompt": "seeded", "variants": 2}])
    (job,) = seed_jobs(stack, [scene_id], variants=2)
    for n in (1, 2):
        # Without job metadata the bucket's own notification is skipped: every
        # event this test counts is one it sends.
        upload(stack, image_name(job, n), {})

    deliveries = [
        lambda n=n: push_finalize(stack, image_name(job, n), job.job_id, n)
        for n in (1, 2)
        for _ in range(6)
    ]
    codes = run_together(deliveries)
    assert all(code < 300 for code in codes), codes
    # The deliveries queue the row; the one sheet writer writes it.
    stack.wait_for(
        lambda: job_doc(stack, job.job_id).get("followups_since") is None,
        timeout_s=60,
        what="the row written by the sheet writer",
    )

    doc = job_doc(stack, job.job_id)
    assert doc["state"] == "completed"
    assert (doc["sheet_claim_id"], doc["sheet_error"]) == (None, None)
    assert len(finished_entries(stack, job.job_id)) == 1
    entry = finished_entries(stack, job.job_id)[0]
    assert entry["state"] == "completed" and entry["duration_s"] >= 0
    assert status_writes(stack, scene_id, "'completed") == ["'completed"]
    assert stack.sheet_row(scene_id)["status_img"] == "completed"
    writes = len(status_writes(stack, scene_id))
    assert writes <= 2  # "generating (1/2)" at most once, "completed" once

    # A redelivery after completion: no thumbnail, no write, no second log entry.
    assert push_finalize(stack, image_name(job, 2), job.job_id, 2) < 300
    assert len(status_writes(stack, scene_id)) == writes
    assert len(finished_entries(stack, job.job_id)) == 1
    thumbs = list(
        stack.storage.list_blobs(stack.env["IMAGES_BUCKET"], prefix=f"thumbnails/{scene_id}/")
    )
    assert sorted(b.name.rsplit("/", 1)[1] for b in thumbs) == ["var_1.jpg", "var_2.jpg"]
    assert all(b.metadata.get("pipeline-thumbnail") for b in thumbs)


# --------------------------------------------------------------------------- injection


DANGEROUS_PROMPTS = ["=1+1 [refuse]", "+1 [refuse]", "-1 [refuse]", "@SUM(A1) [refuse]"]


def test_hostile_prompts_and_scene_ids_never_become_formulas(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    # Scene ids are validated: none that starts with a formula character gets in.
    for bad in ["=1+1", "+1", "-1", "@x", "\t=1", "\r=1", "'=1"]:
        answer = stack.post_batch([{"scene_id": bad, "prompt": "p", "variants": 1}])
        assert answer.status_code == 400, bad
        assert answer.json()["details"][0]["field"] == "items[0].scene_id"

    items = [
        {"scene_id": scene(f"inj{i}"), "prompt": prompt, "variants": 1}
        for i, prompt in enumerate(DANGEROUS_PROMPTS)
    ]
    stack.add_rows(items)
    answer = stack.post_batch(items)
    assert answer.status_code == 202, answer.text
    job_ids = [job["job_id"] for job in answer.json()["jobs"]]
    views = stack.wait_jobs(job_ids)
    assert {v["state"] for v in views.values()} == {"failed"}
    for item in items:
        stack.wait_for(
            lambda item=item: stack.sheet_row(item["scene_id"])["status_img"].startswith("failed"),
            what="failed status",
        )
        # The stub renders formulas as "" (never evaluated) and text as itself.
        shown = stack.sheet_row(item["scene_id"], render="FORMATTED_VALUE")
        assert shown["status_img"].startswith("failed: variant 1: prompt blocked")
        assert shown["prompt"] == item["prompt"]  # the team's own cell, untouched
        for status in status_writes(stack, item["scene_id"]):
            assert status.startswith("'"), "every text went out apostrophe-prefixed"


# --------------------------------------------------------------------------- links


def test_sheet_links_work_tampering_is_refused_and_no_cell_holds_a_signed_url(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    items = [{"scene_id": scene("link"), "prompt": "A green bottle", "variants": 2}]
    stack.add_rows(items)
    job_id = stack.post_batch(items).json()["jobs"][0]["job_id"]
    stack.wait_jobs([job_id])
    stack.wait_for(
        lambda: stack.sheet_row(items[0]["scene_id"])["status_img"] == "completed",
        what="completed row",
    )
    row = stack.sheet_row(items[0]["scene_id"])
    for n in (1, 2):
        match = re.fullmatch(r'=IMAGE\("([^"]+)"\)', row[f"nano_img_{n}"])
        assert match, row[f"nano_img_{n}"]
        link = match[1]
        assert link.startswith(f"{stack.api}/assets/{job_id}/{n}?size=thumb&sig=")
        first = requests.get(link, allow_redirects=False, timeout=10)
        assert first.status_code == 302
        assert "X-Goog-Signature=" in first.headers["Location"]
        # Signed for SIGNED_URL_TTL_S + SIGNED_URL_REUSE_S (900 + 300 s) and handed out
        # again for 300 s: every redirect still lives 900 s, many hits cost one signature.
        assert "X-Goog-Expires=1200" in first.headers["Location"]
        again = requests.get(link, allow_redirects=False, timeout=10)
        assert again.headers["Location"] == first.headers["Location"]
        image = requests.get(link, timeout=10)
        assert Image.open(io.BytesIO(image.content)).format == "JPEG"
        for tampered in (
            link[:-1] + ("0" if link[-1] != "0" else "1"),
            link.replace(f"/{n}?", f"/{3 - n}?"),
            link.replace(job_id, job_id[:-1] + ("x" if job_id[-1] != "x" else "y")),
            link.split("&sig=")[0],
        ):
            refused = requests.get(tampered, allow_redirects=False, timeout=10)
            assert refused.status_code == 403, tampered

    for sheet in stack.worksheet.spreadsheet.worksheets():
        for cells in sheet.get_all_values(value_render_option="FORMULA"):
            for cell in cells:
                assert "X-Goog-" not in str(cell) and "Signature=" not in str(cell), cell


# --------------------------------------------------------------------------- sheet errors


def test_a_batch_the_sheet_cannot_show_is_refused_before_anything_is_reserved(
    stack: LiveStack,
    scene: Callable[[str], str],
    add_worksheet: Callable[[str, list[str]], Any],
) -> None:
    def refused(items: list[dict[str, Any]], worksheet: str, run_mode: str) -> list[Any]:
        body = {
            "items": items,
            "runMode": run_mode,
            "spreadsheet_id": stack.env["SPREADSHEET_ID"],
            "worksheet": worksheet,
        }
        answer = requests.post(
            f"{stack.api}/batch/images", json=body, headers=stack.headers(), timeout=60
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"] == "sheet_mismatch"
        return [(d["field"], d["reason"]) for d in answer.json()["details"]]

    worksheet = stack.env["WORKSHEET"]
    here = scene("four")
    stack.add_rows([{"scene_id": here, "prompt": "A kite", "variants": 4}])

    def images_used() -> int:
        fine = [{"scene_id": here, "prompt": "A kite", "variants": 1}]
        plan = stack.post_batch(fine, run_mode="dry_run")
        assert plan.status_code == 200, plan.text
        return int(plan.json()["budget"]["images_used"])

    used = images_used()
    # A scene that is not in the sheet, and four variants for three image columns.
    items = [
        {"scene_id": scene("norow"), "prompt": "A red kite", "variants": 1},
        {"scene_id": here, "prompt": "A kite", "variants": 4},
    ]
    for run_mode in ("dry_run", "live"):
        assert refused(items, worksheet, run_mode) == [
            (
                "items[0].scene_id",
                f"no row with scene_id {items[0]['scene_id']!r} in worksheet {worksheet!r}: "
                "its images would be paid for and never shown",
            ),
            (
                "items[1].variants",
                "4 variants need column nano_img_4, which worksheet "
                f"{worksheet!r} lacks (it has nano_img_1, nano_img_2, nano_img_3): add the "
                "column or ask for fewer",
            ),
        ]
    # A worksheet whose status column was deleted; one that does not exist.
    title = f"NoStatus-{uuid.uuid4().hex[:6]}"
    sheet = add_worksheet(title, [h for h in HEADER if h != "status_img"])
    no_column = [{"scene_id": scene("nocol"), "prompt": "A blue kite", "variants": 1}]
    sheet.append_rows([[no_column[0]["scene_id"], "A blue kite", "", 1]], table_range="A1")
    assert refused(no_column, title, "live") == [
        ("worksheet", f"worksheet {title!r} has no column status_img in its header row (row 1)")
    ]
    [(field, reason)] = refused(no_column, f"{title}-gone", "live")
    assert field == "worksheet" and f"no worksheet '{title}-gone'" in reason
    # A spreadsheet that is not shared with the service account (403).
    unshared = [{"scene_id": scene("unshared"), "prompt": "A kite", "variants": 1}]
    stack.add_rows(unshared)
    stub(stack, "access", {"spreadsheetId": stack.env["SPREADSHEET_ID"], "allowed": False})
    try:
        [(field, reason)] = refused(unshared, worksheet, "live")
    finally:
        stub(stack, "access", {"spreadsheetId": stack.env["SPREADSHEET_ID"], "allowed": True})
    assert field == "spreadsheet_id" and "not shared with the service account" in reason
    # Nothing was reserved by any of these.
    assert images_used() == used


def test_a_row_deleted_or_unshared_after_intake_ends_as_sheet_error(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    gone = [{"scene_id": scene("gone"), "prompt": "A red kite", "variants": 1}]
    stack.add_rows(gone)
    answer = stack.post_batch(gone)
    assert answer.status_code == 202, answer.text
    # The team deletes the row while its image is being made.
    values = stack.worksheet.col_values(1)
    stack.worksheet.delete_rows(values.index(gone[0]["scene_id"]) + 1)
    gone_job = answer.json()["jobs"][0]["job_id"]
    assert stack.wait_jobs([gone_job])[gone_job]["state"] == "completed"
    stack.wait_for(lambda: bool(stack.status(gone_job).get("sheet_error")), what="sheet_error")
    assert stack.status(gone_job)["sheet_error"] == (
        f"no row with scene_id {gone[0]['scene_id']!r} in worksheet {stack.env['WORKSHEET']!r}"
    )

    unshared = [{"scene_id": scene("unshared"), "prompt": "A kite", "variants": 1}]
    stack.add_rows(unshared)
    answer = stack.post_batch(unshared)
    assert answer.status_code == 202, answer.text
    stub(stack, "access", {"spreadsheetId": stack.env["SPREADSHEET_ID"], "allowed": False})
    try:
        job_id = answer.json()["jobs"][0]["job_id"]
        assert stack.wait_jobs([job_id])[job_id]["state"] == "completed"
        stack.wait_for(lambda: bool(stack.status(job_id).get("sheet_error")), what="sheet_error")
    finally:
        stub(stack, "access", {"spreadsheetId": stack.env["SPREADSHEET_ID"], "allowed": True})
    assert "not shared with the service account" in stack.status(job_id)["sheet_error"]
    assert "403" in stack.status(job_id)["sheet_error"]


# --------------------------------------------------------------------------- burst


def test_a_burst_of_100_finishing_jobs_stays_within_60_writes_a_minute(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    """100 jobs finish together through the real notification path, quota enforced."""
    scenes = [scene(f"burst{i:03d}") for i in range(BURST_JOBS)]
    stack.add_rows([{"scene_id": s, "prompt": "seeded", "variants": 1} for s in scenes])
    jobs = seed_jobs(stack, scenes, variants=1)
    stub(stack, "quota", {"write_quota_per_minute": 60})
    stub(stack, "reset_stats", {})
    try:
        started = time.monotonic()
        # Uploads with job metadata: fake-gcs-server notifies, Pub/Sub pushes,
        # the thumbnail function (8 threads) finishes each job.
        run_together(
            [
                lambda job=job: upload(
                    stack, image_name(job, 1), {"job_id": job.job_id, "variant": "1"}
                )
                for job in jobs
            ]
        )

        def all_rows_completed() -> bool:
            grid = stack.worksheet.get_all_values()
            shown = {row[0]: row[HEADER.index("status_img")] for row in grid[1:] if row}
            return all(shown.get(s) == "completed" for s in scenes)

        stack.wait_for(all_rows_completed, timeout_s=300, what="100 completed rows")
        wall_s = time.monotonic() - started
        stats = stub(stack, "stats")
    finally:
        stub(stack, "quota", {"write_quota_per_minute": None})

    calls = stats["write_calls"].get("values.batchUpdate", 0)
    print(
        f"\nburst of {BURST_JOBS} jobs: {calls} values:batchUpdate calls, "
        f"{stats['rejected_writes']} rejected (429), {stats['reads']} reads, {wall_s:.1f} s"
    )
    assert stats["rejected_writes"] == 0
    assert calls <= BURST_JOBS  # at most one write per job; coalescing makes it fewer
    for job in jobs:
        doc = job_doc(stack, job.job_id)
        assert doc["state"] == "completed" and doc["sheet_error"] is None
        assert doc["sheet_digest"] is not None
