"""adapters/gemini: reading answers (hand-built responses) and calling Gemini.

The calls go through the real google-genai SDK to the Gemini stub served in
this process on loopback, so the wire format, the SDK's own retries and its
error types are the real ones.
"""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from google.genai import types
from PIL import Image

from devstack.gemini_stub import GeminiStubServer, StubConfig, make_server
from shared.adapters.gemini import (
    FINISH_REASONS,
    Backend,
    GeminiImageGenerator,
    GeminiModelDirectory,
    image_config,
    quota_refusal,
    read_image,
)
from shared.domain.catalog import load_catalog
from shared.domain.errors import ModelGone, PermanentError, QuotaExceeded, TransientError
from shared.services.ports import ModelCheck, ReferenceImage
from tests.fakes import jpeg_bytes, png_bytes

PNG = png_bytes(color=(1, 2, 3))
OTHER_PNG = png_bytes(color=(9, 9, 9))
JPEG = jpeg_bytes()
MAX_PIXELS = 10_000_000
MODEL = "gemini-3.1-flash-image"


def webp_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (5, 5, 200)).save(out, format="WEBP")
    return out.getvalue()


def image_part(data: bytes, mime: str = "image/png", thought: bool | None = None) -> types.Part:
    return types.Part(inline_data=types.Blob(data=data, mime_type=mime), thought=thought)


def response(
    *parts: types.Part,
    finish: types.FinishReason | None = types.FinishReason.STOP,
    usage: types.GenerateContentResponseUsageMetadata | None = None,
) -> types.GenerateContentResponse:
    return types.GenerateContentResponse(
        candidates=[
            types.Candidate(
                content=types.Content(role="model", parts=list(parts)), finish_reason=finish
            )
        ],
        usage_metadata=usage,
    )


def read(answer: types.GenerateContentResponse, max_pixels: int = MAX_PIXELS) -> Any:
    return read_image(answer, max_pixels)


# --------------------------------------------------------------------------- reading answers


def test_text_before_image() -> None:
    image = read(response(types.Part(text="Here is your fox."), image_part(PNG)))
    assert (image.data, image.mime_type) == (PNG, "image/png")


def test_thought_parts_are_skipped() -> None:
    thinking = types.Part(text="**Planning** the fox", thought=True)
    image = read(response(thinking, image_part(OTHER_PNG, thought=True), image_part(PNG)))
    assert image.data == PNG


@pytest.mark.parametrize(
    ("data", "mime"), [(JPEG, "image/jpeg"), (webp_bytes(), "image/webp"), (PNG, "image/png")]
)
def test_format_is_decided_by_decoding_not_by_the_declared_mime(data: bytes, mime: str) -> None:
    image = read(response(image_part(data, mime="image/png")))
    assert (image.data, image.mime_type) == (data, mime)


def test_usage_tokens_extracted() -> None:
    usage = types.GenerateContentResponseUsageMetadata(
        prompt_token_count=12,
        candidates_token_count=1290,
        thoughts_token_count=64,
        total_token_count=1366,
    )
    image = read(response(image_part(PNG), usage=usage))
    assert image.usage == {
        "prompt_tokens": 12,
        "output_tokens": 1290,
        "thought_tokens": 64,
        "total_tokens": 1366,
    }


def test_partial_usage_and_no_usage() -> None:
    usage = types.GenerateContentResponseUsageMetadata(total_token_count=5)
    assert read(response(image_part(PNG), usage=usage)).usage == {"total_tokens": 5}
    assert read(response(image_part(PNG))).usage == {}


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        (types.BlockedReason.SAFETY, "the safety filters"),
        (types.BlockedReason.PROHIBITED_CONTENT, "prohibited content"),
        (types.BlockedReason.BLOCKLIST, "blocklisted terms"),
        (types.BlockedReason.OTHER, "an unspecified reason"),
    ],
)
def test_prompt_blocked_is_permanent_with_reason_in_words(
    reason: types.BlockedReason, words: str
) -> None:
    blocked = types.GenerateContentResponse(
        prompt_feedback=types.GenerateContentResponsePromptFeedback(block_reason=reason)
    )
    with pytest.raises(PermanentError) as info:
        read(blocked)
    assert str(info.value) == f"prompt blocked by Gemini for {words} ({reason.value})"


