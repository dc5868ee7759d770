"""Briefs on the stack: a template with a character and a product reaches Gemini
labelled; rows made with their own model and size; one Chat message per batch."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from PIL import Image

from shared.adapters.chat import chat_request_id
from shared.services.notices import notice_key, request_id
from tests.integration.conftest import LiveStack, push_body

TEMPLATE = {"name": "hero", "text": "{Character} holds the {product} on {setting}, {mood} light"}


def png(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (side % 255, 90, 160)).save(out, "PNG")
    return out.getvalue()


def upload(stack: LiveStack, name: str, data: bytes) -> str:
    bucket = stack.env["IMAGES_BUCKET"]
    stack.storage.bucket(bucket).blob(name).upload_from_string(data, content_type="image/png")
    return f"gs://{bucket}/{name}"


def post(stack: LiveStack, items: list[dict[str, Any]], run_mode: str = "live") -> dict[str, Any]:
    stack.add_rows(
        [
            {"scene_id": i["scene_id"], "prompt": i.get("prompt", ""), "variants": i["variants"]}
            for i in items
        ]
    )
    answer = stack.post_batch(items, run_mode)
    assert answer.status_code in (200, 202), answer.text
    body: dict[str, Any] = answer.json()
    return body


def sent_to_gemini(stack: LiveStack, needle: str) -> list[dict[str, Any]]:
    return [r for r in stack.gemini("requests")["requests"] if needle in r["prompt"]]


def test_a_template_with_a_character_and_a_product_reaches_gemini_labelled(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    sid = scene("brief")
    mara = [upload(stack, f"refs/{sid}/mara{i}.png", png(side)) for i, side in ((1, 24), (2, 40))]
    flask = upload(stack, f"refs/{sid}/flask.png", png(56))
    item = {
        "scene_id": sid,
        "variants": 1,
        "template": TEMPLATE,
        "fields": {"Character": "Mara", "product": "flask", "setting": sid, "mood": "warm"},
        "avoid": "text, logos",
        "references": [
            {"role": "product", "name": "Flask", "ref": flask},
            *({"role": "character", "name": "Mara", "ref": ref} for ref in mara),
        ],
    }
    body = post(stack, [item])
    (job,) = body["jobs"]
    (view,) = stack.wait_jobs([job["job_id"]]).values()
    assert view["state"] == "completed", view
    prompt = (
        f"Mara holds the flask on {sid}, warm light\n\n"
        "Leave these out of the image entirely: text, logos."
    )
    assert view["prompt"] == prompt and view["template"] == "hero"
    assert view["references"] == ["product Flask", "character Mara", "character Mara"]
    (call,) = sent_to_gemini(stack, sid)
    assert call["prompt"].startswith(
        "Images 1 to 2 show the character Mara.\nImage 3 is the product Flask.\n"
    )
    assert call["prompt"].endswith(prompt)
    # The images in the order the words name them: Mara's two, then the flask.
    assert [r["bytes"] for r in call["reference_images"]] == [
        len(png(24)),
        len(png(40)),
        len(png(56)),
    ]


def test_a_row_missing_a_templates_column_is_refused_naming_it(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    item = {"scene_id": scene("nocol"), "variants": 1, "template": TEMPLATE, "fields": {}}
    answer = stack.post_batch([item], "dry_run")
    assert answer.status_code == 400, answer.text
    assert {"field": "items[0].template", "reason": "{character} has no column 'character'"} in (
        answer.json()["details"]
    )


def test_each_row_is_priced_and_made_with_its_own_model_and_size(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    a, b = scene("own-a"), scene("own-b")
    items = [
        {"scene_id": a, "prompt": f"default model {a}", "variants": 1},
        {
            "scene_id": b,
            "prompt": f"pro at 2K {b}",
            "variants": 1,
            "model": "gemini-3-pro-image",
            "image_size": "2K",
        },
    ]
    plan = post(stack, items, "dry_run")
    priced = {j["scene_id"]: (j["model"], j["image_size"]) for j in plan["jobs"]}
    assert priced == {a: (plan["model"], "1K"), b: ("gemini-3-pro-image", "2K")}
    costs = {j["scene_id"]: j["estimated_cost_per_image_usd"] for j in plan["jobs"]}
    assert costs[b] > costs[a]
    answer = stack.post_batch(items)
    assert answer.status_code == 202, answer.text
    views = stack.wait_jobs([j["job_id"] for j in answer.json()["jobs"]])
    assert {v["scene_id"]: v["model"] for v in views.values()} == {
        a: plan["model"],
        b: "gemini-3-pro-image",
    }
    (call,) = sent_to_gemini(stack, f"pro at 2K {b}")
    assert call["model"] == "gemini-3-pro-image"
    assert call["generationConfig"]["imageConfig"]["imageSize"] == "2K"


def chat(stack: LiveStack, path: str) -> dict[str, Any]:
    answer = requests.get(f"{stack.env['CHAT_STUB_URL']}/{path}", timeout=10)
    answer.raise_for_status()
    data: dict[str, Any] = answer.json()
    return data


def test_one_chat_message_per_finished_batch_under_duplicate_deliveries(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    items = [
        {"scene_id": scene(f"news{i}"), "prompt": "A lighthouse", "variants": 1} for i in range(3)
    ]
    body = post(stack, items)
    batch_id = body["batch_id"]
    url = f"{stack.env['GENERATE_URL']}/projects/local-project/topics/{stack.env['JOBS_TOPIC']}"

    def deliver(n: int) -> int:
        job = body["jobs"][n % len(items)]
        message = {"job_id": job["job_id"], "batch_id": batch_id, "scene_id": job["scene_id"]}
        push = push_body(message, f"dup-{batch_id}-{n}")
        return requests.post(url, json=push, timeout=120).status_code

    # Every job delivered three more times at once, beside Pub/Sub's own delivery.
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(deliver, range(3 * len(items))))
    assert all(code < 500 for code in codes), codes
    views = stack.wait_jobs([j["job_id"] for j in body["jobs"]])
    assert {v["state"] for v in views.values()} == {"completed"}
    ended = chat_request_id(request_id(notice_key(batch_id, "ended")))

    def told() -> list[dict[str, Any]]:
        return [m for m in chat(stack, "_messages")["messages"] if m["threadKey"] == batch_id]

    stack.wait_for(lambda: bool(told()), timeout_s=60, what="the batch's Chat message")
    # Redeliveries after the end tell nothing more.
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(deliver, range(len(items))))
    time.sleep(2)
    (message,) = told()
    assert message["text"].startswith(f"Batch {batch_id} is done")
    assert "Scenes: 3 of 3 ended, 0 with failures" in message["text"]
    assert "Images: 3 made, 0 failed" in message["text"]
    assert (
        f"https://docs.google.com/spreadsheets/d/{stack.env['SPREADSHEET_ID']}/edit"
        in (message["text"])
    )
    assert message["requestId"] == ended
    # One post reached Chat: the claim kept the concurrent deliveries from posting.
    assert chat(stack, "_posts")["by_request_id"][ended] == 1
    batch = requests.get(f"{stack.api}/batches/{batch_id}", headers=stack.headers(), timeout=30)
    assert batch.json()["events"] == ["ended"]
