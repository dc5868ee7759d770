"""The Gemini stub's Batch API and Files API, driven through the real google-genai SDK.

Only the SDK (files.upload/get/download/delete, batches.create/get/list/cancel/delete)
and the stub's control plane (/_stub/...) are used, so what passes here is what the
SDK sends and parses.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from google import genai
from google.genai import _api_client, errors, types
from PIL import Image

from devstack import gemini_stub
from devstack.gemini_stub import (
    IMAGE_TOKENS,
    GeminiStubServer,
    StubConfig,
    image_dimensions,
    render_image,
)
from tests.stubs import serving

MODEL = "gemini-3.1-flash-image"
KEY = "test"
REPO_ROOT = Path(__file__).resolve().parents[2]
DONE = {
    types.JobState.JOB_STATE_SUCCEEDED,
    types.JobState.JOB_STATE_FAILED,
    types.JobState.JOB_STATE_CANCELLED,
    types.JobState.JOB_STATE_EXPIRED,
}


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def stub() -> Iterator[GeminiStubServer]:
    """Batches finish on their first read unless a test re-times them."""
    with serving(StubConfig(batch_pending_s=0, batch_running_s=0)) as server:
        yield server


@pytest.fixture
def client(stub: GeminiStubServer) -> genai.Client:
    return genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=stub.url))


def request_line(
    key: str,
    prompt: str,
    *,
    aspect_ratio: str = "1:1",
    image_size: str = "512",
    seed: int | None = 7,
    thinking_level: str | None = None,
) -> dict[str, Any]:
    """A JSONL line as the economy lane writes it (GenerateContentRequest JSON)."""
    config: dict[str, Any] = {
        "responseModalities": ["IMAGE"],
        "imageConfig": {"aspectRatio": aspect_ratio, "imageSize": image_size},
    }
    if seed is not None:
        config["seed"] = seed
    if thinking_level:
        config["thinkingConfig"] = {"thinkingLevel": thinking_level}
    return {
        "key": key,
        "request": {
            "contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "generationConfig": config,
        },
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def upload(client: genai.Client, data: bytes, display_name: str = "economy-input") -> types.File:
    return client.files.upload(
        file=io.BytesIO(data),
        config=types.UploadFileConfig(mime_type="application/jsonl", display_name=display_name),
    )


def create_from_lines(
    client: genai.Client, lines: list[Any], display_name: str = "economy-1"
) -> types.BatchJob:
    uploaded = upload(client, jsonl(lines))
    assert uploaded.name is not None
    return client.batches.create(
        model=MODEL, src=uploaded.name, config=types.CreateBatchJobConfig(display_name=display_name)
    )


def wait_done(client: genai.Client, name: str, timeout_s: float = 30.0) -> types.BatchJob:
    """Poll until the batch ends (no timing assertion beyond "eventually")."""
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.get(name=name)
        if batch.state in DONE or time.monotonic() > deadline:
            return batch
        time.sleep(0.02)


def results(client: genai.Client, batch: types.BatchJob) -> dict[str, dict[str, Any]]:
    """The batch's responses file, by key."""
    assert batch.dest is not None and batch.dest.file_name
    data = client.files.download(file=batch.dest.file_name)
    lines = [json.loads(raw) for raw in data.decode().splitlines()]
    return {line["key"]: line for line in lines}


def decode(doc: dict[str, Any]) -> types.GenerateContentResponse:
    # What the SDK itself does with inline responses (unknown fields dropped).
    return types.GenerateContentResponse._from_response(response=doc, kwargs={})


def image_of(response: types.GenerateContentResponse) -> types.Blob:
    assert response.candidates and response.candidates[0].content
    blobs = [p.inline_data for p in response.candidates[0].content.parts or [] if p.inline_data]
    assert len(blobs) == 1
    return blobs[0]


def stats(stub: GeminiStubServer) -> dict[str, Any]:
    answer: dict[str, Any] = requests.get(f"{stub.url}/_stub/stats", timeout=5).json()
    return answer