@pytest.mark.parametrize("candidates", [None, []])
def test_no_candidates_is_permanent(candidates: list[types.Candidate] | None) -> None:
    with pytest.raises(PermanentError, match="no candidates"):
        read(types.GenerateContentResponse(candidates=candidates))


@pytest.mark.parametrize(
    "reason",
    [
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_OTHER",
        "NO_IMAGE",
        "SAFETY",
        "PROHIBITED_CONTENT",
        "RECITATION",
        "IMAGE_RECITATION",
        "BLOCKLIST",
        "SPII",
    ],
)
def test_missing_image_names_the_finish_reason_in_words(reason: str) -> None:
    empty = types.GenerateContentResponse(
        candidates=[types.Candidate(finish_reason=types.FinishReason(reason))]
    )
    with pytest.raises(PermanentError) as info:
        read(empty)
    assert str(info.value) == (
        f"Gemini returned no image: {FINISH_REASONS[reason]} (finish reason {reason})"
    )


def test_what_the_model_said_is_kept_with_the_reason() -> None:
    refused = response(
        types.Part(text="I can't make\nthat image."), finish=types.FinishReason.NO_IMAGE
    )
    with pytest.raises(PermanentError) as info:
        read(refused)
    assert str(info.value) == (
        "Gemini returned no image: the model made no image (finish reason NO_IMAGE); "
        "it said: I can't make that image."
    )


def test_no_finish_reason_says_unknown() -> None:
    with pytest.raises(PermanentError, match=r"finish reason unknown"):
        read(response(types.Part(text="hmm"), finish=None))


@pytest.mark.parametrize(
    "data",
    [
        b"GIF89a not allowed",
        PNG[:-30],  # right magic bytes, truncated
        b"\x89PNG\r\n\x1a\n" + b"garbage" * 10,
        b"\xff\xd8\xff" + b"\x00" * 40,
    ],
    ids=["gif", "truncated-png", "png-magic-garbage", "jpeg-magic-garbage"],
)
def test_undecodable_image_bytes_are_a_permanent_failure(data: bytes) -> None:
    with pytest.raises(PermanentError, match="image data that is unusable"):
        read(response(image_part(data)))


def test_image_over_the_pixel_limit_is_refused_before_decoding() -> None:
    big = png_bytes(size=(200, 100))
    with pytest.raises(PermanentError, match="200x100 pixels exceed the limit of 19999"):
        read(response(image_part(big)), max_pixels=19_999)
    assert read(response(image_part(big)), max_pixels=20_000).data == big


def test_bad_part_followed_by_good_image_uses_the_image() -> None:
    image = read(response(image_part(b"junk"), image_part(PNG)))
    assert image.data == PNG


def test_only_thought_images_is_no_image() -> None:
    with pytest.raises(PermanentError, match="no image"):
        read(response(image_part(PNG, thought=True)))


def test_image_config_only_when_asked() -> None:
    plain = image_config(3, None, None)
    assert (plain.seed, plain.response_modalities, plain.image_config) == (3, ["IMAGE"], None)
    shaped = image_config(1, "16:9", "2K")
    assert shaped.image_config == types.ImageConfig(aspect_ratio="16:9", image_size="2K")
    assert image_config(1, None, "4K").image_config == types.ImageConfig(image_size="4K")


# --------------------------------------------------------------------------- calling the stub


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiStubServer]:
    server = make_server("127.0.0.1", 0, StubConfig(refuse_pattern=None))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.url)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def script(stub: GeminiStubServer, *rules: dict[str, Any]) -> None:
    requests.post(f"{stub.url}/_stub/script", json={"rules": list(rules)}, timeout=5)


def logged(stub: GeminiStubServer) -> list[dict[str, Any]]:
    answer = requests.get(f"{stub.url}/_stub/requests", timeout=5).json()
    return list(answer["requests"])


