"""Tests for devstack.gemini_stub, driven through the real google-genai SDK."""

from __future__ import annotations

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

import pydantic
import pytest
import requests
from google import genai
from google.genai import errors, types
from PIL import Image, UnidentifiedImageError

from devstack.gemini_stub import (
    GeminiStubServer,
    StubConfig,
    image_dimensions,
    make_server,
    render_image,
)

MODEL = "gemini-3.1-flash-image"
REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers


def _start(config: StubConfig) -> tuple[GeminiStubServer, threading.Thread]:
    server = make_server("127.0.0.1", 0, config)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    return server, thread


def _stop(server: GeminiStubServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def stub() -> Iterator[GeminiStubServer]:
    server, thread = _start(StubConfig())
    yield server
    _stop(server, thread)


def client_for(
    stub: GeminiStubServer,
    *,
    api_key: str = "test",
    retry: types.HttpRetryOptions | None = None,
    api_version: str | None = None,
    timeout_ms: int | None = None,
) -> genai.Client:
    return genai.Client(
        api_key=api_key,
        http_options=types.HttpOptions(
            base_url=stub.url, retry_options=retry, api_version=api_version, timeout=timeout_ms
        ),
    )


def reference_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def generate(
    client: genai.Client,
    prompt: str,
    *,
    seed: int | None = 2,
    aspect_ratio: str = "16:9",
    image_size: str = "1K",
    with_reference: bool = True,
) -> types.GenerateContentResponse:
    contents: list[Any] = [prompt]
    if with_reference:
        contents.append(types.Part.from_bytes(data=reference_png(), mime_type="image/png"))
    return client.models.generate_content(
        model=MODEL,
        contents=contents,
        config=types.GenerateContentConfig(
            response_modalities=["IMAGE"],
            image_config=types.ImageConfig(aspect_ratio=aspect_ratio, image_size=image_size),
            seed=seed,
        ),
    )


def parts_of(response: types.GenerateContentResponse) -> list[types.Part]:
    assert response.candidates
    content = response.candidates[0].content
    assert content is not None and content.parts
    return content.parts


def image_part(response: types.GenerateContentResponse) -> types.Blob:
    blobs = [p.inline_data for p in parts_of(response) if p.inline_data is not None]
    assert len(blobs) == 1
    return blobs[0]


def script(stub: GeminiStubServer, *rules: dict[str, Any]) -> None:
    r = requests.post(f"{stub.url}/_stub/script", json={"rules": list(rules)}, timeout=5)
    assert r.status_code == 200, r.text


def stats(stub: GeminiStubServer) -> dict[str, Any]:
    r = requests.get(f"{stub.url}/_stub/stats", timeout=5)
    assert r.status_code == 200
    result: dict[str, Any] = r.json()
    return result


# --------------------------------------------------------------------------- happy path


def test_image_is_png_of_requested_size_after_a_text_part(stub: GeminiStubServer) -> None:
    response = generate(client_for(stub), "a lighthouse at dawn")

    parts = parts_of(response)
    assert parts[0].text and parts[0].inline_data is None  # text first, like real models
    blob = image_part(response)
    assert blob.mime_type == "image/png" and blob.data
    image = Image.open(io.BytesIO(blob.data))
    assert image.format == "PNG"
    assert image.size == (1024, 576)
    assert response.candidates and response.candidates[0].finish_reason == types.FinishReason.STOP
    assert response.model_version == MODEL
    usage = response.usage_metadata
    assert usage is not None and usage.candidates_tokens_details is not None
    # A 1K image is 1120 image tokens; the text part is billed as TEXT tokens.
    by_modality = {str(d.modality.value): d.token_count for d in usage.candidates_tokens_details}
    assert by_modality["IMAGE"] == 1120 and by_modality["TEXT"] > 0
    assert usage.candidates_token_count == sum(by_modality.values())

    s = stats(stub)
    assert (s["requests"], s["generated"], s["reference_images"]) == (1, 1, 1)
    assert s["by_prompt"] == {"a lighthouse at dawn": {"requests": 1, "generated": 1}}


@pytest.mark.parametrize(
    ("aspect_ratio", "image_size", "expected"),
    [
        ("1:1", "1K", (1024, 1024)),
        ("9:16", "2K", (1152, 2048)),
        ("21:9", "1K", (1024, 439)),
        ("3:4", "4K", (3072, 4096)),
    ],
)
def test_size_and_aspect_ratio(
    stub: GeminiStubServer, aspect_ratio: str, image_size: str, expected: tuple[int, int]
) -> None:
    response = generate(client_for(stub), "sizes", aspect_ratio=aspect_ratio, image_size=image_size)
    data = image_part(response).data
    assert data is not None
    assert Image.open(io.BytesIO(data)).size == expected


def test_defaults_without_image_config_are_square_1k(stub: GeminiStubServer) -> None:
    client = client_for(stub)
    response = client.models.generate_content(model=MODEL, contents="no image config")
    data = image_part(response).data
    assert data is not None
    assert Image.open(io.BytesIO(data)).size == (1024, 1024)


def test_image_dimensions_rejects_bad_values() -> None:
    assert image_dimensions("2:3", "1K") == (683, 1024)
    with pytest.raises(ValueError):
        image_dimensions("16:9", "1k")  # Google insists on an uppercase K
    with pytest.raises(ValueError):
        image_dimensions("wide", "1K")


def test_same_prompt_and_seed_give_identical_bytes(stub: GeminiStubServer) -> None:
    client = client_for(stub)
    first = image_part(generate(client, "a red fox", seed=7)).data
    render_image.cache_clear()  # prove determinism, not just caching
    again = image_part(generate(client, "a red fox", seed=7)).data
    other_seed = image_part(generate(client, "a red fox", seed=8)).data
    other_prompt = image_part(generate(client, "a blue fox", seed=7)).data
    assert first == again
    assert first != other_seed
    assert first != other_prompt


def test_wire_format_is_logged_as_sent(stub: GeminiStubServer) -> None:
    generate(client_for(stub), "wire", seed=2)
    logged = requests.get(f"{stub.url}/_stub/requests", timeout=5).json()["requests"]
    assert len(logged) == 1
    entry = logged[0]
    assert entry["api_version"] == "v1"  # SDK 3.x default for the Gemini Developer API
    assert entry["key_source"] == "header"  # x-goog-api-key
    config = entry["generationConfig"]
    assert config["seed"] == 2
    assert config["responseModalities"] == ["IMAGE"]
    assert config["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "1K"}
    # The SDK sends inlineData.mime_type (snake_case!); the stub must read both spellings.
    assert entry["reference_images"] == [{"mimeType": "image/png", "bytes": len(reference_png())}]


def test_v1beta_and_models_prefix_paths(stub: GeminiStubServer) -> None:
    client = client_for(stub, api_version="v1beta")
    response = client.models.generate_content(model=f"models/{MODEL}", contents="beta please")
    assert image_part(response).mime_type == "image/png"
    assert response.model_version == MODEL
    assert stats(stub)["by_api_version"] == {"v1beta": 1}


def test_base_url_from_environment(stub: GeminiStubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", stub.url)
    client = genai.Client(api_key="test")
    response = client.models.generate_content(model=MODEL, contents="from env")
    assert image_part(response).data
    assert stats(stub)["requests"] == 1


def test_text_only_modalities_return_no_image(stub: GeminiStubServer) -> None:
    client = client_for(stub)
    response = client.models.generate_content(
        model=MODEL,
        contents="just talk",
        config=types.GenerateContentConfig(response_modalities=["TEXT"]),
    )
    assert [p.inline_data for p in parts_of(response)] == [None]
    assert stats(stub)["generated"] == 0


# --------------------------------------------------------------------------- refusals


def test_refuse_pattern_blocks_prompt(stub: GeminiStubServer) -> None:
    response = generate(client_for(stub), "draw this [refuse] please")
    assert not response.candidates
    assert response.prompt_feedback is not None
    assert response.prompt_feedback.block_reason == types.BlockedReason.SAFETY
    assert stats(stub)["generated"] == 0


def test_refuse_pattern_can_be_disabled() -> None:
    server, thread = _start(StubConfig(refuse_pattern=None))
    try:
        response = generate(client_for(server), "draw this [refuse] please")
        assert image_part(response).data
    finally:
        _stop(server, thread)


# --------------------------------------------------------------------------- scripted modes


def test_http_429_once_is_retried_by_the_sdk(stub: GeminiStubServer) -> None:
    script(stub, {"match": "retry me", "mode": "http:429", "times": 1})
    retry = types.HttpRetryOptions(
        attempts=3, initial_delay=0.01, max_delay=0.05, http_status_codes=[429]
    )
    response = generate(client_for(stub, retry=retry), "retry me")
    assert image_part(response).data
    s = stats(stub)
    assert s["requests"] == 2 and s["generated"] == 1


def test_http_500_without_retries_raises_server_error(stub: GeminiStubServer) -> None:
    script(stub, {"match": "", "mode": "http:500"})
    with pytest.raises(errors.ServerError) as info:
        generate(client_for(stub), "boom")
    assert info.value.code == 500 and info.value.status == "INTERNAL"
    assert stats(stub)["requests"] == 1  # no retry_options means no retries


@pytest.mark.parametrize(
    ("code", "status", "error_type"),
    [
        (400, "INVALID_ARGUMENT", errors.ClientError),
        (403, "PERMISSION_DENIED", errors.ClientError),
        (429, "RESOURCE_EXHAUSTED", errors.ClientError),
        (503, "UNAVAILABLE", errors.ServerError),
    ],
)
def test_http_modes_use_google_status_names(
    stub: GeminiStubServer, code: int, status: str, error_type: type[errors.APIError]
) -> None:
    script(stub, {"match": "", "mode": f"http:{code}"})
    with pytest.raises(error_type) as info:
        generate(client_for(stub), "fail")
    assert (info.value.code, info.value.status) == (code, status)


def test_rules_count_down_and_first_match_wins(stub: GeminiStubServer) -> None:
    script(
        stub,
        {"match": "^flaky", "mode": "http:503", "times": 2},
        {"match": "flaky", "mode": "jpeg"},  # shadowed while the first rule is live
    )
    client = client_for(stub)
    for _ in range(2):
        with pytest.raises(errors.ServerError):
            generate(client, "flaky one")
    assert image_part(generate(client, "flaky one")).mime_type == "image/jpeg"
    assert image_part(generate(client, "steady")).mime_type == "image/png"  # no rule matches


def test_block_prompt_mode_with_reason(stub: GeminiStubServer) -> None:
    script(stub, {"match": "x", "mode": "block_prompt:PROHIBITED_CONTENT"})
    response = generate(client_for(stub), "x")
    assert not response.candidates
    assert response.prompt_feedback is not None
    assert response.prompt_feedback.block_reason == types.BlockedReason.PROHIBITED_CONTENT


def test_finish_image_safety_has_no_image(stub: GeminiStubServer) -> None:
    script(stub, {"match": "", "mode": "finish:IMAGE_SAFETY"})
    response = generate(client_for(stub), "unsafe")
    assert response.candidates and len(response.candidates) == 1
    candidate = response.candidates[0]
    assert candidate.finish_reason == types.FinishReason.IMAGE_SAFETY
    assert candidate.content is None
    assert stats(stub)["generated"] == 0


def test_finish_no_image_has_only_text(stub: GeminiStubServer) -> None:
    script(stub, {"match": "", "mode": "finish:NO_IMAGE"})
    response = generate(client_for(stub), "shy")
    assert response.candidates
    assert response.candidates[0].finish_reason == types.FinishReason.NO_IMAGE
    parts = parts_of(response)
    assert all(p.inline_data is None for p in parts) and parts[0].text


def test_no_candidates_mode(stub: GeminiStubServer) -> None:
    script(stub, {"match": "", "mode": "no_candidates"})
    response = generate(client_for(stub), "void")
    assert not response.candidates
    assert response.prompt_feedback is None


@pytest.mark.parametrize(
    ("mode", "mime", "pil_format"), [("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")]
)
def test_other_image_formats(stub: GeminiStubServer, mode: str, mime: str, pil_format: str) -> None:
    script(stub, {"match": "", "mode": mode})
    blob = image_part(generate(client_for(stub), "format"))
    assert blob.mime_type == mime and blob.data
    image = Image.open(io.BytesIO(blob.data))
    assert image.format == pil_format and image.size == (1024, 576)


def test_thought_part_precedes_image(stub: GeminiStubServer) -> None:
    script(stub, {"match": "", "mode": "thought"})
    parts = parts_of(generate(client_for(stub), "think first"))
    assert parts[0].thought is True and parts[0].text
    image_index = next(i for i, p in enumerate(parts) if p.inline_data is not None)
    assert image_index > 0
    assert parts[image_index].thought is not True
    assert parts[image_index].thought_signature  # Gemini 3 signs the answer part


def test_image_only_mode_has_no_text(stub: GeminiStubServer) -> None:
    script(stub, {"match": "", "mode": "image_only"})
    parts = parts_of(generate(client_for(stub), "quiet"))
    assert len(parts) == 1 and parts[0].inline_data is not None and parts[0].text is None


def test_bad_base64_fails_inside_the_sdk(stub: GeminiStubServer) -> None:
    script(stub, {"match": "", "mode": "bad_base64"})
    # The SDK decodes inlineData.data while validating the response model.
    with pytest.raises(pydantic.ValidationError):
        generate(client_for(stub), "garbled")
    assert stats(stub)["generated"] == 0


def test_bad_image_bytes_do_not_open(stub: GeminiStubServer) -> None:
    script(stub, {"match": "", "mode": "bad_image"})
    blob = image_part(generate(client_for(stub), "not an image"))
    assert blob.mime_type == "image/png" and blob.data
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(blob.data))


def test_timeout_mode_delays_then_answers(stub: GeminiStubServer) -> None:
    script(stub, {"match": "slow", "mode": "timeout", "timeout_s": 0.4, "times": 1})
    started = time.monotonic()
    response = generate(client_for(stub), "slow")
    assert time.monotonic() - started >= 0.4
    assert image_part(response).data


def test_timeout_mode_trips_client_timeout(stub: GeminiStubServer) -> None:
    script(stub, {"match": "", "mode": "timeout", "timeout_s": 5})
    started = time.monotonic()
    with pytest.raises(Exception) as info:  # the SDK's transport raises its own ReadTimeout
        generate(client_for(stub, timeout_ms=200), "hang")
    assert "Timeout" in type(info.value).__name__
    assert time.monotonic() - started < 3


# --------------------------------------------------------------------------- latency, concurrency


def test_latency_is_applied_and_requests_overlap(stub: GeminiStubServer) -> None:
    r = requests.post(f"{stub.url}/_stub/config", json={"latency_ms": 300}, timeout=5)
    assert r.status_code == 200 and r.json()["latency_ms"] == 300
    client = client_for(stub)
    barrier = threading.Barrier(4)
    results: list[bytes | None] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        barrier.wait()
        data = image_part(generate(client, f"parallel {i}")).data
        with lock:
            results.append(data)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    elapsed = time.monotonic() - started

    assert len(results) == 4 and all(results)
    assert stats(stub)["max_concurrency"] == 4
    assert 0.3 <= elapsed < 1.0  # latency applied, but not serialised (4 x 0.3 s)


def test_counters_are_exact_under_concurrency(stub: GeminiStubServer) -> None:
    client = client_for(stub)

    def worker(i: int) -> None:
        for j in range(3):
            generate(client, f"load {i % 4}", seed=j, with_reference=False)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    s = stats(stub)
    assert (s["requests"], s["generated"], s["in_flight"]) == (36, 36, 0)
    assert sum(p["requests"] for p in s["by_prompt"].values()) == 36
    assert s["by_prompt"]["load 0"] == {"requests": 9, "generated": 9}


# --------------------------------------------------------------------------- auth, validation


def test_api_key_enforced() -> None:
    server, thread = _start(StubConfig(api_key="secret"))
    try:
        with pytest.raises(errors.ClientError) as info:
            generate(client_for(server, api_key="wrong"), "who am i")
        assert info.value.code == 400 and info.value.status == "INVALID_ARGUMENT"
        assert "API_KEY_INVALID" in json.dumps(info.value.details)

        assert image_part(generate(client_for(server, api_key="secret"), "me")).data

        body = {"contents": [{"parts": [{"text": "no key"}]}]}
        url = f"{server.url}/v1beta/models/{MODEL}:generateContent"
        missing = requests.post(url, json=body, timeout=5)
        assert missing.status_code == 403
        assert missing.json()["error"]["status"] == "PERMISSION_DENIED"
        in_query = requests.post(f"{url}?key=secret", json=body, timeout=5)
        assert in_query.status_code == 200 and in_query.json()["candidates"]
    finally:
        _stop(server, thread)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        json.dumps({"contents": []}).encode(),
        json.dumps(
            {"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}]}
        ).encode(),
        json.dumps(
            {
                "contents": [{"parts": [{"text": "x"}]}],
                "generationConfig": {"imageConfig": {"imageSize": "1k"}},
            }
        ).encode(),
        json.dumps(
            {"contents": [{"parts": [{"text": "x"}, {"inlineData": {"data": "%%%"}}]}]}
        ).encode(),
    ],
)
def test_malformed_requests_get_invalid_argument(stub: GeminiStubServer, body: bytes) -> None:
    r = requests.post(
        f"{stub.url}/v1/models/{MODEL}:generateContent",
        data=body,
        headers={"x-goog-api-key": "test", "Content-Type": "application/json"},
        timeout=5,
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT" and error["message"]


def test_sdk_request_without_text_is_rejected(stub: GeminiStubServer) -> None:
    client = client_for(stub)
    only_image: list[Any] = [types.Part.from_bytes(data=reference_png(), mime_type="image/png")]
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_content(model=MODEL, contents=only_image)
    assert info.value.code == 400


# --------------------------------------------------------------------------- control plane


def test_healthz_and_unknown_paths(stub: GeminiStubServer) -> None:
    assert requests.get(f"{stub.url}/_stub/healthz", timeout=5).json() == {"ok": True}
    missing = requests.get(f"{stub.url}/nope", timeout=5)
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"


def test_reset_clears_stats_and_rules(stub: GeminiStubServer) -> None:
    script(stub, {"match": "", "mode": "http:500"})
    with pytest.raises(errors.ServerError):
        generate(client_for(stub), "before reset")
    assert stats(stub)["requests"] == 1

    assert requests.post(f"{stub.url}/_stub/reset", timeout=5).json() == {"ok": True}
    s = stats(stub)
    assert (s["requests"], s["generated"], s["by_prompt"], s["reference_images"]) == (0, 0, {}, 0)
    assert image_part(generate(client_for(stub), "after reset")).data  # rule gone


@pytest.mark.parametrize(
    "rules",
    [
        [{"match": "", "mode": "explode"}],
        [{"match": "(", "mode": "ok"}],
        [{"match": "", "mode": "ok", "times": "twice"}],
        "not a list",
    ],
)
def test_invalid_scripts_are_rejected(stub: GeminiStubServer, rules: Any) -> None:
    r = requests.post(f"{stub.url}/_stub/script", json={"rules": rules}, timeout=5)
    assert r.status_code == 400
    assert requests.get(f"{stub.url}/_stub/script", timeout=5).json() == {"rules": []}


# --------------------------------------------------------------------------- CLI


def test_cli_serves_and_exits_cleanly_on_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.gemini_stub",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--latency-ms",
            "5",
            "--refuse-pattern",
            "nope",
            "--api-key",
            "k",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line
        url = line.strip().rsplit(" ", 1)[-1]
        assert requests.get(f"{url}/_stub/healthz", timeout=5).json() == {"ok": True}
        config = requests.get(f"{url}/_stub/config", timeout=5).json()
        assert config == {
            "latency_ms": 5,
            "refuse_pattern": "nope",
            "api_key_required": True,
            "quota_per_minute": 0,
            "quota_per_day": 0,
            "retired_models": [],
        }
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- quotas


def test_quota_per_minute_refuses_with_quota_failure_and_retry_info(stub: GeminiStubServer) -> None:
    from shared.adapters.gemini import quota_refusal

    requests.post(f"{stub.url}/_stub/config", json={"quota_per_minute": 2}, timeout=5)
    client = client_for(stub)
    for _ in range(2):
        client.models.generate_content(model=MODEL, contents="a fox")
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_content(model=MODEL, contents="a fox")
    assert (info.value.code, info.value.status) == (429, "RESOURCE_EXHAUSTED")
    refusal = quota_refusal(str(info.value), info.value.details)
    assert refusal.per_day is False
    assert refusal.retry_after_s is not None and 55 <= refusal.retry_after_s <= 60
    stats = requests.get(f"{stub.url}/_stub/stats", timeout=5).json()
    assert (stats["quota_refusals"], stats["generated"]) == (1, 2)


def test_quota_per_day_is_told_apart_and_resets_on_demand(stub: GeminiStubServer) -> None:
    from shared.adapters.gemini import quota_refusal

    requests.post(f"{stub.url}/_stub/config", json={"quota_per_day": 1}, timeout=5)
    client = client_for(stub)
    client.models.generate_content(model=MODEL, contents="a fox")
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_content(model=MODEL, contents="a fox")
    assert quota_refusal(str(info.value), info.value.details).per_day is True
    requests.post(f"{stub.url}/_stub/quota/reset-day", timeout=5)
    client.models.generate_content(model=MODEL, contents="a fox")


@pytest.mark.parametrize("bad", [-1, "10", True])
def test_quota_config_is_validated(stub: GeminiStubServer, bad: object) -> None:
    answer = requests.post(f"{stub.url}/_stub/config", json={"quota_per_minute": bad}, timeout=5)
    assert answer.status_code == 400
