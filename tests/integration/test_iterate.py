"""Iterating on scenes over the whole local stack: cancel, re-roll and edit one
variant, style anchors, and the batch's hand-over zip (issue 14)."""

from __future__ import annotations

import csv
import io
import re
import threading
import uuid
import zipfile
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests

from tests.integration.conftest import LiveStack, push_body

pytestmark = pytest.mark.integration


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture
def slow_prompts(stack: LiveStack) -> Iterator[Callable[[str], None]]:
    """Make Gemini calls for prompts starting with a prefix take 4 s; rules reset after."""

    def slow(prefix: str) -> None:
        rule = {"match": f"^{re.escape(prefix)}", "mode": "timeout", "timeout_s": 4}
        stack.gemini("script", {"rules": [rule]})

    yield slow
    stack.gemini("script", {"rules": []})


def used_today(stack: LiveStack, headers: dict[str, str] | None = None) -> Decimal:
    """What the caller has committed today (a dry run's budget figures)."""
    probe = {"scene_id": "budget-probe", "prompt": "p", "variants": 1}
    if "budget-probe" not in stack.worksheet.col_values(1):
        stack.add_rows([probe])  # intake checks the row exists, dry run included
    body = {
        "items": [{"scene_id": "budget-probe", "prompt": "p", "variants": 1}],
        "runMode": "dry_run",
        "spreadsheet_id": stack.env["SPREADSHEET_ID"],
        "worksheet": stack.env["WORKSHEET"],
    }
    answer = requests.post(
        f"{stack.api}/batch/images", json=body, headers=headers or stack.headers(), timeout=30
    )
    assert answer.status_code == 200, answer.text
    return Decimal(answer.json()["budget"]["cost_used_usd"])