def generator(attempts: int = 2, timeout_s: float = 5.0) -> GeminiImageGenerator:
    # No backoff delay: the retry itself is under test, not its timing.
    return GeminiImageGenerator(Backend(api_key="test-key"), timeout_s, attempts, 0.0, MAX_PIXELS)


def test_call_sends_prompt_references_seed_and_image_config(stub: GeminiStubServer) -> None:
    refs = [ReferenceImage(PNG, "image/png"), ReferenceImage(JPEG, "image/jpeg")]
    image = generator().generate(MODEL, "a fox", refs, seed=2, aspect_ratio="16:9", image_size="2K")
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.size == (2048, 1152)
    # A 2K image is 1680 image tokens, two references 560 input tokens each.
    assert image.usage["output_image_tokens"] == 1680
    assert image.usage["output_tokens"] > 1680  # the text part too
    assert image.usage["prompt_tokens"] == 1 + 2 * 1120
    (sent,) = logged(stub)
    assert sent["api_version"] == "v1beta"
    assert sent["model"] == MODEL
    assert sent["prompt"] == "a fox"
    assert [r["mimeType"] for r in sent["reference_images"]] == ["image/png", "image/jpeg"]
    config = sent["generationConfig"]
    assert config["seed"] == 2
    assert config["responseModalities"] == ["IMAGE"]
    assert config["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "2K"}


def test_call_without_shape_leaves_it_to_the_model(stub: GeminiStubServer) -> None:
    generator().generate(MODEL, "a fox", [], seed=1)
    assert "imageConfig" not in logged(stub)[0]["generationConfig"]


@pytest.mark.parametrize("mode", ["http:500", "http:503", "http:408"])
def test_sdk_retries_retryable_codes_within_one_call(stub: GeminiStubServer, mode: str) -> None:
    script(stub, {"match": ".", "mode": mode, "times": 1})
    image = generator(attempts=2).generate(MODEL, "a fox", [], seed=1)
    assert image.mime_type == "image/png"
    assert len(logged(stub)) == 2


def test_quota_refusal_is_not_retried_and_says_how_long_to_wait(stub: GeminiStubServer) -> None:
    script(stub, {"match": ".", "mode": "http:429", "times": 1})
    with pytest.raises(QuotaExceeded, match="Gemini answered 429 RESOURCE_EXHAUSTED") as info:
        generator(attempts=3).generate(MODEL, "a fox", [], seed=1)
    assert (info.value.retry_after_s, info.value.per_day) == (1.0, False)
    assert len(logged(stub)) == 1  # one refused call, not three


def quota_body(quota_id: str, metric: str, delay: str | None) -> dict[str, Any]:
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaMetric": metric, "quotaId": quota_id, "quotaValue": "20"}],
        },
        {"@type": "type.googleapis.com/google.rpc.Help", "links": []},
    ]
    if delay is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
    return {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": details}}


@pytest.mark.parametrize(
    ("body", "retry_after", "per_day"),
    [
        (
            quota_body(
                "GenerateRequestsPerMinutePerProjectPerModel",
                "generativelanguage.googleapis.com/generate_requests_per_model",
                "23s",
            ),
            23.0,
            False,
        ),
        (
            quota_body(
                "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                "generativelanguage.googleapis.com/generate_requests_per_model_per_day",
                "4.5s",
            ),
            4.5,
            True,
        ),
        (quota_body("ImagesPerMinute", "x/images_per_minute", None), None, False),
        ({"error": {"details": [{"@type": "x.RetryInfo", "retryDelay": "soon"}]}}, None, False),
        ({"error": "not an object"}, None, False),
        (["not", "a", "dict"], None, False),
        (None, None, False),
    ],
)
def test_quota_refusal_tells_minute_from_day_and_reads_retry_info(
    body: Any, retry_after: float | None, per_day: bool
) -> None:
    refusal = quota_refusal("Gemini answered 429", body)
    assert (refusal.retry_after_s, refusal.per_day) == (retry_after, per_day)


def test_retryable_code_after_all_attempts_is_transient(stub: GeminiStubServer) -> None:
    script(stub, {"match": ".", "mode": "http:503"})
    with pytest.raises(TransientError, match="Gemini answered 503 UNAVAILABLE"):
        generator(attempts=3).generate(MODEL, "a fox", [], seed=1)
    assert len(logged(stub)) == 3


@pytest.mark.parametrize("mode", ["http:400", "http:403", "http:404"])
def test_other_client_errors_are_permanent_without_retry(stub: GeminiStubServer, mode: str) -> None:
    script(stub, {"match": ".", "mode": mode})
    with pytest.raises(PermanentError, match=f"Gemini answered {mode[5:]}"):
        generator(attempts=3).generate(MODEL, "a fox", [], seed=1)
    assert len(logged(stub)) == 1


def test_timeout_is_retried_then_transient(stub: GeminiStubServer) -> None:
    script(stub, {"match": ".", "mode": "timeout", "timeout_s": 3})
    with pytest.raises(TransientError, match=r"Gemini timed out \(ReadTimeout\)"):
        generator(attempts=2, timeout_s=0.3).generate(MODEL, "a fox", [], seed=1)
    assert len(logged(stub)) == 2


def test_timeout_then_success(stub: GeminiStubServer) -> None:
    script(stub, {"match": ".", "mode": "timeout", "timeout_s": 3, "times": 1})
    image = generator(attempts=2, timeout_s=0.3).generate(MODEL, "a fox", [], seed=1)
    assert image.mime_type == "image/png"


def test_unreachable_gemini_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    # A port nothing listens on (the stub fixture is not used here).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(TransientError, match="Gemini unreachable: ConnectError"):
        generator(attempts=1).generate(MODEL, "a fox", [], seed=1)


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("bad_base64", "malformed data: candidates.0.content.parts.1.inlineData.data"),
        ("bad_image", "image data that is unusable"),
        ("no_candidates", "no candidates"),
        ("block_prompt:PROHIBITED_CONTENT", "prompt blocked by Gemini for prohibited content"),
        ("finish:IMAGE_SAFETY", "the image was blocked by the safety filters"),
        ("finish:NO_IMAGE", "the model made no image (finish reason NO_IMAGE); it said: I was"),
    ],
)
def test_unusable_answers_are_permanent(stub: GeminiStubServer, mode: str, error: str) -> None:
    script(stub, {"match": ".", "mode": mode})
    with pytest.raises(PermanentError, match=error.replace("(", r"\(").replace(")", r"\)")):
        generator(attempts=3).generate(MODEL, "a fox", [], seed=1)
    assert len(logged(stub)) == 1  # an answer is an answer: never paid for again


