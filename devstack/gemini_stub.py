"""Local protocol stub of the Gemini API ``generateContent`` call for image models.

There is no Gemini emulator, so this speaks the REST wire format of the Gemini
Developer API (camelCase JSON) closely enough that the real google-genai SDK
talks to it unchanged: point ``GOOGLE_GEMINI_BASE_URL`` or
``HttpOptions(base_url=...)`` at it.  Images are deterministic per
(prompt, seed, aspect ratio, size).  Tests can script failures over HTTP
(``POST /_stub/script``) and read counters (``GET /_stub/stats``).

Run: ``python -m devstack.gemini_stub --host 127.0.0.1 --port 8090``
(``--latency-ms``, ``--refuse-pattern`` (empty disables), ``--api-key``).
Dev and test use only; never deploy it.

API: ``POST /{v1,v1beta}/models/{model}:generateContent`` (key in ``x-goog-api-key``
or ``?key=``).  Control plane, all JSON:

- ``POST /_stub/script`` ``{"rules": [{"match": regex, "mode": m, "times": n|null,
  "timeout_s": s}]}`` replaces the rules; the first live matching rule wins.
  Modes: ok, block_prompt[:REASON], finish:REASON, no_candidates, http:CODE, timeout,
  bad_base64, bad_image, jpeg, webp, thought, image_only.
- ``GET|POST /_stub/config`` ``{"latency_ms": n, "refuse_pattern": re|null,
  "quota_per_minute": n, "quota_per_day": n}``: quotas answer 429 RESOURCE_EXHAUSTED
  with ``QuotaFailure`` and ``RetryInfo`` as Gemini does (0: unlimited);
  ``POST /_stub/quota/reset-day`` starts a new quota day; ``"retired_models": [..]``
  answer 404 to lookups and calls, as a model Google shut down does.

Vertex AI paths (``/v1beta1/projects/{p}/locations/{l}/publishers/google/models/
{model}:generateContent``, with an OAuth bearer token) are answered too, and model
lookups (``GET .../models/{model}``) on both.
- ``GET /_stub/stats``, ``GET /_stub/requests`` (last 100 bodies, no image bytes),
  ``GET /_stub/script``, ``POST /_stub/reset``, ``GET /_stub/healthz``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import hashlib
import io
import json
import logging
import math
import re
import signal
import socketserver
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "GeminiStubServer",
    "StubConfig",
    "image_dimensions",
    "main",
    "make_server",
    "render_image",
]

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]

# Google's canonical status name for each HTTP code (google.rpc.Code mapping).
HTTP_STATUS_NAMES: Final[dict[int, str]] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_HTTP_MESSAGES: Final[dict[int, str]] = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "The request timed out. Please try again.",
}

IMAGE_SIZES: Final[dict[str, int]] = {"512": 512, "1K": 1024, "2K": 2048, "4K": 4096}
DEFAULT_ASPECT_RATIO: Final = "1:1"
DEFAULT_IMAGE_SIZE: Final = "1K"
# What Gemini 3.1 Flash Image reports per generated image, by size (image output
# tokens; the model's text rides along as TEXT tokens), and per input image.
IMAGE_TOKENS: Final[dict[str, int]] = {"512": 747, "1K": 1120, "2K": 1680, "4K": 2520}
_REFERENCE_IMAGE_TOKENS: Final = 560
# Thinking tokens by level (none below LOW).
_THOUGHT_TOKENS: Final[dict[str, int]] = {"LOW": 120, "MEDIUM": 300, "HIGH": 800, "XHIGH": 1600}

# Finish reasons after which the real API sends a candidate with no content at all;
# for the others (NO_IMAGE, IMAGE_OTHER, STOP, ...) the model says something in text.
_CONTENTLESS_REASONS: Final = frozenset(
    {
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "RECITATION",
        "IMAGE_RECITATION",
        "BLOCKLIST",
        "SPII",
    }
)
_SIMPLE_MODES: Final = frozenset(
    {
        "ok",
        "no_candidates",
        "timeout",
        "bad_base64",
        "bad_image",
        "jpeg",
        "webp",
        "thought",
        "image_only",
    }
)
_MODE_RE: Final = re.compile(r"^(?:finish|block_prompt):[A-Z][A-Z_]*$|^http:[1-5]\d\d$")

# The SDK builds "{api_version}/models/{model}:generateContent" for the Gemini API
# and ".../projects/{p}/locations/{l}/publishers/google/models/{model}:..." for
# Vertex AI; api_version may be empty, and callers may pass "models/x" themselves,
# so version and slashes vary. A model lookup is the same path without the method.
_MODEL_RESOURCE: Final = (
    r"^/+(?:(?P<version>v\d+(?:alpha|beta)?\d*)/+)?"
    r"(?:(?:projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/)?(?P<vertex>publishers/google/))?"
    r"models/(?P<model>[^/:]+)"
)
_GENERATE_PATH: Final = re.compile(_MODEL_RESOURCE + r":generateContent$")
_MODEL_PATH: Final = re.compile(_MODEL_RESOURCE + r"$")
_ASPECT_RE: Final = re.compile(r"^(\d{1,2}):(\d{1,2})$")
_MAX_BODY_BYTES: Final = 100 * 1024 * 1024
_REQUEST_LOG_SIZE: Final = 100


@dataclass
class StubConfig:
    """Runtime behaviour of the stub; latency, refusal and quotas change via /_stub/config."""

    latency_ms: int = 0
    refuse_pattern: str | None = r"\[refuse\]"
    api_key: str | None = None
    # A project's quotas, as Gemini enforces them: requests in any rolling 60 s and
    # per day (until /_stub/quota/reset-day); 0 is unlimited.
    quota_per_minute: int = 0
    quota_per_day: int = 0
    # The "minute" of the per-minute quota; tests shorten it to keep runs short.
    quota_window_s: float = 60.0
    # Models Google retired (or never had): lookups and calls answer 404.
    retired_models: tuple[str, ...] = ()


# What Gemini names in QuotaFailure for its request quotas of a model.
_MINUTE_QUOTA = (
    "generativelanguage.googleapis.com/generate_content_requests_per_model",
    "GenerateRequestsPerMinutePerProjectPerModel",
)
_DAY_QUOTA = (
    "generativelanguage.googleapis.com/generate_content_requests_per_model_per_day",
    "GenerateRequestsPerDayPerProjectPerModel",
)


def quota_error(model: str, per_day: bool, limit: int, retry_s: float) -> ApiError:
    """The 429 RESOURCE_EXHAUSTED Gemini answers when a quota is used up."""
    metric, quota_id = _DAY_QUOTA if per_day else _MINUTE_QUOTA
    return ApiError(
        429,
        f"You exceeded your current quota. Quota exceeded for metric: {metric}, "
        f"limit: {limit}, model: {model}. Please retry in {retry_s:.1f}s.",
        [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": metric,
                        "quotaId": quota_id,
                        "quotaDimensions": {"location": "global", "model": model},
                        "quotaValue": str(limit),
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [
                    {
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": f"{math.ceil(retry_s)}s",
            },
        ],
    )


class ApiError(Exception):
    """An error answered as Google's error JSON."""

    def __init__(self, code: int, message: str, details: list[JsonDict] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> JsonDict:
        """The ``{"error": {...}}`` document the real API returns."""
        error: JsonDict = {
            "code": self.code,
            "message": self.message,
            "status": HTTP_STATUS_NAMES.get(self.code, "UNKNOWN"),
        }
        if self.details:
            error["details"] = self.details
        return {"error": error}


def _bad_request(message: str) -> ApiError:
    return ApiError(400, message)


@dataclass
class _Rule:
    pattern: re.Pattern[str]
    mode: str
    times: int | None
    timeout_s: float

    def to_json(self) -> JsonDict:
        return {
            "match": self.pattern.pattern,
            "mode": self.mode,
            "times": self.times,
            "timeout_s": self.timeout_s,
        }


@dataclass
class _PromptStats:
    requests: int = 0
    generated: int = 0


@dataclass
class _State:
    """Everything handlers share; every read/write of mutable fields holds ``lock``."""

    config: StubConfig
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Set on server_close so sleeping handlers (latency, timeout mode) wake up.
    stopping: threading.Event = field(default_factory=threading.Event)
    rules: list[_Rule] = field(default_factory=list)
    requests: int = 0
    generated: int = 0
    reference_images: int = 0
    by_prompt: dict[str, _PromptStats] = field(default_factory=dict)
    by_api_version: dict[str, int] = field(default_factory=dict)
    by_api: dict[str, int] = field(default_factory=dict)  # gemini_api / vertex
    in_flight: int = 0
    max_concurrency: int = 0
    # Quota accounting: when each accepted request of the last minute came, how many
    # today, and how many calls the quota refused.
    minute_window: deque[float] = field(default_factory=deque)
    day_count: int = 0
    quota_refusals: int = 0
    # What clients actually sent (minus image bytes), so tests can assert the wire format.
    request_log: deque[JsonDict] = field(default_factory=lambda: deque(maxlen=_REQUEST_LOG_SIZE))

    def stats(self) -> JsonDict:
        with self.lock:
            return {
                "requests": self.requests,
                "generated": self.generated,
                "by_prompt": {
                    prompt: {"requests": s.requests, "generated": s.generated}
                    for prompt, s in self.by_prompt.items()
                },
                "reference_images": self.reference_images,
                "max_concurrency": self.max_concurrency,
                "in_flight": self.in_flight,
                "by_api_version": dict(self.by_api_version),
                "by_api": dict(self.by_api),
                "quota_refusals": self.quota_refusals,
                "quota_day_count": self.day_count,
            }

    def reset(self) -> None:
        with self.lock:
            self.rules = []
            self.requests = self.generated = self.reference_images = 0
            self.by_prompt = {}
            self.by_api_version = {}
            self.by_api = {}
            self.request_log.clear()
            self.minute_window.clear()
            self.day_count = self.quota_refusals = 0
            # Requests still running are real concurrency; don't pretend they vanished.
            self.max_concurrency = self.in_flight

    def admit(self, model: str, now: float) -> None:
        """Count the request against the quotas, or raise the 429 Gemini would."""
        with self.lock:
            per_minute, per_day = self.config.quota_per_minute, self.config.quota_per_day
            span = self.config.quota_window_s
            window = self.minute_window
            while window and window[0] <= now - span:
                window.popleft()
            if per_day and self.day_count >= per_day:
                self.quota_refusals += 1
                raise quota_error(model, True, per_day, 3600.0)
            if per_minute and len(window) >= per_minute:
                self.quota_refusals += 1
                # Room comes back when the oldest call of the window leaves it.
                raise quota_error(model, False, per_minute, max(1.0, window[0] + span - now))
            window.append(now)
            self.day_count += 1

    def pick_mode(self, prompt: str) -> tuple[str, float]:
        """First live matching rule wins and uses up one of its ``times``."""
        with self.lock:
            for rule in self.rules:
                if rule.times is not None and rule.times <= 0:
                    continue
                if rule.pattern.search(prompt):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule.mode, rule.timeout_s
            refuse = self.config.refuse_pattern
        if refuse and re.search(refuse, prompt):
            return "block_prompt:SAFETY", 0.0
        return "ok", 0.0


# --------------------------------------------------------------------------- images


def image_dimensions(aspect_ratio: str, image_size: str) -> tuple[int, int]:
    """(width, height) for an imageConfig: longest side from the size, shape from the ratio."""
    longest = IMAGE_SIZES.get(image_size)
    if longest is None:
        raise ValueError(f"imageSize must be one of {sorted(IMAGE_SIZES)} (uppercase K)")
    match = _ASPECT_RE.match(aspect_ratio)
    if not match or int(match[1]) == 0 or int(match[2]) == 0:
        raise ValueError(f"unsupported aspectRatio {aspect_ratio!r}")
    w, h = int(match[1]), int(match[2])
    if max(w, h) > 8 * min(w, h):
        raise ValueError(f"unsupported aspectRatio {aspect_ratio!r}")
    if w >= h:
        return longest, max(1, round(longest * h / w))
    return max(1, round(longest * w / h)), longest


@functools.lru_cache(maxsize=32)
def render_image(
    prompt: str, seed: int | None, aspect_ratio: str, image_size: str, fmt: str = "PNG"
) -> bytes:
    """Deterministic image bytes for the inputs (same inputs, same bytes).

    Drawn at thumbnail resolution from a hash-derived palette and upscaled, so even
    4K stays cheap; cached because tests and retries ask for the same image again.
    """
    width, height = image_dimensions(aspect_ratio, image_size)
    key = json.dumps([prompt, seed, aspect_ratio, image_size]).encode()
    digest = hashlib.sha256(key).digest() + hashlib.sha256(b"more" + key).digest()

    def color(i: int) -> tuple[int, int, int]:
        return digest[i], digest[i + 1], digest[i + 2]

    scale = 96 / max(width, height)
    small = (max(2, round(width * scale)), max(2, round(height * scale)))
    mask = Image.linear_gradient("L")
    mask = mask.rotate(90 * (digest[6] % 4)).resize(small)
    canvas = Image.composite(
        Image.new("RGB", small, color(0)), Image.new("RGB", small, color(3)), mask
    )
    draw = ImageDraw.Draw(canvas)
    for i in range(4):
        b = digest[8 + i * 6 : 14 + i * 6]
        x0, y0 = b[0] * small[0] // 256, b[1] * small[1] // 256
        x1 = x0 + 4 + b[2] * small[0] // 512
        y1 = y0 + 4 + b[3] * small[1] // 512
        shape_color = color(40 + i * 3)
        if b[4] % 2:
            draw.ellipse((x0, y0, x1, y1), fill=shape_color)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=shape_color)
    image = canvas.resize((width, height), Image.Resampling.BILINEAR)

    # A readable hint of the prompt makes dev-stack output easy to eyeball.
    hint = prompt if len(prompt) <= 48 else prompt[:47] + "…"
    font = ImageFont.load_default(size=max(12, min(width, height) // 24))
    ImageDraw.Draw(image).text(
        (width // 40 + 4, height // 40 + 4),
        f"{hint}\nseed={seed} {aspect_ratio} {image_size}",
        fill=(255, 255, 255),
        font=font,
        stroke_width=2,
        stroke_fill=(0, 0, 0),
    )

    buf = io.BytesIO()
    if fmt == "PNG":
        image.save(buf, "PNG", compress_level=1)
    elif fmt == "JPEG":
        image.save(buf, "JPEG", quality=85)
    elif fmt == "WEBP":
        image.save(buf, "WEBP", quality=80, method=0)
    else:
        raise ValueError(f"unsupported format {fmt!r}")
    return buf.getvalue()


# --------------------------------------------------------------------------- requests


@dataclass
class _GenerateRequest:
    prompt: str
    reference_images: list[JsonDict]  # {"mimeType", "bytes"} per inlineData part
    generation_config: JsonDict
    seed: int | None
    aspect_ratio: str
    image_size: str
    wants_image: bool
    thinking_level: str = ""


def _field(obj: JsonDict, camel: str) -> Any:
    """Read a proto-JSON field under either spelling, as Google's parser accepts both.

    The SDK really mixes them: it sends ``"inlineData": {"mime_type": ...}``.
    """
    if camel in obj:
        return obj[camel]
    return obj.get(re.sub(r"([A-Z])", lambda m: "_" + m[1].lower(), camel))


def _b64decode(data: str) -> bytes:
    # The SDK sends urlsafe base64; other clients send the standard alphabet.
    padded = data + "=" * (-len(data) % 4)
    alphabet = b"-_" if ("-" in data or "_" in data) else b"+/"
    return base64.b64decode(padded, altchars=alphabet, validate=True)


def _parse_generate(body: bytes) -> _GenerateRequest:
    """Validate a generateContent body the way the real API would (400 on nonsense)."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad_request(f"Invalid JSON payload received. {exc}") from None
    if not isinstance(doc, dict):
        raise _bad_request("Invalid JSON payload received. Expected an object.")
    contents = _field(doc, "contents")
    if not isinstance(contents, list) or not contents:
        raise _bad_request("* GenerateContentRequest.contents: contents is not specified")

    texts: list[str] = []
    references: list[JsonDict] = []
    for ci, content in enumerate(contents):
        parts = _field(content, "parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            raise _bad_request(f"* GenerateContentRequest.contents[{ci}].parts: contains no parts")
        for pi, part in enumerate(parts):
            if not isinstance(part, dict):
                raise _bad_request(f"Invalid value at 'contents[{ci}].parts[{pi}]'")
            text = _field(part, "text")
            if isinstance(text, str):
                texts.append(text)
            inline = _field(part, "inlineData")
            if inline is not None:
                data = _field(inline, "data") if isinstance(inline, dict) else None
                try:
                    if not isinstance(data, str) or not (raw := _b64decode(data)):
                        raise ValueError
                except (ValueError, binascii.Error):
                    raise _bad_request(
                        f"Invalid value at 'contents[{ci}].parts[{pi}].inline_data.data' "
                        "(TYPE_BYTES), Base64 decoding failed"
                    ) from None
                references.append({"mimeType": _field(inline, "mimeType"), "bytes": len(raw)})
    if not any(t.strip() for t in texts):
        raise _bad_request("* GenerateContentRequest.contents: at least one text part is required")

    config = _field(doc, "generationConfig") or {}
    if not isinstance(config, dict):
        raise _bad_request("Invalid value at 'generation_config'")
    seed = _field(config, "seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise _bad_request(f"Invalid value at 'generation_config.seed' (TYPE_INT32), {seed!r}")
    image_config = _field(config, "imageConfig") or {}
    if not isinstance(image_config, dict):
        raise _bad_request("Invalid value at 'generation_config.image_config'")
    aspect_ratio = str(_field(image_config, "aspectRatio") or DEFAULT_ASPECT_RATIO)
    image_size = str(_field(image_config, "imageSize") or DEFAULT_IMAGE_SIZE)
    try:
        image_dimensions(aspect_ratio, image_size)
    except ValueError as exc:
        raise _bad_request(str(exc)) from None
    modalities = _field(config, "responseModalities")
    # Image models default to TEXT+IMAGE; only an explicit list without IMAGE turns it off.
    wants_image = not isinstance(modalities, list) or any(
        str(m).upper() == "IMAGE" for m in modalities
    )
    thinking = _field(config, "thinkingConfig") or {}
    level = str(_field(thinking, "thinkingLevel") or "") if isinstance(thinking, dict) else ""
    return _GenerateRequest(
        prompt="\n".join(texts),
        reference_images=references,
        generation_config=config,
        seed=seed,
        aspect_ratio=aspect_ratio,
        image_size=image_size,
        wants_image=wants_image,
        thinking_level=level.upper(),
    )


def _parse_rules(doc: Any) -> list[_Rule]:
    rules_doc = doc.get("rules") if isinstance(doc, dict) else None
    if not isinstance(rules_doc, list):
        raise _bad_request('expected {"rules": [...]}')
    rules: list[_Rule] = []
    for i, item in enumerate(rules_doc):
        if not isinstance(item, dict):
            raise _bad_request(f"rules[{i}] must be an object")
        mode = item.get("mode")
        if not isinstance(mode, str) or not (mode in _SIMPLE_MODES or _MODE_RE.match(mode)):
            raise _bad_request(f"rules[{i}].mode {mode!r} is not a known mode")
        times = item.get("times")
        if times is not None and (not isinstance(times, int) or isinstance(times, bool)):
            raise _bad_request(f"rules[{i}].times must be an integer or null")
        timeout_s = item.get("timeout_s", 30.0)
        if not isinstance(timeout_s, int | float) or timeout_s < 0:
            raise _bad_request(f"rules[{i}].timeout_s must be a non-negative number")
        try:
            pattern = re.compile(str(item.get("match", "")))
        except re.error as exc:
            raise _bad_request(f"rules[{i}].match: {exc}") from None
        rules.append(_Rule(pattern, mode, times, float(timeout_s)))
    return rules


# --------------------------------------------------------------------------- responses


def _usage(
    req: _GenerateRequest, image_tokens: int, text_tokens: int, thoughts: int = 0
) -> JsonDict:
    """usageMetadata as Gemini reports it: prompt and output tokens by modality."""
    prompt_text = max(1, len(req.prompt) // 4)
    prompt_details: list[JsonDict] = [{"modality": "TEXT", "tokenCount": prompt_text}]
    reference_tokens = _REFERENCE_IMAGE_TOKENS * len(req.reference_images)
    if reference_tokens:
        prompt_details.append({"modality": "IMAGE", "tokenCount": reference_tokens})
    prompt_tokens = prompt_text + reference_tokens
    output_details = [
        {"modality": modality, "tokenCount": count}
        for modality, count in (("TEXT", text_tokens), ("IMAGE", image_tokens))
        if count
    ]
    thoughts += _THOUGHT_TOKENS.get(req.thinking_level, 0)
    usage: JsonDict = {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": image_tokens + text_tokens,
        "totalTokenCount": prompt_tokens + image_tokens + text_tokens + thoughts,
        "promptTokensDetails": prompt_details,
    }
    if output_details:
        usage["candidatesTokensDetails"] = output_details
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def _envelope(model: str, **fields: Any) -> JsonDict:
    # Proto3 JSON omits empty fields, so "no candidates" means no key at all.
    return {
        **fields,
        "modelVersion": model,
        "responseId": uuid.uuid4().hex[:22],
    }


def _candidate(parts: list[JsonDict] | None, finish_reason: str) -> JsonDict:
    candidate: JsonDict = {"finishReason": finish_reason, "index": 0}
    if parts:
        candidate["content"] = {"role": "model", "parts": parts}
    return candidate


def _build_answer(model: str, req: _GenerateRequest, mode: str) -> tuple[JsonDict, bool]:
    """Response body for a non-error mode, and whether it carries a valid image."""
    if mode.startswith("block_prompt:"):
        reason = mode.split(":", 1)[1]
        return _envelope(
            model, promptFeedback={"blockReason": reason}, usageMetadata=_usage(req, 0, 0)
        ), False
    if mode == "no_candidates":
        return _envelope(model, usageMetadata=_usage(req, 0, 0)), False
    if mode.startswith("finish:"):
        reason = mode.split(":", 1)[1]
        said: list[JsonDict] | None = (
            None
            if reason in _CONTENTLESS_REASONS
            else [{"text": "I was unable to generate an image for this request."}]
        )
        candidate = _candidate(said, reason)
        return _envelope(
            model, candidates=[candidate], usageMetadata=_usage(req, 0, 12 if said else 0)
        ), False

    text_part: JsonDict = {"text": f"Here is the image you asked for: {req.prompt[:80]}"}
    if not req.wants_image:
        # responseModalities without IMAGE: the model only talks.
        return _envelope(
            model, candidates=[_candidate([text_part], "STOP")], usageMetadata=_usage(req, 0, 20)
        ), False

    fmt, mime = {"jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}.get(
        mode, ("PNG", "image/png")
    )
    valid_image = True
    if mode == "bad_base64":
        data, valid_image = "!!not*base64*at&all!!", False
    elif mode == "bad_image":
        data = base64.b64encode(b"this is not an image").decode()
        valid_image = False
    else:
        raw = render_image(req.prompt, req.seed, req.aspect_ratio, req.image_size, fmt)
        data = base64.b64encode(raw).decode()
    image_part: JsonDict = {"inlineData": {"mimeType": mime, "data": data}}

    parts: list[JsonDict] = []
    thoughts = 0
    if mode == "thought":
        thoughts = 64
        parts.append({"text": "**Planning the composition**\nI will lay out ...", "thought": True})
        # Gemini 3 image models sign the final answer part; clients must pass it through.
        signature = hashlib.sha256(req.prompt.encode()).digest()[:16]
        image_part["thoughtSignature"] = base64.b64encode(signature).decode()
    if mode != "image_only":
        parts.append(text_part)
    parts.append(image_part)
    return _envelope(
        model,
        candidates=[_candidate(parts, "STOP")],
        usageMetadata=_usage(
            req,
            IMAGE_TOKENS.get(req.image_size, IMAGE_TOKENS[DEFAULT_IMAGE_SIZE]),
            0 if mode == "image_only" else max(1, len(text_part["text"]) // 4),
            thoughts,
        ),
    ), valid_image


# --------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's pooled client expects
    server_version = "GeminiStub/1.0"
    timeout = 300  # reap idle keep-alive connections eventually
    server: GeminiStubServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # -- plumbing

    def _send_json(self, code: int, doc: JsonDict) -> bool:
        """Send a JSON answer; False if the client had already gone."""
        payload = json.dumps(doc, separators=(",", ":")).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its own timeout while we slept); nothing to do.
            self.close_connection = True
            return False
        return True

    def _read_body(self) -> bytes:
        # Always drain the body, or the next keep-alive request would read garbage.
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(400, "Request payload size exceeds the limit.")
        return self.rfile.read(length) if length > 0 else b""

    def _json_body(self, body: bytes) -> Any:
        try:
            return json.loads(body or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _bad_request("body must be JSON") from None

    # -- routing

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        state = self.server.state
        if path == "/_stub/healthz":
            self._send_json(200, {"ok": True})
        elif path == "/_stub/stats":
            self._send_json(200, state.stats())
        elif path == "/_stub/script":
            with state.lock:
                rules = [r.to_json() for r in state.rules]
            self._send_json(200, {"rules": rules})
        elif path == "/_stub/config":
            self._send_json(200, self._config_json())
        elif path == "/_stub/requests":
            with state.lock:
                logged = list(state.request_log)
            self._send_json(200, {"requests": logged})
        elif (match := _MODEL_PATH.match(unquote(path))) is not None:
            try:
                self._authorize(match, parse_qs(urlsplit(self.path).query))
                self._send_json(200, self._model(match["version"] or "", match["model"]))
            except ApiError as exc:
                self._send_json(exc.code, exc.body())
        else:
            self._send_json(404, ApiError(404, f"Not found: GET {path}").body())

    def do_POST(self) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        try:
            body = self._read_body()
            match = _GENERATE_PATH.match(path)
            if match:
                self._generate(match, parse_qs(split.query), body)
            elif path == "/_stub/script":
                rules = _parse_rules(self._json_body(body))
                with self.server.state.lock:
                    self.server.state.rules = rules
                self._send_json(200, {"ok": True, "rules": len(rules)})
            elif path == "/_stub/config":
                self._update_config(self._json_body(body))
                self._send_json(200, self._config_json())
            elif path == "/_stub/reset":
                self.server.state.reset()
                self._send_json(200, {"ok": True})
            elif path == "/_stub/quota/reset-day":
                with self.server.state.lock:
                    self.server.state.day_count = 0
                self._send_json(200, {"ok": True})
            else:
                raise ApiError(404, f"Not found: POST {path}")
        except ApiError as exc:
            self._send_json(exc.code, exc.body())

    # -- control

    def _config_json(self) -> JsonDict:
        config = self.server.state.config
        with self.server.state.lock:
            return {
                "latency_ms": config.latency_ms,
                "refuse_pattern": config.refuse_pattern,
                "api_key_required": config.api_key is not None,
                "quota_per_minute": config.quota_per_minute,
                "quota_per_day": config.quota_per_day,
                "retired_models": list(config.retired_models),
            }

    def _update_config(self, doc: Any) -> None:
        if not isinstance(doc, dict):
            raise _bad_request("config must be a JSON object")
        state = self.server.state
        latency = doc.get("latency_ms", state.config.latency_ms)
        if not isinstance(latency, int) or isinstance(latency, bool) or latency < 0:
            raise _bad_request("latency_ms must be a non-negative integer")
        refuse = doc.get("refuse_pattern", state.config.refuse_pattern)
        if refuse is not None:
            try:
                re.compile(str(refuse))
            except re.error as exc:
                raise _bad_request(f"refuse_pattern: {exc}") from None
        quotas = {
            name: doc.get(name, getattr(state.config, name))
            for name in ("quota_per_minute", "quota_per_day")
        }
        for name, value in quotas.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise _bad_request(f"{name} must be a non-negative integer")
        retired = doc.get("retired_models", list(state.config.retired_models))
        if not isinstance(retired, list) or not all(isinstance(m, str) for m in retired):
            raise _bad_request("retired_models must be a list of model names")
        with state.lock:
            state.config.latency_ms = latency
            state.config.refuse_pattern = None if refuse in (None, "") else str(refuse)
            state.config.quota_per_minute = quotas["quota_per_minute"]
            state.config.quota_per_day = quotas["quota_per_day"]
            state.config.retired_models = tuple(retired)

    # -- the API

    def _check_key(self, query: dict[str, list[str]]) -> str:
        """Mimic Google: wrong key is 400 API_KEY_INVALID, no key at all is 403.

        Returns where the key came from ("header" or "query").
        """
        header_key = self.headers.get("x-goog-api-key")
        key = header_key or (query.get("key") or [""])[0]
        expected = self.server.state.config.api_key
        if not key:
            raise ApiError(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        if expected is not None and key != expected:
            raise ApiError(
                400,
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            )
        return "header" if header_key else "query"

    def _authorize(self, match: re.Match[str], query: dict[str, list[str]]) -> str:
        """Vertex AI paths take an OAuth bearer token; Gemini API paths an API key."""
        if match["vertex"]:
            if not (self.headers.get("Authorization") or "").startswith("Bearer "):
                raise ApiError(
                    401,
                    "Request is missing required authentication credential. Expected OAuth 2 "
                    "access token, login cookie or other valid authentication credential.",
                )
            return "bearer"
        return self._check_key(query)

    def _retired(self, version: str, model: str) -> ApiError | None:
        if model not in self.server.state.config.retired_models:
            return None
        return ApiError(
            404,
            f"models/{model} is not found for API version {version or 'v1beta'}, or is not "
            "supported for generateContent. Call ListModels to see the list of available "
            "models and their supported methods.",
        )

    def _model(self, version: str, model: str) -> JsonDict:
        """What models.get answers for a model the API serves."""
        retired = self._retired(version, model)
        if retired is not None:
            raise retired
        return {
            "name": f"models/{model}",
            "displayName": model,
            "version": "001",
            "inputTokenLimit": 65536,
            "outputTokenLimit": 32768,
            "supportedGenerationMethods": [
                "generateContent",
                "countTokens",
                "batchGenerateContent",
            ],
        }

    def _generate(self, match: re.Match[str], query: dict[str, list[str]], body: bytes) -> None:
        version, model = match["version"] or "", match["model"]
        api = "vertex" if match["vertex"] else "gemini_api"
        state = self.server.state
        with state.lock:
            state.requests += 1
            state.by_api_version[version] = state.by_api_version.get(version, 0) + 1
            state.by_api[api] = state.by_api.get(api, 0) + 1
            state.in_flight += 1
            state.max_concurrency = max(state.max_concurrency, state.in_flight)
        try:
            key_source = self._authorize(match, query)
            retired = self._retired(version, model)
            if retired is not None:
                raise retired
            req = _parse_generate(body)
            # Quotas count requests the API accepted, as Google's do; a refused
            # call is answered at once.
            state.admit(model, time.monotonic())
            with state.lock:
                state.reference_images += len(req.reference_images)
                state.by_prompt.setdefault(req.prompt, _PromptStats()).requests += 1
                state.request_log.append(
                    {
                        "api_version": version,
                        "model": model,
                        "prompt": req.prompt,
                        "generationConfig": req.generation_config,
                        "reference_images": req.reference_images,
                        "key_source": key_source,
                    }
                )
                latency_s = state.config.latency_ms / 1000
            mode, timeout_s = state.pick_mode(req.prompt)
            # Sleep without holding any lock so concurrent requests overlap; the event
            # lets server_close cut sleeps short.
            if latency_s > 0:
                state.stopping.wait(latency_s)
            if mode == "timeout":
                state.stopping.wait(timeout_s)
            if mode.startswith("http:"):
                code = int(mode.split(":", 1)[1])
                details = None
                if code == 429:
                    details = [
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}
                    ]
                message = _HTTP_MESSAGES.get(code, f"Scripted error {code}.")
                raise ApiError(code, message, details)
            answer, has_image = _build_answer(model, req, mode)
            log.info("generateContent model=%s mode=%s prompt=%.60r", model, mode, req.prompt)
            # Don't count answers to a client that visibly hung up (best effort: a write
            # to a just-closed socket can still appear to succeed).
            if self._send_json(200, answer) and has_image:
                with state.lock:
                    state.generated += 1
                    state.by_prompt[req.prompt].generated += 1
        finally:
            with state.lock:
                state.in_flight -= 1


class GeminiStubServer(ThreadingHTTPServer):
    """ThreadingHTTPServer carrying the stub's shared state."""

    daemon_threads = True  # a handler stuck in "timeout" mode must not block exit

    def __init__(self, address: tuple[str, int], config: StubConfig) -> None:
        self.state = _State(config=config)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # Skip HTTPServer's getfqdn() reverse lookup, which can stall without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def server_close(self) -> None:
        self.state.stopping.set()
        super().server_close()

    @property
    def url(self) -> str:
        """Base URL to hand to the SDK (``HttpOptions(base_url=...)``)."""
        return f"http://{self.server_name}:{self.server_port}"


def make_server(host: str, port: int, config: StubConfig) -> GeminiStubServer:
    """Bind (port 0 picks a free port) without serving; call ``serve_forever()`` yourself."""
    if config.refuse_pattern:
        re.compile(config.refuse_pattern)  # fail at startup, not on the first request
    return GeminiStubServer((host, port), config)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m devstack.gemini_stub", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument(
        "--refuse-pattern",
        default=StubConfig.refuse_pattern,
        help="regex; matching prompts are blocked (empty string disables)",
    )
    parser.add_argument("--api-key", default=None, help="only accept this key")
    parser.add_argument(
        "--quota-per-minute", type=int, default=0, help="requests per rolling minute (0: none)"
    )
    parser.add_argument("--quota-per-day", type=int, default=0, help="requests per day (0: none)")
    parser.add_argument(
        "--quota-window-s", type=float, default=60.0, help="the per-minute quota's window"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = StubConfig(
        latency_ms=args.latency_ms,
        refuse_pattern=args.refuse_pattern or None,
        api_key=args.api_key,
        quota_per_minute=args.quota_per_minute,
        quota_per_day=args.quota_per_day,
        quota_window_s=args.quota_window_s,
    )
    server = make_server(args.host, args.port, config)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    # serve_forever runs in a thread because shutdown() deadlocks if called from the
    # thread that is serving (i.e. from a signal handler on the main thread).
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    thread.start()
    print(f"gemini stub listening on {server.url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
