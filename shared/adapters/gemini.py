"""ImageGenerator on Gemini through google-genai (imported here only).

Retries within one delivery are the SDK's own (``HttpRetryOptions``); their
worst case is bounded by the settings (``Settings.gemini_worst_case_s``). What
is still failing after them becomes ``TransientError`` (Pub/Sub redelivers) or
``PermanentError`` (recorded on the variant, message acknowledged).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx2
from google import genai
from google.genai import errors, types
from google.oauth2.credentials import Credentials
from pydantic import ValidationError

from shared.adapters.image_check import image_mime
from shared.config.settings import GEMINI_RETRY_INITIAL_DELAY_S, GEMINI_RETRY_JITTER_S
from shared.domain.errors import (
    ModelGone,
    NotAnImage,
    PermanentError,
    QuotaExceeded,
    TransientError,
)
from shared.services.ports import GeneratedImage, ModelCheck, ReferenceImage

# 408 and 5xx are worth retrying at once; other 4xx mean the request itself is
# wrong. 429 is not retried here: a quota refusal closes the fleet's gate instead
# (the SDK's retry would not read RetryInfo, and would spend more refused calls).
RETRYABLE_CODES = (408, 500, 502, 503, 504)
QUOTA_CODE = 429
NOT_FOUND_CODE = 404
# A 429 without QuotaFailure whose words are about money is the spending cap (Google
# documents no reason code for it, only RESOURCE_EXHAUSTED and its message).
SPEND_WORDS = re.compile(r"spend|spending|billing|budget|\bcap\b", re.IGNORECASE)
API_VERSION = "v1beta"
# The bearer token sent to another Vertex endpoint (the local stub): never Google's.
LOCAL_TOKEN = "local-endpoint"

# Why a candidate carries no image, in words for the sheet.
FINISH_REASONS = {
    "STOP": "the model answered without an image",
    "MAX_TOKENS": "the answer hit the output token limit",
    "SAFETY": "the answer was blocked by the safety filters",
    "RECITATION": "the answer was blocked for reciting protected material",
    "LANGUAGE": "the prompt's language is not supported",
    "BLOCKLIST": "the answer contained blocklisted terms",
    "PROHIBITED_CONTENT": "the answer was blocked as prohibited content",
    "SPII": "the answer contained sensitive personal information",
    "IMAGE_SAFETY": "the image was blocked by the safety filters",
    "IMAGE_PROHIBITED_CONTENT": "the image was blocked as prohibited content",
    "IMAGE_RECITATION": "the image was blocked for reproducing protected material",
    "IMAGE_OTHER": "the image could not be made (unspecified reason)",
    "NO_IMAGE": "the model made no image",
    "OTHER": "the answer stopped for an unspecified reason",
    "MALFORMED_RESPONSE": "the model's answer was malformed",
    "TOO_MANY_TOOL_CALLS": "the model stopped after too many tool calls",
}
BLOCK_REASONS = {
    "SAFETY": "the safety filters",
    "BLOCKLIST": "blocklisted terms",
    "PROHIBITED_CONTENT": "prohibited content",
    "IMAGE_SAFETY": "an unsafe reference image",
    "OTHER": "an unspecified reason",
}
# How much of the model's own words to keep with a failure.
SAID_CHARS = 120


@dataclass(frozen=True)
class Backend:
    """Where the model is: the Gemini API (an API key) or Vertex AI (the service
    account's credentials, a project and a location). ``base_url`` is another
    endpoint (the local stub), which, like the *_EMULATOR_HOST settings of
    Google's clients, gets no Google credentials."""

    kind: Literal["gemini_api", "vertex"] = "gemini_api"
    api_key: str = ""
    project: str = ""
    location: str = "global"
    base_url: str = ""


def gemini_client(
    backend: Backend, timeout_s: float, retry: types.HttpRetryOptions | None = None
) -> genai.Client:
    """A google-genai client on the backend; timeouts per attempt, retries by the SDK."""
    options = types.HttpOptions(
        timeout=int(timeout_s * 1000),  # milliseconds, per attempt
        retry_options=retry,
        base_url=backend.base_url or None,
    )
    if backend.kind == "vertex":
        credentials = Credentials(token=LOCAL_TOKEN) if backend.base_url else None
        return genai.Client(
            vertexai=True,
            project=backend.project,
            location=backend.location,
            credentials=credentials,
            http_options=options,
        )
    # Google documents image settings (image_config) on v1beta.
    options.api_version = API_VERSION
    return genai.Client(api_key=backend.api_key, http_options=options)


class GeminiImageGenerator:
    def __init__(
        self,
        backend: Backend,
        timeout_s: float,
        retry_attempts: int,
        retry_max_delay_s: float,
        max_pixels: int,
    ) -> None:
        self._max_pixels = max_pixels
        self._client = gemini_client(
            backend,
            timeout_s,
            types.HttpRetryOptions(
                attempts=retry_attempts,
                initial_delay=GEMINI_RETRY_INITIAL_DELAY_S,
                max_delay=retry_max_delay_s,
                exp_base=2,
                jitter=GEMINI_RETRY_JITTER_S,
                http_status_codes=list(RETRYABLE_CODES),
            ),
        )

    def generate(
        self,
        model: str,
        prompt: str,
        references: Sequence[ReferenceImage],
        seed: int,
        aspect_ratio: str | None = None,
        image_size: str | None = None,
        thinking_level: str | None = None,
    ) -> GeneratedImage:
        contents: list[Any] = [prompt]
        contents += [types.Part.from_bytes(data=r.data, mime_type=r.mime_type) for r in references]
        config = image_config(seed, aspect_ratio, image_size, thinking_level)
        try:
            response = self._client.models.generate_content(
                model=model, contents=contents, config=config
            )
        except errors.APIError as exc:
            detail = f"Gemini answered {exc.code} {exc.status or ''}: {exc.message or ''}"
            if exc.code == QUOTA_CODE:
                raise quota_refusal(detail.strip(), exc.details) from exc
            if exc.code in RETRYABLE_CODES:
                raise TransientError(detail.strip()) from exc
            if exc.code == NOT_FOUND_CODE:
                raise ModelGone(detail.strip()) from exc
            raise PermanentError(detail.strip()) from exc
        except ValidationError as exc:
            # The SDK decodes base64 itself; broken image data surfaces here.
            raise PermanentError(f"Gemini returned malformed data: {_first_error(exc)}") from exc
        except httpx2.TimeoutException as exc:
            raise TransientError(f"Gemini timed out ({type(exc).__name__})") from exc
        except (httpx2.TransportError, OSError) as exc:
            raise TransientError(f"Gemini unreachable: {type(exc).__name__}: {exc}") from exc
        except errors.UnknownApiResponseError as exc:
            raise TransientError(f"Gemini answered something unreadable: {exc}") from exc
        return read_image(response, self._max_pixels)


def quota_refusal(detail: str, body: Any) -> QuotaExceeded:
    """What a 429 says: how long to wait (``RetryInfo``), whether a daily quota is
    used up (``QuotaFailure`` names the quota), or whether it is no rate at all but
    the project's spending cap (no ``QuotaFailure``; Google's words name the spend)."""
    error = body.get("error") if isinstance(body, dict) else None
    items = error.get("details") if isinstance(error, dict) else None
    retry_after: float | None = None
    per_day = False
    rate = False
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        kind = str(item.get("@type", ""))
        if kind.endswith("google.rpc.RetryInfo"):
            retry_after = _seconds(item.get("retryDelay"))
        elif kind.endswith("google.rpc.QuotaFailure"):
            rate = True
            for violation in item.get("violations") or []:
                if isinstance(violation, dict):
                    quota_id = str(violation.get("quotaId", ""))
                    metric = str(violation.get("quotaMetric", ""))
                    per_day = per_day or "PerDay" in quota_id or "per_day" in metric
    message = str(error.get("message", "")) if isinstance(error, dict) else ""
    spend_cap = not rate and bool(SPEND_WORDS.search(f"{message} {detail}"))
    return QuotaExceeded(detail, retry_after, per_day, spend_cap)


def _seconds(duration: object) -> float | None:
    """A protobuf Duration in JSON ("23s", "0.5s") as seconds."""
    text = str(duration or "").strip()
    if not text.endswith("s"):
        return None
    try:
        value = float(text[:-1])
    except ValueError:
        return None
    return value if value >= 0 and value == value and value != float("inf") else None


def image_config(
    seed: int,
    aspect_ratio: str | None,
    image_size: str | None,
    thinking_level: str | None = None,
) -> types.GenerateContentConfig:
    """An image-only answer, in the requested shape and thinking level when given."""
    shape = None
    if aspect_ratio or image_size:
        shape = types.ImageConfig(aspect_ratio=aspect_ratio or None, image_size=image_size or None)
    thinking = None
    if thinking_level:
        thinking = types.ThinkingConfig(thinking_level=types.ThinkingLevel(thinking_level))
    return types.GenerateContentConfig(
        response_modalities=["IMAGE"], seed=seed, image_config=shape, thinking_config=thinking
    )


def read_image(response: types.GenerateContentResponse, max_pixels: int) -> GeneratedImage:
    """The first real image of the answer; a blocked, empty or broken answer is permanent."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason:
        code = _name(feedback.block_reason)
        words = BLOCK_REASONS.get(code, "a reason Gemini did not explain")
        raise PermanentError(f"prompt blocked by Gemini for {words} ({code})")
    if not response.candidates:
        raise PermanentError("Gemini returned no candidates (no image and no reason)")
    usage = _usage(response)
    candidate = response.candidates[0]
    broken: NotAnImage | None = None
    said: list[str] = []
    for part in (candidate.content.parts if candidate.content else None) or []:
        if part.thought:
            continue  # thinking (text or draft images) is not the answer
        if part.text:
            said.append(part.text)
        if part.inline_data is None or not part.inline_data.data:
            continue
        data = part.inline_data.data
        try:
            mime = image_mime(data, max_pixels)
        except NotAnImage as exc:
            broken = exc
            continue
        return GeneratedImage(data=data, mime_type=mime, usage=usage)
    if broken is not None:
        raise PermanentError(f"Gemini returned image data that is unusable: {broken}")
    code = _name(candidate.finish_reason) if candidate.finish_reason else "unknown"
    words = FINISH_REASONS.get(code, "no reason given")
    reason = f"Gemini returned no image: {words} (finish reason {code})"
    text = " ".join(" ".join(said).split())
    if text:
        reason += f"; it said: {text[:SAID_CHARS]}" + ("…" if len(text) > SAID_CHARS else "")
    raise PermanentError(reason)


def _name(value: object) -> str:
    return str(getattr(value, "value", value))


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    more = exc.error_count() - 1
    return f"{where}: {first['msg']}" + (f" (and {more} more)" if more else "")


def _usage(response: types.GenerateContentResponse) -> dict[str, int]:
    meta = response.usage_metadata
    if meta is None:
        return {}
    image_tokens = None
    for detail in meta.candidates_tokens_details or []:
        if _name(detail.modality) == "IMAGE" and detail.token_count is not None:
            image_tokens = (image_tokens or 0) + detail.token_count
    fields = {
        "prompt_tokens": meta.prompt_token_count,
        "output_tokens": meta.candidates_token_count,
        "output_image_tokens": image_tokens,
        "thought_tokens": meta.thoughts_token_count,
        "total_tokens": meta.total_token_count,
    }
    return {name: int(value) for name, value in fields.items() if value is not None}


class GeminiModelDirectory:
    """Whether the backend serves a model (``models.get``): the batch preflight."""

    def __init__(self, backend: Backend, timeout_s: float) -> None:
        self._client = gemini_client(backend, timeout_s)

    def check(self, model: str) -> ModelCheck:
        try:
            self._client.models.get(model=model)
        except errors.APIError as exc:
            detail = f"Gemini answered {exc.code} {exc.status or ''}: {exc.message or ''}".strip()
            if exc.code in (QUOTA_CODE, *RETRYABLE_CODES):
                raise TransientError(f"model lookup: {detail}") from exc
            return ModelCheck(available=False, reason=detail)
        except (httpx2.TransportError, OSError) as exc:
            raise TransientError(f"model lookup: {type(exc).__name__}: {exc}") from exc
        return ModelCheck(available=True)
