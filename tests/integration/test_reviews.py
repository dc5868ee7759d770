"""Pick, promote, hand over on the stack: decisions by version, a promotion at 2K
that takes the final pick, and an approved-only delivery into the Drive stub."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import requests

from tests.integration.conftest import LiveStack


def call(stack: LiveStack, path: str, body: dict[str, Any], key: str | None = None) -> Any:
    headers = stack.headers() | ({"Idempotency-Key": key} if key else {})
    return requests.post(f"{stack.api}{path}", json=body, headers=headers, timeout=60)


def drive_files(stack: LiveStack) -> list[dict[str, Any]]:
    answer = requests.get(f"{stack.env['DRIVE_STUB_URL']}/_files", timeout=10)
    answer.raise_for_status()
    folder = stack.env["DRIVE_FOLDER_ID"]
    return [f for f in answer.json()["files"] if folder in f["parents"] and not f["trashed"]]


def drive_bytes(stack: LiveStack, file_id: str) -> bytes:
    url = f"{stack.env['DRIVE_STUB_URL']}/drive/v3/files/{file_id}"
    answer = requests.get(url, params={"alt": "media", "supportsAllDrives": "true"}, timeout=10)
    answer.raise_for_status()
    return answer.content


def delivered(stack: LiveStack, batch_id: str, body: dict[str, Any]) -> dict[str, Any]:
    asked = call(stack, f"/batches/{batch_id}:export", body)
    assert asked.status_code == 202, asked.text
    export_id = asked.json()["export_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        view = requests.get(
            f"{stack.api}/batches/{batch_id}", headers=stack.headers(), timeout=30
        ).json()["export"]
        if view["export_id"] == export_id and view["state"] in ("done", "failed"):
            result: dict[str, Any] = view
            return result
        time.sleep(0.5)
    raise AssertionError("the delivery did not finish")


def test_review_promote_and_an_approved_only_delivery_to_drive(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    sid = scene("pick")
    item = {
        "scene_id": sid,
        "prompt": f"a harbour at dawn {sid}",
        "variants": 2,
        "fields": {"shot": "wide"},
    }
    stack.add_rows([item])
    answer = stack.post_batch([item])
    assert answer.status_code == 202, answer.text
    batch_id, job_id = answer.json()["batch_id"], answer.json()["jobs"][0]["job_id"]
    stack.wait_jobs([job_id])

    # Approve variant 1, reject variant 2, pick variant 1 as final.
    approved = call(
        stack, f"/jobs/{job_id}/variants/1:review", {"decision": "approved", "version": 1}
    )
    assert approved.status_code == 200, approved.text
    rejected = call(stack, f"/jobs/{job_id}/variants/2:review", {"decision": "rejected"})
    assert rejected.status_code == 200 and rejected.json()["version"] == 1
    picked = call(stack, f"/jobs/{job_id}:final", {"variant": 1, "version": 1})
    assert picked.json()["final"]["variant"] == 1
    status = stack.status(job_id)
    assert status["final"]["version"] == 1
    reviews = [v["versions"][0]["review"] for v in status["variants"]]
    assert [r["decision"] for r in reviews] == ["approved", "rejected"]
    assert reviews[0]["by"] and reviews[0]["at"]

    # A decision on a version that is not there yet is refused, naming it.
    early = call(stack, f"/jobs/{job_id}/variants/1:review", {"decision": "approved", "version": 2})
    assert early.status_code == 409 and "version 2" in early.json()["message"]

    # Promote the pick to 2K: a new version, priced at 2K, and the pick moves to it.
    key = uuid.uuid4().hex
    promoted = call(stack, f"/jobs/{job_id}/variants/1:promote", {"image_size": "2K"}, key)
    assert promoted.status_code == 202, promoted.text
    body = promoted.json()
    assert (body["kind"], body["version"]) == ("promote", 2)
    again = call(stack, f"/jobs/{job_id}/variants/1:promote", {"image_size": "2K"}, key)
    assert again.json()["version"] == 2  # the same request: one version
    too_small = call(stack, f"/jobs/{job_id}/variants/1:promote", {"image_size": "1K"})
    assert too_small.status_code == 400
    assert too_small.json()["details"][0]["field"] == "image_size"

    def promoted_done() -> bool:
        versions = stack.status(job_id)["variants"][0]["versions"]
        return len(versions) == 2 and versions[1]["state"] == "done"

    stack.wait_for(promoted_done, timeout_s=120, what="the promoted version")
    status = stack.status(job_id)
    first, bigger = status["variants"][0]["versions"]
    assert (bigger["kind"], bigger["image_size"], bigger["promotes"]) == ("promote", "2K", 1)
    assert status["final"]["version"] == 2 and bigger["review"]["decision"] == "approved"
    assert float(bigger["cost_usd"]) > float(first["cost_usd"])
    calls = [
        r
        for r in stack.gemini("requests")["requests"]
        if r["generationConfig"].get("imageConfig", {}).get("imageSize") == "2K"
    ]
    assert calls and len(calls[-1]["reference_images"]) == 1  # the image itself

    # Deliver the approved images to Drive under the template's names.
    before = {f["id"] for f in drive_files(stack)}
    template = "{scene_id}_{shot}_{variant}_{version}"
    body = {
        "only": "approved",
        "name_template": template,
        "destination": "drive",
        "drive_folder_id": stack.env["DRIVE_FOLDER_ID"],
    }
    export = delivered(stack, batch_id, body)
    assert export["state"] == "done", export
    assert (export["images"], export["added"], export["present"]) == (2, 2, 0)
    new = [f for f in drive_files(stack) if f["id"] not in before]
    names = sorted(f["name"] for f in new)
    manifests = [n for n in names if n.startswith("manifest_")]
    assert [n for n in names if n not in manifests] == [
        f"{sid}_wide_1_1.png",
        f"{sid}_wide_1_2.png",
    ]
    assert [n.rsplit(".", 1)[-1] for n in manifests] == ["csv", "json"]
    # Byte for byte what generation stored.
    bucket = stack.storage.bucket(stack.env["IMAGES_BUCKET"])
    for f in [f for f in new if f["name"].endswith(".png")]:
        version = int(f["name"].rsplit("_", 1)[-1].split(".")[0])
        blob = next(
            b
            for b in stack.storage.list_blobs(bucket, prefix=f"images/{sid}/")
            if b.name.endswith(f"var_1{'' if version == 1 else f'_v{version}'}.png")
        )
        assert drive_bytes(stack, f["id"]) == blob.download_as_bytes()

    # The same delivery again adds nothing.
    export = delivered(stack, batch_id, body)
    assert (export["added"], export["present"]) == (0, 2)
    assert len(drive_files(stack)) == len(before) + len(new)