@pytest.mark.parametrize(("mode", "mime"), [("jpeg", "image/jpeg"), ("webp", "image/webp")])
def test_jpeg_and_webp_answers(stub: GeminiStubServer, mode: str, mime: str) -> None:
    script(stub, {"match": ".", "mode": mode})
    assert generator().generate(MODEL, "a fox", [], seed=1).mime_type == mime


def test_thought_answer_yields_the_final_image(stub: GeminiStubServer) -> None:
    script(stub, {"match": ".", "mode": "thought"})
    image = generator().generate(MODEL, "a fox", [], seed=1)
    assert image.mime_type == "image/png"
    assert image.usage["thought_tokens"] == 64


# --------------------------------------------------------------------------- issue 15


def test_the_thinking_level_is_sent_when_given(stub: GeminiStubServer) -> None:
    generator().generate(MODEL, "a fox", [], seed=1, thinking_level="MINIMAL")
    generator().generate(MODEL, "a fox", [], seed=2)
    first, second = logged(stub)
    # The SDK spells it thinking_level (snake case, as it does mime_type); Google takes both.
    assert list(first["generationConfig"]["thinkingConfig"].values()) == ["MINIMAL"]
    assert "thinkingConfig" not in second["generationConfig"]


def vertex(stub: GeminiStubServer) -> Backend:
    return Backend(kind="vertex", project="proj", location="europe-west4", base_url=stub.url)