def script(stub: GeminiStubServer, *rules: dict[str, Any]) -> None:
    r = requests.post(f"{stub.url}/_stub/script", json={"rules": list(rules)}, timeout=5)
    assert r.status_code == 200, r.text


def batch_config(stub: GeminiStubServer, **settings: Any) -> requests.Response:
    return requests.post(f"{stub.url}/_stub/batch-config", json=settings, timeout=5)


def control(stub: GeminiStubServer, name: str, **doc: Any) -> requests.Response:
    return requests.post(f"{stub.url}/_stub/{name}", json=doc, timeout=30)


def raw_operation(stub: GeminiStubServer, name: str) -> dict[str, Any]:
    """The Operation JSON as it travels (the SDK drops some of it for the Gemini API)."""
    r = requests.get(f"{stub.url}/v1beta/{name}", headers={"x-goog-api-key": KEY}, timeout=30)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


# --------------------------------------------------------------------------- file batches


def test_file_batch_succeeds_with_images_of_requested_sizes_and_usage(
    stub: GeminiStubServer, client: genai.Client
) -> None:
    shapes = {
        "wide": ("a fox in the snow", "16:9", "1K", None),
        "tall": ("a lighthouse", "9:16", "512", None),
        "big": ("a market at dusk", "1:1", "2K", "HIGH"),
    }
    lines: list[Any] = [
        request_line(key, prompt, aspect_ratio=ratio, image_size=size, thinking_level=thinking)
        for key, (prompt, ratio, size, thinking) in shapes.items()
    ]
    # The API's JSON parser takes snake_case too; hand-written lines use it.
    lines.append(
        {
            "key": "snake",
            "request": {
                "contents": [{"parts": [{"text": "a red kite"}]}],
                "generation_config": {"image_config": {"aspect_ratio": "3:4", "image_size": "512"}},
            },
        }
    )
    uploaded = upload(client, jsonl(lines))
    assert (uploaded.mime_type, uploaded.display_name) == ("application/jsonl", "economy-input")
    assert uploaded.size_bytes == len(jsonl(lines))
    assert uploaded.source == types.FileSource.UPLOADED and uploaded.download_uri is None
    assert uploaded.name is not None and client.files.get(name=uploaded.name).size_bytes

    created = client.batches.create(
        model=MODEL, src=uploaded.name, config=types.CreateBatchJobConfig(display_name="econ-7")
    )
    assert created.name is not None and created.name.startswith("batches/")
    assert (created.display_name, created.model) == ("econ-7", f"models/{MODEL}")
    assert created.state in (types.JobState.JOB_STATE_PENDING, types.JobState.JOB_STATE_RUNNING)

    batch = wait_done(client, created.name)
    assert batch.state == types.JobState.JOB_STATE_SUCCEEDED and batch.done
    assert batch.create_time and batch.end_time and batch.end_time >= batch.create_time
    by_key = results(client, batch)
    assert list(by_key) == ["wide", "tall", "big", "snake"]  # input order

    for key, (prompt, ratio, size, thinking) in shapes.items():
        assert set(by_key[key]) == {"key", "response"}
        response = decode(by_key[key]["response"])
        blob = image_of(response)
        assert blob.mime_type == "image/png"
        assert blob.data == render_image(prompt, 7, ratio, size)
        assert blob.data is not None
        assert Image.open(io.BytesIO(blob.data)).size == image_dimensions(ratio, size)
        usage = response.usage_metadata
        assert usage is not None and usage.candidates_tokens_details
        image_tokens = {
            d.token_count for d in usage.candidates_tokens_details if d.modality == "IMAGE"
        }
        assert image_tokens == {IMAGE_TOKENS[size]}
        assert bool(usage.thoughts_token_count) == (thinking is not None)
    snake = image_of(decode(by_key["snake"]["response"]))
    assert snake.data is not None
    assert Image.open(io.BytesIO(snake.data)).size == image_dimensions("3:4", "512")

    assert batch.dest is not None and batch.dest.file_name
    output = client.files.get(name=batch.dest.file_name)
    assert (output.source, output.mime_type) == (types.FileSource.GENERATED, "application/jsonl")
    assert output.download_uri

    counters = stats(stub)
    assert (counters["requests"], counters["generated"], counters["by_prompt"]) == (0, 0, {})
    assert (counters["batch_lines"], counters["batch_generated"]) == (4, 4)
    assert counters["batch_by_prompt"]["a lighthouse"] == {"lines": 1, "generated": 1}
    assert counters["batch_creations"] == 1
    assert counters["batch_creations_by_model"] == {MODEL: 1}
    assert (counters["files_uploaded"], counters["file_downloads"]) == (1, 1)
    assert counters["file_bytes_uploaded"] == len(jsonl(lines))