def submit(stack: LiveStack, items: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    stack.add_rows(items)
    body = {
        "items": items,
        "runMode": "live",
        "spreadsheet_id": stack.env["SPREADSHEET_ID"],
        "worksheet": stack.env["WORKSHEET"],
        **extra,
    }
    answer = requests.post(
        f"{stack.api}/batch/images", json=body, headers=stack.headers(), timeout=60
    )
    assert answer.status_code == 202, answer.text
    result: dict[str, Any] = answer.json()
    return result


def one_finished(stack: LiveStack, scene_id: str, prompt: str) -> tuple[dict[str, Any], str]:
    """A batch of one scene with one image, finished: its answer and its job id."""
    batch = submit(stack, [{"scene_id": scene_id, "prompt": prompt, "variants": 1}])
    job_id: str = batch["jobs"][0]["job_id"]
    stack.wait_jobs([job_id])
    return batch, job_id


def post(stack: LiveStack, path: str, body: Any = None, **headers: str) -> requests.Response:
    return requests.post(
        f"{stack.api}{path}",
        json=body,
        headers={**stack.headers(), **headers},
        timeout=60,
    )


def wait_version(stack: LiveStack, job_id: str, version: int, states: set[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def ready() -> bool:
        view = stack.status(job_id)
        versions = view["variants"][0]["versions"]
        if len(versions) >= version and versions[version - 1]["state"] in states:
            found.update(view)
            return True
        return False

    stack.wait_for(ready, timeout_s=90, what=f"version {version} of {job_id}")
    return found


def prompt_requests(stack: LiveStack, prompt: str) -> int:
    stats: dict[str, int] = stack.gemini("stats")["by_prompt"].get(prompt, {})
    return stats.get("requests", 0)


# --------------------------------------------------------------------------- cancel


def test_cancel_during_generation_stops_what_has_not_started_and_refunds_to_the_cent(
    stack: LiveStack, scene: Callable[[str], str], tag: str, slow_prompts: Callable[[str], None]
) -> None:
    prefix = f"slow {tag}"
    slow_prompts(prefix)
    before = used_today(stack)
    items = [
        {"scene_id": scene(f"cx{i}"), "prompt": f"{prefix} scene {i}", "variants": 2}
        for i in range(6)
    ]
    batch = submit(stack, items)
    # The batch reserves its estimate; each image then settles to what it cost.
    assert used_today(stack) == before + Decimal(batch["estimated_cost_usd"])
    job_ids = [job["job_id"] for job in batch["jobs"]]

    def some_running() -> bool:
        views = [stack.status(job_id) for job_id in job_ids]
        return any(v["state"] == "generating" for v in views)

    stack.wait_for(some_running, timeout_s=60, what="a job of the batch to be generating")
    answer = post(stack, f"/batches/{batch['batch_id']}:cancel")
    assert answer.status_code == 200, answer.text
    cancelled = answer.json()
    running = {job["job_id"]: job["running"] for job in cancelled["jobs"]}
    assert cancelled["stopped"] + cancelled["running"] + cancelled["kept"] == 12
    assert 0 < cancelled["running"] < 12 and cancelled["stopped"] > 0

    views = stack.wait_jobs(job_ids)
    kept = Decimal(0)
    for item, job_id in zip(items, job_ids, strict=True):
        view = views[job_id]
        assert view["state"] == "cancelled"
        done = view["progress"]["done"]
        assert view["status_text"] == f"cancelled ({done}/2 kept)"
        # Only the calls that were running at the cancel reached Gemini; they were kept.
        assert prompt_requests(stack, item["prompt"]) == running[job_id]
        assert done == running[job_id]
        kept += Decimal(view["cost_usd"])
        for variant in view["variants"]:
            assert variant["state"] in ("done", "cancelled")
            assert (variant.get("cost_usd") is None) == (variant["state"] == "cancelled")
    # The budget of every image that never ran was given back, to the cent; the
    # kept ones count at what they cost.
    assert used_today(stack) == before + kept
    stack.wait_for(
        lambda: all(
            stack.sheet_row(item["scene_id"])["status_img"].startswith("cancelled")
            for item in items
        ),
        what="the rows to read cancelled",
    )
    again = post(stack, f"/batches/{batch['batch_id']}:cancel").json()
    assert {job["outcome"] for job in again["jobs"]} == {"already_cancelled"}
    assert again["stopped"] == 0
    assert used_today(stack) == before + kept


def test_cancel_of_economy_jobs_in_gemini_batches_keeps_what_a_batch_makes(
    stack: LiveStack, scene: Callable[[str], str], tag: str
) -> None:
    """Economy variants in a Gemini batch are running ones: a cancel lets them finish
    (kept, paid at the batch price) or, if their batch ends unmade, cancels them
    (their estimate given back) instead of sending them to the live lane."""
    timing = stack.gemini("batch-config")
    stack.gemini("batch-config", {"pending_s": 3600, "running_s": 0})  # held until ended
    try:
        before = used_today(stack)
        made, unmade = scene("ec1"), scene("ec2")
        items = [
            {"scene_id": made, "prompt": f"A lantern {tag}", "variants": 2, "lane": "economy"},
            # Another size: another Gemini batch.
            {
                "scene_id": unmade,
                "prompt": f"A kite {tag}",
                "variants": 1,
                "lane": "economy",
                "image_size": "2K",
            },
        ]
        batch = submit(stack, items)
        job_ids = {job["scene_id"]: job["job_id"] for job in batch["jobs"]}

        names: dict[str, str] = {}

        def batched() -> bool:
            # Claimed (batched) first, then the Gemini batches are created: wait for both.
            views = [stack.status(job_id) for job_id in job_ids.values()]
            names.update(
                {
                    line["prompt"]: found["name"]
                    for found in stack.gemini("batches")["batches"]
                    for line in found["lines"]
                }
            )
            return all(v["state"] == "batched" for view in views for v in view["variants"]) and all(
                item["prompt"] in names for item in items
            )

        stack.wait_for(batched, timeout_s=60, what="the economy tick to batch the variants")
        answer = post(stack, f"/batches/{batch['batch_id']}:cancel")
        assert answer.status_code == 200, answer.text
        cancelled = answer.json()
        assert {job["outcome"] for job in cancelled["jobs"]} == {"cancelling"}
        assert (cancelled["stopped"], cancelled["running"]) == (0, 3)
        assert stack.status(job_ids[made])["status_text"] == "cancelling (0/2)"

        stack.gemini(f"batches/{names[items[0]['prompt']]}", {"state": "SUCCEEDED"})
        stack.gemini(f"batches/{names[items[1]['prompt']]}", {"state": "EXPIRED"})
        views = stack.wait_jobs(list(job_ids.values()))
        kept = views[job_ids[made]]
        assert (kept["state"], kept["status_text"]) == ("cancelled", "cancelled (2/2 kept)")
        lost = views[job_ids[unmade]]
        assert (lost["state"], lost["status_text"]) == ("cancelled", "cancelled (0/1 kept)")
        # An expired batch's variants of a cancelled job never go to the live lane.
        assert prompt_requests(stack, items[1]["prompt"]) == 0
        # The kept images count at what they cost; the unmade one's estimate came back.
        assert used_today(stack) == before + Decimal(kept["cost_usd"])
    finally:
        stack.gemini("batch-config", timing)


# --------------------------------------------------------------------------- re-roll


def test_reroll_raced_with_a_redelivery_of_the_job_makes_one_image_and_one_charge(
    stack: LiveStack, scene: Callable[[str], str], tag: str
) -> None:
    prompt = f"A paper boat {tag}"
    items = [{"scene_id": scene("rr"), "prompt": prompt, "variants": 1}]
    batch, job_id = one_finished(stack, items[0]["scene_id"], prompt)
    before = used_today(stack)
    generate = (
        f"{stack.env['GENERATE_URL']}/projects/local-project/topics/{stack.env['JOBS_TOPIC']}"
    )
    original = {"job_id": job_id, "batch_id": batch["batch_id"], "scene_id": items[0]["scene_id"]}
    key = f"reroll-{tag}"
    answers: list[requests.Response] = []

    def reroll() -> None:
        answers.append(post(stack, f"/jobs/{job_id}/variants/1:reroll", **{"Idempotency-Key": key}))

    def redeliver(i: int) -> None:
        requests.post(generate, json=push_body(original, f"redelivery-{tag}-{i}"), timeout=120)

    threads = [threading.Thread(target=reroll) for _ in range(2)]
    threads += [threading.Thread(target=redeliver, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    accepted = [a for a in answers if a.status_code == 202]
    assert accepted, [a.text for a in answers]
    assert {a.json()["version"] for a in accepted} == {2}
    assert all(a.status_code in (202, 409) for a in answers)

    view = wait_version(stack, job_id, 2, {"done"})
    variant = view["variants"][0]
    assert variant["current_version"] == 2
    assert [v["version"] for v in variant["versions"]] == [1, 2]
    assert [v["kind"] for v in variant["versions"]] == ["original", "reroll"]
    assert all(v["image_url"] and v["cost_usd"] for v in variant["versions"])
    assert "version=2" in variant["thumbnail_url"]
    # One new image, one charge: two calls for the prompt in all, two objects.
    assert prompt_requests(stack, prompt) == 2
    names = sorted(
        blob.name
        for blob in stack.storage.list_blobs(
            stack.env["IMAGES_BUCKET"], prefix=f"images/{items[0]['scene_id']}/"
        )
    )
    assert names == [
        f"images/{items[0]['scene_id']}/{job_id}/var_1.png",
        f"images/{items[0]['scene_id']}/{job_id}/var_1_v2.png",
    ]
    first, second = (Decimal(v["cost_usd"]) for v in variant["versions"])
    assert Decimal(view["cost_usd"]) == first + second
    # The re-roll's reservation was settled to what it cost, once.
    price = second
    assert used_today(stack) == before + price
    # The same key again replays the first answer; nothing new is made.
    replay = post(stack, f"/jobs/{job_id}/variants/1:reroll", **{"Idempotency-Key": key})
    assert replay.status_code == 202 and replay.headers.get("Idempotent-Replay") == "true"
    assert replay.json()["version"] == 2
    # The sheet shows the newest version; both links work.
    stack.wait_for(
        lambda: "version=2" in stack.sheet_row(items[0]["scene_id"])["nano_img_1"],
        what="the sheet to show version 2",
    )
    for version in variant["versions"]:
        assert requests.get(version["image_url"], timeout=30).status_code == 200
    # Cancelling a finished job changes nothing and says so.
    finished = post(stack, f"/jobs/{job_id}:cancel")
    assert finished.status_code == 200
    assert finished.json()["outcome"] == "already_finished"
    assert used_today(stack) == before + price


def test_edit_blocked_by_gemini_keeps_the_old_image_and_a_good_edit_uses_it(
    stack: LiveStack, scene: Callable[[str], str], tag: str
) -> None:
    scene_id = scene("ed")
    _, job_id = one_finished(stack, scene_id, f"A lighthouse {tag}")
    first_link = stack.status(job_id)["variants"][0]["thumbnail_url"]

    blocked = post(stack, f"/jobs/{job_id}/variants/1:reroll", {"instruction": "[refuse] add fog"})
    assert blocked.status_code == 202, blocked.text
    assert blocked.json()["kind"] == "edit"
    view = wait_version(stack, job_id, 2, {"failed"})
    variant = view["variants"][0]
    assert variant["current_version"] == 1 and variant["thumbnail_url"] == first_link
    assert "blocked" in variant["versions"][1]["error"]
    assert view["state"] == "completed"
    assert view["status_text"].startswith("completed; variant 1: edit (v2) failed: prompt blocked")
    stack.wait_for(
        lambda: "edit (v2) failed" in stack.sheet_row(scene_id)["status_img"],
        what="the row to show the failed edit",
    )
    assert "version=" not in stack.sheet_row(scene_id)["nano_img_1"]

    instruction = f"make it night {tag}"
    good = post(stack, f"/jobs/{job_id}/variants/1:reroll", {"instruction": instruction})
    assert good.status_code == 202 and good.json()["version"] == 3
    view = wait_version(stack, job_id, 3, {"done"})
    assert view["variants"][0]["current_version"] == 3
    assert view["variants"][0]["versions"][2]["instruction"] == instruction
    # Gemini got the instruction with the current image as its input.
    calls = [r for r in stack.gemini("requests")["requests"] if r["prompt"] == instruction]
    source = stack.storage.bucket(stack.env["IMAGES_BUCKET"]).get_blob(
        f"images/{scene_id}/{job_id}/var_1.png"
    )
    assert [c["reference_images"] for c in calls] == [
        [{"mimeType": "image/png", "bytes": source.size}]
    ]


# --------------------------------------------------------------------------- anchors


def test_anchor_to_another_callers_image_is_refused_and_an_own_anchor_is_used(
    stack: LiveStack, scene: Callable[[str], str], tag: str
) -> None:
    anchor_scene = scene("an")
    _, job_id = one_finished(stack, anchor_scene, f"A hero {tag}")

    other = {"X-API-Key": stack.env["OTHER_API_KEY"]}
    body = {
        "items": [
            {
                "scene_id": scene("an2"),
                "prompt": "The hero again",
                "variants": 1,
                "ref_pack_public_url": f"job:{job_id}#1",
            }
        ],
        "style_refs": [f"scene:{anchor_scene}#1"],
        "runMode": "live",
        "spreadsheet_id": stack.env["SPREADSHEET_ID"],
        "worksheet": stack.env["WORKSHEET"],
    }
    refused = requests.post(f"{stack.api}/batch/images", json=body, headers=other, timeout=30)
    assert refused.status_code == 400, refused.text
    fields = {d["field"]: d["reason"] for d in refused.json()["details"]}
    assert set(fields) == {"style_refs[0]", "items[0].ref_pack_public_url"}
    assert all(reason.startswith("names no output visible to you") for reason in fields.values())
    malformed = {**body, "style_refs": ["scene:no-variant"]}
    answer = requests.post(f"{stack.api}/batch/images", json=malformed, headers=other, timeout=30)
    assert answer.status_code == 400
    assert answer.json()["details"][0]["field"] == "style_refs[0]"

    prompt = f"The hero at dawn {tag}"
    own = submit(
        stack,
        [{"scene_id": scene("an3"), "prompt": prompt, "variants": 1}],
        style_refs=[f"scene:{anchor_scene}#1"],
    )
    views = stack.wait_jobs([own["jobs"][0]["job_id"]])
    assert {v["state"] for v in views.values()} == {"completed"}
    image = stack.storage.bucket(stack.env["IMAGES_BUCKET"]).get_blob(
        f"images/{anchor_scene}/{job_id}/var_1.png"
    )
    calls = [r for r in stack.gemini("requests")["requests"] if r["prompt"] == prompt]
    assert [c["reference_images"] for c in calls] == [
        [{"mimeType": "image/png", "bytes": image.size}]
    ]


# --------------------------------------------------------------------------- export


def test_export_of_a_batch_with_failed_and_rerolled_variants(
    stack: LiveStack, scene: Callable[[str], str], tag: str
) -> None:
    good, bad = scene("xa"), scene("xb")
    batch = submit(
        stack,
        [
            {"scene_id": good, "prompt": f"A red bicycle {tag}", "variants": 2},
            {"scene_id": bad, "prompt": f"[refuse] {tag}", "variants": 1},
        ],
    )
    jobs = {job["scene_id"]: job["job_id"] for job in batch["jobs"]}
    views = stack.wait_jobs(list(jobs.values()))
    assert views[jobs[bad]]["state"] == "failed"
    assert post(stack, f"/jobs/{jobs[good]}/variants/1:reroll").status_code == 202
    wait_version(stack, jobs[good], 2, {"done"})

    answer = post(stack, f"/batches/{batch['batch_id']}:export")
    assert answer.status_code == 202, answer.text
    export_id = answer.json()["export_id"]
    assert answer.json()["state"] in ("queued", "running", "done")
    found: dict[str, Any] = {}

    def exported() -> bool:
        view = requests.get(
            f"{stack.api}/batches/{batch['batch_id']}", headers=stack.headers(), timeout=30
        ).json()
        found.update(view.get("export") or {})
        return found.get("state") in ("done", "failed")

    stack.wait_for(exported, timeout_s=60, what="the export")
    assert found["state"] == "done" and found["export_id"] == export_id
    assert found["images"] == 3
    download = requests.get(found["download_url"], allow_redirects=False, timeout=30)
    assert download.status_code == 302
    assert "X-Goog-Signature=" in download.headers["Location"]
    data = requests.get(found["download_url"], timeout=60).content
    assert len(data) == found["bytes"]
    bucket = stack.storage.bucket(stack.env["IMAGES_BUCKET"])
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == sorted(
            [
                f"{good}/var_1.png",
                f"{good}/var_1_v2.png",
                f"{good}/var_2.png",
                "manifest.csv",
                "manifest.json",
            ]
        )
        for name in (f"{good}/var_1.png", f"{good}/var_1_v2.png", f"{good}/var_2.png"):
            stored = name.replace(good, f"images/{good}/{jobs[good]}")
            assert archive.read(name) == bucket.blob(stored).download_as_bytes()
        rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert [(r["scene"], r["variant"], r["version"]) for r in rows] == [
        (good, "1", "1"),
        (good, "1", "2"),
        (good, "2", "1"),
    ]
    # Each image at what it cost (its tokens at the catalog's prices), as /status says.
    costs = {
        ("1", str(v["version"])): v["cost_usd"]
        for v in stack.status(jobs[good])["variants"][0]["versions"]
    }
    costs[("2", "1")] = stack.status(jobs[good])["variants"][1]["cost_usd"]
    assert [Decimal(r["cost"]) for r in rows] == [
        Decimal(costs[(r["variant"], r["version"])]) for r in rows
    ]
    tampered = found["download_url"].replace("sig=", "sig=0")
    assert requests.get(tampered, allow_redirects=False, timeout=30).status_code == 403