def test_the_vertex_backend_calls_the_vertex_paths_with_a_bearer_token(
    stub: GeminiStubServer,
) -> None:
    image = GeminiImageGenerator(vertex(stub), 5.0, 1, 0.0, 20_000_000).generate(
        MODEL, "a fox", [], seed=1, image_size="4K"
    )
    assert image.usage["output_image_tokens"] == 2520
    (sent,) = logged(stub)
    assert (sent["key_source"], sent["api_version"]) == ("bearer", "v1beta1")
    assert requests.get(f"{stub.url}/_stub/stats", timeout=5).json()["by_api"] == {"vertex": 1}


@pytest.mark.parametrize("backend", ["gemini_api", "vertex"])
def test_the_model_directory_tells_a_served_model_from_a_retired_one(
    stub: GeminiStubServer, backend: str
) -> None:
    requests.post(
        f"{stub.url}/_stub/config", json={"retired_models": ["gemini-2.0-flash-exp"]}, timeout=5
    )
    where = vertex(stub) if backend == "vertex" else Backend(api_key="test-key")
    directory = GeminiModelDirectory(where, timeout_s=5.0)
    assert directory.check(MODEL) == ModelCheck(available=True)
    retired = directory.check("gemini-2.0-flash-exp")
    assert retired.available is False
    assert retired.reason.startswith("Gemini answered 404 NOT_FOUND: models/gemini-2.0-flash-exp")


def test_a_model_lookup_that_cannot_answer_is_transient(stub: GeminiStubServer) -> None:
    directory = GeminiModelDirectory(Backend(api_key="test-key", base_url="http://127.0.0.1:9"), 2)
    with pytest.raises(TransientError, match="model lookup"):
        directory.check(MODEL)


def test_the_preflight_cli_says_whether_the_model_can_be_used(stub: GeminiStubServer) -> None:
    from tools.preflight import main

    requests.post(f"{stub.url}/_stub/config", json={"retired_models": ["gone-image"]}, timeout=5)
    env = {"GEMINI_API_KEY": "k", "GOOGLE_GEMINI_BASE_URL": stub.url}
    catalog = json.dumps(
        {"models": {"gone-image": load_catalog().models[MODEL].model_dump(mode="json")}}
    )
    assert main([], env) == 0
    assert main(["--model", "gone-image"], {**env, "MODEL_CATALOG": catalog}) == 1
    assert main(["--model", "not-in-the-catalog"], env) == 1
    assert main([], {}) == 2  # no key
    vertex_env = {"GOOGLE_CLOUD_PROJECT": "p", "VERTEX_BASE_URL": stub.url}
    assert main(["--backend", "vertex"], vertex_env) == 0