def test_operation_wire_format(stub: GeminiStubServer, client: genai.Client) -> None:
    created = create_from_lines(client, [request_line("a", "a fox")], display_name="wire")
    assert created.name is not None
    wait_done(client, created.name)
    operation = raw_operation(stub, created.name)
    metadata = operation["metadata"]
    assert operation["name"] == created.name and operation["done"] is True
    assert metadata["state"] == "BATCH_STATE_SUCCEEDED"
    assert metadata["displayName"] == "wire" and metadata["model"] == f"models/{MODEL}"
    assert metadata["batchStats"] == {"requestCount": "1", "successfulRequestCount": "1"}
    assert metadata["inputConfig"]["fileName"].startswith("files/")
    assert metadata["output"]["responsesFile"] == operation["response"]["responsesFile"]
    assert metadata["createTime"].endswith("Z") and metadata["endTime"].endswith("Z")


def test_inline_batch_returns_responses_in_order_with_metadata(
    stub: GeminiStubServer, client: genai.Client
) -> None:
    batch = client.batches.create(
        model=MODEL,
        src=[
            types.InlinedRequest(
                contents="a paper boat",
                config=types.GenerateContentConfig(
                    response_modalities=["IMAGE"],
                    image_config=types.ImageConfig(aspect_ratio="21:9", image_size="512"),
                    seed=3,
                ),
                metadata={"key": "row-1"},
            ),
            {
                "contents": [{"parts": [{"text": "a tin robot"}], "role": "user"}],
                "config": {"image_config": {"aspect_ratio": "2:3", "image_size": "1K"}},
                "metadata": {"key": "row-2"},
            },
        ],
        config=types.CreateBatchJobConfig(display_name="inline-1"),
    )
    assert batch.name is not None
    done = wait_done(client, batch.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.dest is not None and done.dest.inlined_responses
    assert done.dest.file_name is None
    first, second = done.dest.inlined_responses
    assert (first.metadata, second.metadata) == ({"key": "row-1"}, {"key": "row-2"})
    assert first.error is None and first.response is not None
    blob = image_of(first.response)
    assert blob.data == render_image("a paper boat", 3, "21:9", "512")  # bytes, decoded
    assert second.response is not None
    second_blob = image_of(second.response)
    assert second_blob.data is not None
    assert Image.open(io.BytesIO(second_blob.data)).size == image_dimensions("2:3", "1K")

    # The SDK put the settings under request.generationConfig, as the API wants them.
    [view] = requests.get(f"{stub.url}/_stub/batches", timeout=30).json()["batches"]
    assert view["input_file"] is None
    assert view["lines"][0]["generationConfig"]["imageConfig"] == {
        "aspectRatio": "21:9",
        "imageSize": "512",
    }
    assert [line["prompt"] for line in view["lines"]] == ["a paper boat", "a tin robot"]
    assert stats(stub)["requests"] == 0


def test_inline_line_error_is_parsed_by_the_sdk(
    stub: GeminiStubServer, client: genai.Client
) -> None:
    script(stub, {"match": "overloaded", "mode": "http:503"})
    batch = client.batches.create(
        model=MODEL,
        src=[
            types.InlinedRequest(contents="fine", metadata={"key": "ok"}),
            types.InlinedRequest(contents="overloaded", metadata={"key": "bad"}),
        ],
    )
    assert batch.name is not None
    done = wait_done(client, batch.name)
    assert done.dest is not None and done.dest.inlined_responses
    ok, bad = done.dest.inlined_responses
    assert ok.response is not None and ok.error is None
    assert bad.response is None and bad.error is not None
    assert (bad.error.code, bad.metadata) == (14, {"key": "bad"})  # google.rpc UNAVAILABLE
    assert bad.error.message


# --------------------------------------------------------------------------- per-line outcomes


def test_per_line_errors_and_blocked_prompts_stay_per_line(
    stub: GeminiStubServer, client: genai.Client
) -> None:
    script(
        stub,
        {"match": "unsafe", "mode": "finish:IMAGE_SAFETY"},
        {"match": "flaky", "mode": "http:500"},
        {"match": "throttled", "mode": "http:429"},
        {"match": "slow", "mode": "timeout", "timeout_s": 30},
    )
    lines: list[Any] = [
        request_line("ok", "a calm lake"),
        request_line("refused", "[refuse] something"),
        request_line("unsafe", "an unsafe scene"),
        request_line("flaky", "a flaky line"),
        request_line("throttled", "a throttled line"),
        request_line("slow", "a slow line"),
        b'{"key": "broken", "request": ',
        {"key": "no-text", "request": {"contents": [{"parts": [{"inlineData": {}}]}]}},
    ]
    batch = create_from_lines(client, lines)
    assert batch.name is not None
    done = wait_done(client, batch.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED  # line failures don't fail it
    assert done.dest is not None and done.dest.file_name
    data = client.files.download(file=done.dest.file_name).decode().splitlines()
    assert len(data) == 8
    by_key = {json.loads(raw).get("key"): json.loads(raw) for raw in data}

    assert image_of(decode(by_key["ok"]["response"])).data
    refused = decode(by_key["refused"]["response"])
    assert not refused.candidates and refused.prompt_feedback is not None
    assert refused.prompt_feedback.block_reason == types.BlockedReason.SAFETY
    unsafe = decode(by_key["unsafe"]["response"])
    assert unsafe.candidates and unsafe.candidates[0].content is None
    assert unsafe.candidates[0].finish_reason == types.FinishReason.IMAGE_SAFETY
    # Per-line errors are google.rpc.Status: an rpc code number and a message.
    assert by_key["flaky"]["error"]["code"] == 13
    assert by_key["throttled"]["error"]["code"] == 8
    assert by_key["slow"]["error"]["code"] == 4
    assert set(by_key["flaky"]["error"]) == {"code", "message"}
    assert "response" not in by_key["flaky"]
    assert by_key[None] == {"error": by_key[None]["error"]}  # no key to echo
    assert by_key[None]["error"]["code"] == 3
    assert by_key["no-text"]["error"]["code"] == 3

    batch_stats = raw_operation(stub, batch.name)["metadata"]["batchStats"]
    assert batch_stats == {
        "requestCount": "8",
        "successfulRequestCount": "3",
        "failedRequestCount": "5",
    }
    counters = stats(stub)
    assert (counters["batch_lines"], counters["batch_line_errors"]) == (8, 5)
    assert counters["batch_generated"] == 1


def test_rule_lanes_separate_online_calls_from_batch_lines(
    stub: GeminiStubServer, client: genai.Client
) -> None:
    script(
        stub,
        {"match": "fox", "mode": "http:500", "lane": "batch"},
        {"match": "owl", "mode": "http:500", "lane": "online"},
    )
    online = client.models.generate_content(model=MODEL, contents="a fox")
    assert image_of(online).data
    with pytest.raises(errors.ServerError):
        client.models.generate_content(model=MODEL, contents="an owl")

    batch = create_from_lines(client, [request_line("fox", "a fox"), request_line("owl", "an owl")])
    assert batch.name is not None
    by_key = results(client, wait_done(client, batch.name))
    assert by_key["fox"]["error"]["code"] == 13
    assert image_of(decode(by_key["owl"]["response"])).data
    counters = stats(stub)
    assert (counters["requests"], counters["generated"]) == (2, 1)
    assert (counters["batch_lines"], counters["batch_generated"]) == (2, 1)


def test_quota_and_latency_do_not_apply_to_batch_lines(
    stub: GeminiStubServer, client: genai.Client
) -> None:
    requests.post(f"{stub.url}/_stub/config", json={"quota_per_day": 1}, timeout=5)
    lines = [request_line(str(i), f"a bird number {i}") for i in range(3)]
    batch = create_from_lines(client, lines)
    assert batch.name is not None
    by_key = results(client, wait_done(client, batch.name))
    assert all("response" in line for line in by_key.values())
    assert stats(stub)["quota_refusals"] == 0
    client.models.generate_content(model=MODEL, contents="online, within the quota")


# --------------------------------------------------------------------------- state changes


def test_states_go_pending_running_succeeded_with_configured_delays(
    stub: GeminiStubServer, client: genai.Client
) -> None:
    assert batch_config(stub, pending_s=0.3, running_s=0.3).status_code == 200
    created = create_from_lines(client, [request_line("a", "a slow fox")])
    assert created.name is not None and created.state == types.JobState.JOB_STATE_PENDING
    seen = [created.state]
    gets = 0
    while seen[-1] not in DONE:
        state = client.batches.get(name=created.name).state
        gets += 1
        if state != seen[-1]:
            seen.append(state)
        time.sleep(0.02)
    order = [types.JobState.JOB_STATE_PENDING, types.JobState.JOB_STATE_RUNNING]
    order.append(types.JobState.JOB_STATE_SUCCEEDED)
    assert seen[0] == order[0] and seen[-1] == order[-1]
    assert [s for s in order if s in seen] == seen  # never backwards, never anything else
    done = client.batches.get(name=created.name)
    assert done.create_time and done.end_time
    # The stub's own clock: it ends no earlier than pending_s + running_s after creation.
    assert (done.end_time - done.create_time).total_seconds() >= 0.6
    assert stats(stub)["batch_gets"] == gets + 1


def test_holds_and_retiming_move_a_batch_deterministically(
    stub: GeminiStubServer, client: genai.Client
) -> None:
    batch_config(stub, pending_s=3600, running_s=3600)
    created = create_from_lines(client, [request_line("a", "a held fox")])
    assert created.name is not None
    assert client.batches.get(name=created.name).state == types.JobState.JOB_STATE_PENDING

    held = control(stub, created.name, state="RUNNING")
    assert held.status_code == 200 and held.json()["state"] == "RUNNING"
    assert client.batches.get(name=created.name).state == types.JobState.JOB_STATE_RUNNING
    assert stats(stub)["batch_lines"] == 0

    retimed = control(stub, created.name, pending_s=0, running_s=0)
    # Re-timing released the hold; the results are made off the request path, and
    # the API's next read waits for them.
    assert retimed.status_code == 200 and retimed.json()["forced"] is None
    done = client.batches.get(name=created.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert "response" in results(client, done)["a"]


def test_forced_success_has_results_on_the_next_read(
    stub: GeminiStubServer, client: genai.Client
) -> None:
    batch_config(stub, pending_s=3600)
    created = create_from_lines(client, [request_line("a", "a quick fox")])
    assert created.name is not None
    forced = control(stub, created.name, state="SUCCEEDED")
    assert forced.status_code == 200 and forced.json()["forced"] == "SUCCEEDED"
    done = client.batches.get(name=created.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert "response" in results(client, done)["a"]


def test_control_calls_answer_while_a_batch_is_being_made(
    stub: GeminiStubServer, client: genai.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The results are made off the request path: however long images take, the
    control plane answers (RUNNING) instead of waiting for them."""
    rendering, release = threading.Event(), threading.Event()
    real_render = gemini_stub.render_image

    def held_render(*args: Any) -> bytes:
        rendering.set()
        release.wait(60)
        return real_render(*args)

    monkeypatch.setattr(gemini_stub, "render_image", held_render)
    batch_config(stub, pending_s=3600)
    created = create_from_lines(client, [request_line("a", "a patient fox")])
    assert created.name is not None
    try:
        retimed = control(stub, created.name, pending_s=0)  # due now: a worker starts
        assert retimed.status_code == 200 and retimed.json()["state"] == "RUNNING"
        assert rendering.wait(30), "the worker never started on the lines"
        view = requests.get(f"{stub.url}/_stub/{created.name}", timeout=30).json()
        assert (view["state"], view["output"], view["lines"][0]["outcome"]) == (
            "RUNNING",
            None,
            None,
        )
        [listed] = requests.get(f"{stub.url}/_stub/batches", timeout=30).json()["batches"]
        assert listed["state"] == "RUNNING"
        assert stats(stub)["batch_lines"] == 0
    finally:
        release.set()
    done = wait_done(client, created.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert "response" in results(client, done)["a"]
    assert stats(stub)["batch_lines"] == 1  # made once, for all the reads


def test_forced_failure_is_failed_with_an_operation_error(
    stub: GeminiStubServer, client: genai.Client
) -> None:
    batch_config(stub, pending_s=3600)
    created = create_from_lines(client, [request_line("a", "a doomed fox")])
    assert created.name is not None
    answer = control(stub, created.name, state="FAILED", error={"code": 13, "message": "boom"})
    assert answer.status_code == 200
    failed = client.batches.get(name=created.name)
    assert failed.state == types.JobState.JOB_STATE_FAILED and failed.done
    assert failed.dest is None and failed.end_time is not None
    operation = raw_operation(stub, created.name)
    assert operation["error"] == {"code": 13, "message": "boom"}
    assert operation["done"] is True and "response" not in operation
    assert stats(stub)["batch_lines"] == 0
    # An ended batch stays ended.
    assert control(stub, created.name, state="RUNNING").status_code == 400


def test_batch_expires_when_unfinished_at_expire_s(
    stub: GeminiStubServer, client: genai.Client
) -> None:
    batch_config(stub, pending_s=0, running_s=3600, expire_s=0.2)
    created = create_from_lines(client, [request_line("a", "a late fox")])
    assert created.name is not None
    expired = wait_done(client, created.name)
    assert expired.state == types.JobState.JOB_STATE_EXPIRED and expired.dest is None
    assert expired.create_time and expired.end_time
    assert abs((expired.end_time - expired.create_time).total_seconds() - 0.2) < 0.01
    assert stats(stub)["batch_lines"] == 0

    batch_config(stub, expire_s=48 * 3600)
    other = create_from_lines(client, [request_line("b", "another fox")])
    assert other.name is not None
    assert control(stub, other.name, state="EXPIRED").json()["state"] == "EXPIRED"
    assert client.batches.get(name=other.name).state == types.JobState.JOB_STATE_EXPIRED


def test_cancel_ends_a_pending_batch_without_results(
    stub: GeminiStubServer, client: genai.Client
) -> None:
    batch_config(stub, pending_s=3600)
    created = create_from_lines(client, [request_line("a", "a cancelled fox")])
    assert created.name is not None
    client.batches.cancel(name=created.name)
    cancelled = client.batches.get(name=created.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED and cancelled.done
    assert cancelled.dest is None
    with pytest.raises(errors.ClientError) as info:
        client.batches.cancel(name=created.name)
    assert (info.value.code, info.value.status) == (400, "FAILED_PRECONDITION")
    counters = stats(stub)
    assert (counters["batch_cancels"], counters["batch_lines"]) == (1, 0)


# --------------------------------------------------------------------------- list, delete, reset


def test_list_finds_a_batch_by_display_name_across_pages(
    stub: GeminiStubServer, client: genai.Client
) -> None:
    batch_config(stub, pending_s=3600)
    names = {}
    for label in ("econ-a", "econ-b", "econ-c"):
        batch = create_from_lines(client, [request_line("k", label)], display_name=label)
        names[label] = batch.name
    listed = list(client.batches.list(config=types.ListBatchJobsConfig(page_size=2)))
    assert [b.display_name for b in listed] == ["econ-c", "econ-b", "econ-a"]  # newest first
    found = next(b for b in listed if b.display_name == "econ-b")
    assert found.name == names["econ-b"] and found.state == types.JobState.JOB_STATE_PENDING
    assert stats(stub)["batch_lists"] == 2  # two pages

    name_b = names["econ-b"]
    assert name_b is not None
    client.batches.delete(name=name_b)
    assert [b.display_name for b in client.batches.list()] == ["econ-c", "econ-a"]
    with pytest.raises(errors.ClientError) as info:
        client.batches.get(name=name_b)
    assert (info.value.code, info.value.status) == (404, "NOT_FOUND")
    assert stats(stub)["batch_deletes"] == 1


def test_reset_forgets_files_and_batches(stub: GeminiStubServer, client: genai.Client) -> None:
    batch = create_from_lines(client, [request_line("a", "a fox")])
    assert batch.name is not None
    wait_done(client, batch.name)
    assert requests.post(f"{stub.url}/_stub/reset", timeout=5).json() == {"ok": True}
    with pytest.raises(errors.ClientError) as info:
        client.batches.get(name=batch.name)
    assert info.value.code == 404
    assert list(client.files.list()) == []
    counters = stats(stub)
    assert counters["batch_creations"] == counters["files_uploaded"] == 0
    assert counters["batch_by_prompt"] == {}


# --------------------------------------------------------------------------- files


def test_upload_goes_in_chunks_and_keeps_the_bytes(
    client: genai.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks make the SDK send upload, upload, ..., "upload, finalize".
    monkeypatch.setattr(_api_client, "CHUNK_SIZE", 64 * 1024)
    data = os.urandom(200 * 1024)
    uploaded = client.files.upload(
        file=io.BytesIO(data), config=types.UploadFileConfig(mime_type="application/octet-stream")
    )
    assert uploaded.size_bytes == len(data)
    assert uploaded.sha256_hash == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert uploaded.state == types.FileState.ACTIVE
    assert uploaded.name is not None
    # Uploaded files are not downloadable, at Google as here.
    with pytest.raises(errors.ClientError) as info:
        client.files.download(file=uploaded.name)
    assert info.value.code == 400


def test_upload_with_a_chosen_name_and_a_taken_one(client: genai.Client) -> None:
    config = types.UploadFileConfig(mime_type="application/jsonl", name="econ-input-1")
    uploaded = client.files.upload(file=io.BytesIO(b"{}\n"), config=config)
    assert uploaded.name == "files/econ-input-1"
    with pytest.raises(errors.ClientError) as info:
        client.files.upload(file=io.BytesIO(b"{}\n"), config=config)
    assert (info.value.code, info.value.status) == (409, "ALREADY_EXISTS")


def test_files_over_the_limit_are_refused_at_start(
    stub: GeminiStubServer, client: genai.Client
) -> None:
    assert batch_config(stub, max_file_bytes=1000).status_code == 200
    with pytest.raises(errors.ClientError) as info:
        upload(client, b"x" * 1001)
    assert info.value.code == 400
    assert upload(client, b"x" * 1000).size_bytes == 1000
    assert stats(stub)["files_uploaded"] == 1


def test_file_get_list_delete_and_unknown_files(
    stub: GeminiStubServer, client: genai.Client
) -> None:
    first = upload(client, b"{}\n", display_name="one")
    second = upload(client, b"{}\n", display_name="two")
    assert first.name is not None and second.name is not None
    assert [f.name for f in client.files.list()] == [second.name, first.name]
    client.files.delete(name=first.name)
    with pytest.raises(errors.ClientError) as info:
        client.files.get(name=first.name)
    assert (info.value.code, info.value.status) == (403, "PERMISSION_DENIED")
    counters = stats(stub)
    assert (counters["file_deletes"], counters["file_lists"]) == (1, 1)


def test_batches_from_missing_files_or_retired_models_are_refused(
    stub: GeminiStubServer, client: genai.Client
) -> None:
    with pytest.raises(errors.ClientError) as info:
        client.batches.create(model=MODEL, src="files/nosuchfile")
    assert info.value.code == 403
    empty = upload(client, b"\n\n")
    assert empty.name is not None
    with pytest.raises(errors.ClientError) as info:
        client.batches.create(model=MODEL, src=empty.name)
    assert info.value.code == 400
    requests.post(f"{stub.url}/_stub/config", json={"retired_models": ["old-image"]}, timeout=5)
    with pytest.raises(errors.ClientError) as info:
        client.batches.create(model="old-image", src=[types.InlinedRequest(contents="a fox")])
    assert info.value.code == 404
    assert stats(stub)["batch_creations"] == 0


def test_api_key_is_checked_on_batch_and_file_calls() -> None:
    with serving(StubConfig(api_key="right", batch_pending_s=0, batch_running_s=0)) as server:
        wrong = genai.Client(api_key="wrong", http_options=types.HttpOptions(base_url=server.url))
        with pytest.raises(errors.ClientError) as info:
            list(wrong.batches.list())
        assert info.value.code == 400
        with pytest.raises(errors.ClientError):
            upload(wrong, b"{}\n")
        right = genai.Client(api_key="right", http_options=types.HttpOptions(base_url=server.url))
        assert upload(right, b"{}\n").size_bytes == 3


# --------------------------------------------------------------------------- control plane


@pytest.mark.parametrize(
    "settings",
    [{"pending_s": -1}, {"running_s": "soon"}, {"expire_s": True}, {"max_file_bytes": 0}],
)
def test_batch_config_is_validated(stub: GeminiStubServer, settings: dict[str, Any]) -> None:
    before = requests.get(f"{stub.url}/_stub/batch-config", timeout=5).json()
    assert batch_config(stub, **settings).status_code == 400
    assert requests.get(f"{stub.url}/_stub/batch-config", timeout=5).json() == before


def test_batch_control_is_validated(stub: GeminiStubServer, client: genai.Client) -> None:
    assert control(stub, "batches/nosuchbatch", state="FAILED").status_code == 404
    batch_config(stub, pending_s=3600)
    created = create_from_lines(client, [request_line("a", "a fox")])
    assert created.name is not None
    assert control(stub, created.name, state="DONE-ISH").status_code == 400
    assert control(stub, created.name, pending_s=-2).status_code == 400
    assert control(stub, created.name, state="FAILED", error="boom").status_code == 400
    assert client.batches.get(name=created.name).state == types.JobState.JOB_STATE_PENDING


def test_cli_sets_batch_timing_and_file_limit() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.gemini_stub",
            "--port",
            "0",
            "--batch-pending-s",
            "5",
            "--batch-running-s",
            "0.5",
            "--batch-expire-s",
            "60",
            "--max-file-bytes",
            "4096",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        config = requests.get(f"{url}/_stub/batch-config", timeout=5).json()
        assert (config["pending_s"], config["running_s"], config["expire_s"]) == (5.0, 0.5, 60.0)
        assert config["max_file_bytes"] == 4096
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_slow_server_trickles_a_download_in_pieces(
    stub: GeminiStubServer, client: genai.Client
) -> None:
    batch_config(stub, pending_s=0, running_s=0)
    uploaded = upload(client, jsonl([request_line(str(i), f"fox {i}") for i in range(3)]))
    assert uploaded.name is not None
    batch = wait_done(client, client.batches.create(model=MODEL, src=uploaded.name).name or "")
    assert batch.dest is not None and batch.dest.file_name
    whole = client.files.download(file=batch.dest.file_name)
    rate = len(whole) / 0.5  # the whole file in about half a second
    assert batch_config(stub, download_bytes_per_s=rate).status_code == 200
    assert requests.get(f"{stub.url}/_stub/batch-config", timeout=5).json()[
        "download_bytes_per_s"
    ] == pytest.approx(rate)

    url = f"{stub.url}/v1beta/{batch.dest.file_name}:download?alt=media"
    started = time.monotonic()
    arrivals: list[float] = []
    pieces: list[bytes] = []
    with requests.get(url, headers={"x-goog-api-key": KEY}, stream=True, timeout=30) as answer:
        for piece in answer.iter_content(chunk_size=1024):
            arrivals.append(time.monotonic() - started)
            pieces.append(piece)
    assert b"".join(pieces) == whole
    # Twenty writes a second: the first piece long before the last.
    assert arrivals[-1] - arrivals[0] >= 0.3
    assert client.files.download(file=batch.dest.file_name) == whole  # the SDK copes
