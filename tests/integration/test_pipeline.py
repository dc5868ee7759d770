"""The whole chain over the emulators and stubs: intake → generate → thumbnail → sheet."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable

import pytest
import requests
from PIL import Image

from tests.integration.conftest import LiveStack, push_body

pytestmark = pytest.mark.integration


def _reference_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def test_batch_becomes_images_thumbnails_job_states_and_sheet_rows(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    bucket = stack.storage.bucket(stack.env["IMAGES_BUCKET"])
    bucket.blob("refs/int-red.png").upload_from_string(_reference_png(), content_type="image/png")
    items = [
        {"scene_id": scene("a"), "prompt": "A red kite over dunes", "variants": 2},
        {
            "scene_id": scene("b"),
            "prompt": "A lantern in fog",
            "variants": 3,
            "ref_pack_public_url": f"gs://{stack.env['IMAGES_BUCKET']}/refs/int-red.png",
        },
        {"scene_id": scene("c"), "prompt": "A quiet harbour at noon", "variants": 1},
    ]
    stack.add_rows(items)
    before = stack.gemini("stats")

    answer = stack.post_batch(items)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["image_count"] == 6 and body["unpublished"] == []
    job_ids = {job["scene_id"]: job["job_id"] for job in body["jobs"]}
    views = stack.wait_jobs(list(job_ids.values()))
    assert {v["state"] for v in views.values()} == {"completed"}

    # Objects: one image per variant with its metadata, one small JPEG thumbnail each.
    for item in items:
        job_id = job_ids[item["scene_id"]]
        for n in range(1, item["variants"] + 1):
            image = bucket.get_blob(f"images/{item['scene_id']}/{job_id}/var_{n}.png")
            assert image is not None
            assert image.metadata["job_id"] == job_id
            assert image.metadata["variant"] == str(n)
            assert image.metadata["batch_id"] == body["batch_id"]
            assert Image.open(io.BytesIO(image.download_as_bytes())).format == "PNG"
            thumb = bucket.get_blob(f"thumbnails/{item['scene_id']}/{job_id}/var_{n}.jpg")
            assert thumb is not None and thumb.metadata.get("pipeline-thumbnail")
            with Image.open(io.BytesIO(thumb.download_as_bytes())) as small:
                assert small.format == "JPEG" and max(small.size) <= 256

    # Firestore: every variant done, the batch records its jobs.
    for job_id in job_ids.values():
        doc = stack.firestore.collection("jobs").document(job_id).get().to_dict()
        assert doc["state"] == "completed"
        assert {v["state"] for v in doc["variants"].values()} == {"done"}
    batch = stack.firestore.collection("batches").document(body["batch_id"]).get().to_dict()
    assert sorted(batch["job_ids"]) == sorted(job_ids.values())

    # Gemini: exactly one paid generation per variant, reference images sent for scene b.
    after = stack.gemini("stats")
    assert after["generated"] - before["generated"] == 6
    assert after["reference_images"] - before["reference_images"] == 3

    # Sheet: completed, one =IMAGE() per variant, job id filled in.
    for item in items:
        stack.wait_for(
            lambda item=item: stack.sheet_row(item["scene_id"])["status_img"] == "completed",
            what=f"sheet row of {item['scene_id']}",
        )
        row = stack.sheet_row(item["scene_id"])
        assert row["job_id"] == job_ids[item["scene_id"]]
        for n in range(1, 4):
            cell = row[f"nano_img_{n}"]
            if n <= item["variants"]:
                assert cell.startswith('=IMAGE("') and f"/assets/{row['job_id']}/{n}?" in cell
            else:
                assert cell == ""


def test_refused_prompt_fails_its_job_with_reason_and_others_complete(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    items = [
        {"scene_id": scene("ok"), "prompt": "A calm lake", "variants": 1},
        {"scene_id": scene("bad"), "prompt": "Something [refuse] me", "variants": 2},
    ]
    stack.add_rows(items)
    answer = stack.post_batch(items)
    assert answer.status_code == 202, answer.text
    job_ids = {job["scene_id"]: job["job_id"] for job in answer.json()["jobs"]}
    views = stack.wait_jobs(list(job_ids.values()))
    assert views[job_ids[items[0]["scene_id"]]]["state"] == "completed"
    failed = views[job_ids[items[1]["scene_id"]]]
    assert failed["state"] == "failed"
    assert "prompt blocked" in failed["error"]
    assert all(v["state"] == "failed" for v in failed["variants"])
    stack.wait_for(
        lambda: stack.sheet_row(items[1]["scene_id"])["status_img"].startswith("failed: "),
        what="failed status in the sheet",
    )
    assert "prompt blocked" in stack.sheet_row(items[1]["scene_id"])["status_img"]


def test_dry_run_answers_the_plan_and_writes_nothing(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    jobs_before = len(list(stack.firestore.collection("jobs").list_documents()))
    gemini_before = stack.gemini("stats")["requests"]
    items = [
        {"scene_id": scene("d1"), "prompt": "p", "variants": 3},
        {"scene_id": scene("d2"), "prompt": "q", "variants": 2},
    ]
    stack.add_rows(items)  # the dry run checks the rows, as the live run does
    answer = stack.post_batch(items, run_mode="dry_run")
    assert answer.status_code == 200
    plan = answer.json()
    assert plan["job_count"] == 2 and plan["image_count"] == 5
    assert plan["estimated_cost_usd"] == "0.1680"  # 5 x $0.0336, the default model's price
    assert "batch_id" not in plan
    assert len(list(stack.firestore.collection("jobs").list_documents())) == jobs_before
    assert stack.gemini("stats")["requests"] == gemini_before


def test_redelivered_job_message_pays_nothing_twice(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    items = [{"scene_id": scene("r"), "prompt": "A red door", "variants": 2}]
    stack.add_rows(items)
    answer = stack.post_batch(items)
    job = answer.json()["jobs"][0]
    stack.wait_jobs([job["job_id"]])
    generated = stack.gemini("stats")["generated"]
    message = {
        "job_id": job["job_id"],
        "batch_id": answer.json()["batch_id"],
        "scene_id": job["scene_id"],
    }
    topic = stack.publisher.topic_path(stack.env["GOOGLE_CLOUD_PROJECT"], stack.env["JOBS_TOPIC"])
    stack.publisher.publish(topic, json.dumps(message).encode()).result(timeout=30)
    # Deliver it straight to the function too, as a redelivery would.
    url = f"{stack.env['GENERATE_URL']}/projects/local-project/topics/{stack.env['JOBS_TOPIC']}"
    assert requests.post(url, json=push_body(message, "redelivery-1"), timeout=60).status_code < 300
    assert stack.gemini("stats")["generated"] == generated
    objects = list(
        stack.storage.list_blobs(stack.env["IMAGES_BUCKET"], prefix=f"images/{job['scene_id']}/")
    )
    assert len(objects) == 2


def test_api_key_is_required(stack: LiveStack) -> None:
    answer = requests.post(f"{stack.api}/batch/images", json={}, timeout=10)
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthenticated"
    wrong = requests.get(f"{stack.api}/status/job_x", headers={"X-API-Key": "nope"}, timeout=10)
    assert wrong.status_code == 401


def test_sheet_links_redirect_to_the_image_and_tampering_is_refused(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    items = [{"scene_id": scene("l"), "prompt": "A green bottle", "variants": 1}]
    stack.add_rows(items)
    job_id = stack.post_batch(items).json()["jobs"][0]["job_id"]
    view = stack.wait_jobs([job_id])[job_id]
    link = view["variants"][0]["thumbnail_url"]
    first = requests.get(link, allow_redirects=False, timeout=10)
    assert first.status_code == 302
    assert "X-Goog-Signature=" in first.headers["Location"]
    image = requests.get(link, timeout=10)
    assert Image.open(io.BytesIO(image.content)).format == "JPEG"
    tampered = link.replace("size=thumb", "size=full")
    assert requests.get(tampered, allow_redirects=False, timeout=10).status_code == 403


def test_job_that_keeps_failing_fails_after_its_failure_budget_with_its_last_error(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    stack.gemini("script", {"rules": [{"match": "always busy", "mode": "http:503"}]})
    try:
        items = [{"scene_id": scene("fb"), "prompt": "always busy model", "variants": 1}]
        stack.add_rows(items)
        job_id = stack.post_batch(items).json()["jobs"][0]["job_id"]
        view = stack.wait_jobs([job_id], timeout_s=180)[job_id]
    finally:
        stack.gemini("script", {"rules": []})
    assert view["state"] == "failed"
    assert "gave up after 3 failed attempts; the last: Gemini answered 503" in view["error"]
    assert stack.gemini("stats")["by_prompt"]["always busy model"]["requests"] == 3
    stack.wait_for(
        lambda: "gave up after 3" in stack.sheet_row(items[0]["scene_id"])["status_img"],
        what="the failure in the sheet",
    )


def test_job_that_only_waits_is_dead_lettered_with_the_truth(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    """Waiting never fails a job; when Pub/Sub gives up on it (5 deliveries on this
    stack, 100 in production), the dead letter names the wait, not a stale error."""
    stack.gemini("script", {"rules": [{"match": "no quota left", "mode": "http:429"}]})
    try:
        items = [{"scene_id": scene("dl"), "prompt": "no quota left today", "variants": 1}]
        stack.add_rows(items)
        job_id = stack.post_batch(items).json()["jobs"][0]["job_id"]
        view = stack.wait_jobs([job_id], timeout_s=240)[job_id]
    finally:
        stack.gemini("script", {"rules": []})
    assert view["state"] == "failed"
    assert view["error"] == (
        "variant 1: gave up after 5 deliveries: it was waiting for the Gemini quota"
    )
    assert view["variants"][0]["failures"] == 0
    stack.wait_for(
        lambda: (
            "waiting for the Gemini quota" in stack.sheet_row(items[0]["scene_id"])["status_img"]
        ),
        what="dead-letter reason in the sheet",
    )


def test_jobs_failing_together_are_redelivered_until_they_all_complete(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    # Twelve jobs whose first two Gemini calls answer 503 (the failure budget is
    # three): their deliveries fail two at a time, round after round. The emulator's own push stops
    # redelivering a subscription for good when failures coincide (README, "The
    # local stack"): with it, this test left jobs generating in 2 runs of 2.
    items = [
        {"scene_id": scene(f"busy{i}"), "prompt": f"busy together {scene(str(i))}", "variants": 1}
        for i in range(12)
    ]
    rules = [{"match": re.escape(i["prompt"]), "mode": "http:503", "times": 2} for i in items]
    stack.gemini("script", {"rules": rules})
    try:
        stack.add_rows(items)
        jobs = stack.post_batch(items).json()["jobs"]
        views = stack.wait_jobs([job["job_id"] for job in jobs], timeout_s=120)
    finally:
        stack.gemini("script", {"rules": []})
    assert {view["state"] for view in views.values()} == {"completed"}
    by_prompt = stack.gemini("stats")["by_prompt"]
    # Two refused deliveries and the one that made the image, per job.
    assert [by_prompt[i["prompt"]] for i in items] == [{"requests": 3, "generated": 1}] * 12