def test_the_preflight_cli_warns_of_a_deprecated_model_and_refuses_a_shut_down_one(
    stub: GeminiStubServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from tools.preflight import main

    env = {"GEMINI_API_KEY": "k", "GOOGLE_GEMINI_BASE_URL": stub.url}
    assert main(["--model", "gemini-3.1-flash-image"], env) == 0
    out = capsys.readouterr().out
    assert "warning: gemini-3.1-flash-image is deprecated" in out
    assert "move to gemini-nano-banana-2.1" in out
    assert main(["--model", "gemini-3-pro-image-preview"], env) == 1
    assert "use gemini-3-pro-image" in capsys.readouterr().out
    assert main([], env) == 0
    assert "warning" not in capsys.readouterr().out


# ----------------------------------------------------------------- the current API's fields

SERVED = sorted(name for name, entry in load_catalog().models.items() if entry.served)


@pytest.mark.parametrize("model", SERVED)
def test_every_request_the_catalog_allows_is_one_the_api_accepts(
    stub: GeminiStubServer, model: str
) -> None:
    """Each size of each served model, with the thinking level we would send and every
    level it takes: the stub answers as Gemini does, 400 for a field, size, ratio or
    level the model refuses (and for the deprecated temperature, top_p, top_k)."""
    entry = load_catalog().models[model]
    gen = GeminiImageGenerator(Backend(api_key="test-key"), 5.0, 1, 0.0, 20_000_000)
    for size in entry.image_sizes:
        image = gen.generate(
            model, "a fox", [], seed=1, image_size=size, thinking_level=entry.thinking_level("")
        )
        assert image.usage["output_image_tokens"] == entry.output_image_tokens[size]
    for level in entry.thinking_levels:
        gen.generate(model, "a fox", [], seed=1, thinking_level=level)
    for ratio in entry.aspect_ratios:
        gen.generate(model, "a fox", [], seed=1, aspect_ratio=ratio, image_size="1K")
    logged = requests.get(f"{stub.url}/_stub/requests", timeout=5).json()["requests"]
    sent = [r["generationConfig"] for r in logged]
    assert sent and all(
        not {"temperature", "topP", "topK", "top_p", "top_k"} & set(c) for c in sent
    )


def test_the_stub_refuses_what_gemini_refuses(stub: GeminiStubServer) -> None:
    gen = generator()
    with pytest.raises(PermanentError, match=r"400 INVALID_ARGUMENT.*imageSize '512'"):
        gen.generate("gemini-nano-banana-2.1", "a fox", [], seed=1, image_size="512")
    with pytest.raises(PermanentError, match="thinkingLevel 'LOW'"):
        gen.generate("gemini-3-pro-image", "a fox", [], seed=1, thinking_level="LOW")
    config = image_config(1, None, None).model_copy(update={"temperature": 0.4})
    with pytest.raises(Exception, match="temperature is deprecated"):
        gen._client.models.generate_content(
            model="gemini-nano-banana-2.1", contents=["a fox"], config=config
        )


@pytest.mark.parametrize(
    ("body", "spend_cap"),
    [
        (
            {
                "error": {
                    "code": 429,
                    "status": "RESOURCE_EXHAUSTED",
                    "message": "Your project has exceeded its monthly spending cap.",
                }
            },
            True,
        ),
        ({"error": {"code": 429, "message": "Billing budget exhausted for this project"}}, True),
        # A rate quota says which quota; that its help text mentions billing changes nothing.
        (
            {
                "error": {
                    "message": "You exceeded your current quota, please check your plan and "
                    "billing details.",
                    "details": quota_body("ImagesPerMinute", "x/images_per_minute", "9s")["error"][
                        "details"
                    ],
                }
            },
            False,
        ),
        ({"error": {"message": "Resource has been exhausted (e.g. check quota)."}}, False),
    ],
)
def test_a_spending_cap_is_told_from_a_rate_quota(body: Any, spend_cap: bool) -> None:
    assert quota_refusal("Gemini answered 429", body).spend_cap is spend_cap


def test_a_model_google_stopped_serving_is_gone(stub: GeminiStubServer) -> None:
    requests.post(f"{stub.url}/_stub/config", json={"retired_models": [MODEL]}, timeout=5)
    with pytest.raises(ModelGone, match="404 NOT_FOUND"):
        generator().generate(MODEL, "a fox", [], seed=1)


def test_the_preflight_cli_checks_what_the_terraform_variables_deploy(
    stub: GeminiStubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tools.preflight import main

    tfvars = tmp_path / "terraform.tfvars"
    tfvars.write_text(
        'project_id = "p"\naccess = { allowed_spreadsheet_ids = ["*"] }\n'
        'models = {\n  gemini_model = "gemini-3-pro-image-preview"\n}\n'
    )
    # The shell names a fine model; the deployment a shut-down one: the deployment counts.
    env = {
        "GEMINI_API_KEY": "k",
        "GOOGLE_GEMINI_BASE_URL": stub.url,
        "GEMINI_MODEL": "gemini-nano-banana-2.1",
    }
    assert main(["--tfvars", str(tfvars)], env) == 1
    out = capsys.readouterr().out
    assert f"checking the deployment of {tfvars}" in out
    assert "GEMINI_MODEL in the environment ('gemini-nano-banana-2.1')" in out
    assert "use gemini-3-pro-image" in out
    tfvars.write_text('models = {\n  gemini_model = "gemini-nano-banana-2.1"\n}\n')
    assert main(["--tfvars", str(tfvars)], env) == 0
    tfvars.write_text("models = {{{\n")
    assert main(["--tfvars", str(tfvars)], env) == 2
    assert "cannot read" in capsys.readouterr().out
