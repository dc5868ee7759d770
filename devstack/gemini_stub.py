"""Local protocol stub of the Gemini API for image models: generateContent, Batch, Files.

There is no Gemini emulator, so this speaks the REST wire format of the Gemini
Developer API (camelCase JSON) closely enough that the real google-genai SDK
talks to it unchanged: point ``GOOGLE_GEMINI_BASE_URL`` or
``HttpOptions(base_url=...)`` at it.  Images are deterministic per
(prompt, seed, aspect ratio, size).  Tests can script failures over HTTP
(``POST /_stub/script``) and read counters (``GET /_stub/stats``).

Run: ``python -m devstack.gemini_stub --host 127.0.0.1 --port 8090``
(``--latency-ms``, ``--refuse-pattern`` (empty disables), ``--api-key``,
``--batch-pending-s``, ``--batch-running-s``, ``--batch-expire-s``, ``--max-file-bytes``).
Dev and test use only; never deploy it.

API: ``POST /{v1,v1beta}/models/{model}:generateContent`` (key in ``x-goog-api-key``
or ``?key=``).  Control plane, all JSON:

- ``POST /_stub/script`` ``{"rules": [{"match": regex, "mode": m, "times": n|null,
  "timeout_s": s, "lane": "any"|"online"|"batch"}]}`` replaces the rules; the first
  live matching rule of the call's lane wins (generateContent is "online", a batch
  line "batch"). Modes: ok, block_prompt[:REASON], finish:REASON, no_candidates,
  http:CODE, timeout, bad_base64, bad_image, jpeg, webp, thought, image_only.
- ``GET|POST /_stub/config`` ``{"latency_ms": n, "refuse_pattern": re|null,
  "quota_per_minute": n, "quota_per_day": n}``: quotas answer 429 RESOURCE_EXHAUSTED
  with ``QuotaFailure`` and ``RetryInfo`` as Gemini does (0: unlimited);
  ``POST /_stub/quota/reset-day`` starts a new quota day; ``"retired_models": [..]``
  answer 404 to lookups and calls, as a model Google shut down does.
- Models: the image models of ``MODELS`` accept only their own sizes, aspect ratios
  and thinking levels (400 otherwise, as Gemini answers) and report their own token
  counts; any other name is served as a generic image model. Every model refuses
  the sampling fields Google deprecated (``DEPRECATED_FIELDS``: temperature, topP,
  topK) with a 400, so a client that sends one fails its tests.

Vertex AI paths (``/v1beta1/projects/{p}/locations/{l}/publishers/google/models/
{model}:generateContent``, with an OAuth bearer token) are answered too, and model
lookups (``GET .../models/{model}``) on both.
- ``GET /_stub/stats``, ``GET /_stub/requests`` (last 100 bodies, no image bytes),
  ``GET /_stub/script``, ``POST /_stub/reset``, ``GET /_stub/healthz``.

Files API and Batch API (Gemini API only, any or no version prefix, as google-genai
sends them; API key as above except on the upload URL, whose upload_id is the key):

- ``POST /upload/{v}/files`` with ``X-Goog-Upload-Protocol: resumable``,
  ``-Command: start``, ``-Header-Content-Length``, ``-Header-Content-Type`` and body
  ``{"file": {...}}`` answers ``X-Goog-Upload-URL``; chunks go there with
  ``-Command: upload`` (``upload, finalize`` for the last) and ``-Offset``, answered
  ``X-Goog-Upload-Status: active`` then ``final`` with ``{"file": File}``.  Bytes stay
  in memory; a file over ``max_file_bytes`` is refused at start (400).
- ``GET|DELETE /{v}/files/{id}``, ``GET /{v}/files``, ``GET /{v}/files/{id}:download?alt=media``
  (raw bytes; only GENERATED files, i.e. batch results).  Unknown files answer 403.
- ``POST /{v}/models/{model}:batchGenerateContent`` ``{"batch": {"displayName",
  "inputConfig": {"fileName": "files/ID"} | {"requests": {"requests": [{"request",
  "metadata"}]}}}}`` (inline bodies up to 20 MB) answers an Operation; ``GET
  /{v}/batches/{id}``, ``GET /{v}/batches`` (newest first, ``operations``),
  ``POST /{v}/batches/{id}:cancel``, ``DELETE /{v}/batches/{id}``.  States
  ``BATCH_STATE_PENDING`` -> ``RUNNING`` -> ``SUCCEEDED`` by the batch's timing, or
  ``FAILED``/``CANCELLED``/``EXPIRED``.  On success every line runs through the
  generateContent logic (rules, refuse pattern, image sizes, usageMetadata) and the
  results land in ``metadata.output`` (and ``response``): ``responsesFile`` (JSONL of
  ``{"key", "response"}`` or ``{"key", "error": {"code": <google.rpc.Code>,
  "message"}}``) or ``inlinedResponses.inlinedResponses`` (``response`` or ``error``,
  with the request's ``metadata``).  A bad line (invalid JSON, no text) or an
  ``http:CODE`` / ``timeout`` rule gives that line an error, not the batch.
  Latency and the per-minute/per-day quotas do not apply to batch lines: the Batch
  API has its own limits, which the stub does not model.  A worker thread makes a
  batch's results once they are due, never a request: the batch reads ``RUNNING``
  until they are in.  ``batches.get``/``list``/``cancel`` wait up to 10 s for them
  (so a small batch due at once is ``SUCCEEDED`` on its first read); the control
  plane never waits.
- ``GET|POST /_stub/batch-config`` ``{"pending_s", "running_s", "expire_s",
  "max_file_bytes", "download_bytes_per_s"}``: timing of batches created from then
  on (0 for tests); a download rate > 0 makes file downloads trickle (a slow server).
- ``GET /_stub/batches`` (every batch: state, timing, each line's prompt,
  generationConfig and outcome), ``GET /_stub/batches/{id}``, and ``POST
  /_stub/batches/{id}`` ``{"pending_s", "running_s", "expire_s"}`` (re-time, from
  creation; releases a hold) or ``{"state": "PENDING"|"RUNNING"}`` (hold there) or
  ``{"state": "SUCCEEDED"|"FAILED"|"CANCELLED"|"EXPIRED", "error": {"code",
  "message"}}`` (end now; FAILED carries the error as Operation.error; SUCCEEDED
  once the results are made).
- Counters in ``/_stub/stats``: ``requests``, ``generated`` and ``by_prompt`` count
  generateContent only; batch lines count in ``batch_lines``, ``batch_generated``
  (lines answered with a valid image), ``batch_line_errors`` and ``batch_by_prompt``;
  also ``batch_creations`` (and ``_by_model``), ``batch_gets``, ``batch_lists``,
  ``batch_cancels``, ``batch_deletes``, ``files_uploaded``, ``file_bytes_uploaded``,
  ``file_gets``, ``file_lists``, ``file_downloads``, ``file_deletes``.
  ``/_stub/reset`` also forgets every file, upload and batch.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
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
from collections.abc import Callable, Sequence
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
# Sampling parameters Google deprecated on 2026-07-21; the stub refuses them outright
# (Google ignores them today and will refuse them), so a test fails if we send one.
DEPRECATED_FIELDS: Final = ("temperature", "topP", "topK")
_RATIOS: Final = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
_WIDE_RATIOS: Final = ("1:4", "4:1", "1:8", "8:1")


@dataclass(frozen=True)
class ModelSpec:
    """What one image model accepts and reports, as Google documents it (checked
    2026-12-07): its sizes, aspect ratios and thinking levels (none: it refuses a
    level), its image tokens by size and its tokens per reference image."""

    sizes: tuple[str, ...]
    aspect_ratios: tuple[str, ...]
    thinking_levels: tuple[str, ...]
    image_tokens: dict[str, int]
    reference_tokens: int


MODELS: Final[dict[str, ModelSpec]] = {
    "gemini-nano-banana-2.1": ModelSpec(
        ("1K", "2K", "4K"),
        _RATIOS + _WIDE_RATIOS,
        ("MINIMAL", "MEDIUM", "HIGH"),
        {"1K": 1120, "2K": 1680, "4K": 3780},
        1120,
    ),
    "gemini-3.1-flash-lite-image": ModelSpec(
        ("1K",), _RATIOS + _WIDE_RATIOS, ("MINIMAL", "HIGH"), {"1K": 1120}, 1120
    ),
    "gemini-3.1-flash-image": ModelSpec(
        ("512", "1K", "2K", "4K"),
        (*_RATIOS, "9:21", *_WIDE_RATIOS),
        ("MINIMAL", "HIGH"),
        {"512": 747, "1K": 1120, "2K": 1680, "4K": 2520},
        1120,
    ),
    "gemini-3-pro-image": ModelSpec(
        ("1K", "2K", "4K"), _RATIOS, (), {"1K": 1120, "2K": 1120, "4K": 2000}, 560
    ),
    "gemini-2.5-flash-image": ModelSpec(("1K",), _RATIOS, (), {"1K": 1290}, 258),
}
# Any other model name (tests make some up): every size and ratio the renderer
# draws, any thinking level, Flash Image's token counts.
GENERIC_MODEL: Final = ModelSpec(
    tuple(IMAGE_SIZES),
    (),
    ("MINIMAL", "LOW", "MEDIUM", "HIGH", "XHIGH"),
    IMAGE_TOKENS,
    _REFERENCE_IMAGE_TOKENS,
)

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
_LANES: Final = ("any", "online", "batch")
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
# Files API and Batch API paths (Gemini API only; Vertex AI has batchPredictionJobs).
_VERSION_PREFIX: Final = r"^/+(?:(?P<version>v\d+(?:alpha|beta)?\d*)/+)?"
_BATCH_CREATE_PATH: Final = re.compile(
    _VERSION_PREFIX + r"models/(?P<model>[^/:]+):batchGenerateContent$"
)
_BATCHES_PATH: Final = re.compile(_VERSION_PREFIX + r"batches$")
_BATCH_PATH: Final = re.compile(_VERSION_PREFIX + r"batches/(?P<id>[^/:]+)(?P<cancel>:cancel)?$")
_FILES_PATH: Final = re.compile(_VERSION_PREFIX + r"files$")
_FILE_PATH: Final = re.compile(_VERSION_PREFIX + r"files/(?P<id>[^/:]+)(?P<download>:download)?$")
_UPLOAD_PATH: Final = re.compile(r"^/+upload/+(?:(?P<version>v\d+(?:alpha|beta)?\d*)/+)?files$")
_STUB_BATCH_PATH: Final = re.compile(r"^/_stub/batches/(?:batches/)?(?P<id>[^/]+)$")
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
    # Batch API timing for new batches (each can be re-timed on /_stub/batches/{id}):
    # PENDING for batch_pending_s, then RUNNING for batch_running_s, then SUCCEEDED;
    # a batch still unfinished batch_expire_s after creation EXPIRES (48 h at Google).
    batch_pending_s: float = 1.0
    batch_running_s: float = 2.0
    batch_expire_s: float = 48 * 3600.0
    # Files API: Google takes up to 2 GB a file; the stub keeps files in memory.
    max_file_bytes: int = 512 * 1024 * 1024
    # A slow server: file downloads trickle at this many bytes a second (0: at once).
    download_bytes_per_s: float = 0.0


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

    def __init__(
        self,
        code: int,
        message: str,
        details: list[JsonDict] | None = None,
        status: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        # Google sometimes pairs a code with another status than the usual one
        # (400 FAILED_PRECONDITION, 409 ALREADY_EXISTS).
        self.status = status or HTTP_STATUS_NAMES.get(code, "UNKNOWN")

    def body(self) -> JsonDict:
        """The ``{"error": {...}}`` document the real API returns."""
        error: JsonDict = {
            "code": self.code,
            "message": self.message,
            "status": self.status,
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
    # Which calls the rule sees: generateContent ("online"), batch lines ("batch") or both.
    lane: str = "any"

    def to_json(self) -> JsonDict:
        return {
            "match": self.pattern.pattern,
            "mode": self.mode,
            "times": self.times,
            "timeout_s": self.timeout_s,
            "lane": self.lane,
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
    # Files API and Batch API state, with counters of their own.
    store: _Store = field(init=False)

    def __post_init__(self) -> None:
        self.store = _Store(self.answer_line, self.stopping)

    def stats(self) -> JsonDict:
        store_stats = self.store.stats()
        with self.lock:
            return {
                **store_stats,
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
        self.store.reset()

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

    def pick_mode(self, prompt: str, lane: str = "online") -> tuple[str, float]:
        """First live matching rule of the lane wins and uses up one of its ``times``."""
        with self.lock:
            for rule in self.rules:
                if rule.times is not None and rule.times <= 0:
                    continue
                if rule.lane not in ("any", lane):
                    continue
                if rule.pattern.search(prompt):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule.mode, rule.timeout_s
            refuse = self.config.refuse_pattern
        if refuse and re.search(refuse, prompt):
            return "block_prompt:SAFETY", 0.0
        return "ok", 0.0

    def answer_line(self, model: str, line: _BatchLine) -> _LineOutcome:
        """A batch line through the generateContent logic: a response or a per-line error.

        Scripted ``http:CODE`` becomes the line's error and ``timeout`` a
        DEADLINE_EXCEEDED one; latency and the quotas do not apply (the Batch API
        has limits of its own, which the stub does not model).
        """
        if line.request is None:
            problem = line.problem or _bad_request("Invalid request.")
            return _LineOutcome(error=_rpc_status(problem.code, problem.message))
        mode, _ = self.pick_mode(line.request.prompt, lane="batch")
        if mode.startswith("http:"):
            code = int(mode.split(":", 1)[1])
            return _LineOutcome(
                error=_rpc_status(code, _HTTP_MESSAGES.get(code, f"Scripted error {code}."))
            )
        if mode == "timeout":
            return _LineOutcome(error=_rpc_status(504, _HTTP_MESSAGES[504]))
        answer, has_image = _build_answer(model, line.request, mode)
        return _LineOutcome(response=answer, generated=has_image)


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
    spec: ModelSpec = GENERIC_MODEL


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


def _parse_generate(body: bytes, model: str = "") -> _GenerateRequest:
    """Validate a generateContent body the way the real API would (400 on nonsense)."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad_request(f"Invalid JSON payload received. {exc}") from None
    return _parse_request(doc, model)


def _parse_request(doc: Any, model: str = "") -> _GenerateRequest:
    """Validate a GenerateContentRequest object (a call's body or a batch line's request)
    against what ``model`` accepts."""
    spec = MODELS.get(model, GENERIC_MODEL)
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
    for name in DEPRECATED_FIELDS:
        if _field(config, name) is not None:
            raise _bad_request(
                f"generation_config.{name} is deprecated for image models and not accepted"
            )
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
    if image_size not in spec.sizes:
        raise _bad_request(f"{model} does not support imageSize {image_size!r}")
    if spec.aspect_ratios and aspect_ratio not in spec.aspect_ratios:
        raise _bad_request(f"{model} does not support aspectRatio {aspect_ratio!r}")
    modalities = _field(config, "responseModalities")
    # Image models default to TEXT+IMAGE; only an explicit list without IMAGE turns it off.
    wants_image = not isinstance(modalities, list) or any(
        str(m).upper() == "IMAGE" for m in modalities
    )
    thinking = _field(config, "thinkingConfig") or {}
    level = str(_field(thinking, "thinkingLevel") or "") if isinstance(thinking, dict) else ""
    if level and level.upper() not in spec.thinking_levels:
        raise _bad_request(
            f"{model} does not support thinkingLevel {level!r}"
            + (f" (it takes {', '.join(spec.thinking_levels)})" if spec.thinking_levels else "")
        )
    return _GenerateRequest(
        prompt="\n".join(texts),
        reference_images=references,
        generation_config=config,
        seed=seed,
        aspect_ratio=aspect_ratio,
        image_size=image_size,
        wants_image=wants_image,
        thinking_level=level.upper(),
        spec=spec,
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
        lane = item.get("lane", "any")
        if lane not in _LANES:
            raise _bad_request(f"rules[{i}].lane must be one of {list(_LANES)}")
        rules.append(_Rule(pattern, mode, times, float(timeout_s), lane))
    return rules


# --------------------------------------------------------------------------- responses


def _usage(
    req: _GenerateRequest, image_tokens: int, text_tokens: int, thoughts: int = 0
) -> JsonDict:
    """usageMetadata as Gemini reports it: prompt and output tokens by modality."""
    prompt_text = max(1, len(req.prompt) // 4)
    prompt_details: list[JsonDict] = [{"modality": "TEXT", "tokenCount": prompt_text}]
    reference_tokens = req.spec.reference_tokens * len(req.reference_images)
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
            req.spec.image_tokens.get(req.image_size, IMAGE_TOKENS[DEFAULT_IMAGE_SIZE]),
            0 if mode == "image_only" else max(1, len(text_part["text"]) // 4),
            thoughts,
        ),
    ), valid_image


# --------------------------------------------------------------------------- files and batches

# The google.rpc.Code number for an HTTP code: what a batch line's error and a failed
# batch's Operation.error carry (google.rpc.Status has a number, no status name).
_RPC_CODES: Final[dict[int, int]] = {
    400: 3,  # INVALID_ARGUMENT
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 5,  # NOT_FOUND
    409: 10,  # ABORTED
    429: 8,  # RESOURCE_EXHAUSTED
    499: 1,  # CANCELLED
    500: 13,  # INTERNAL
    501: 12,  # UNIMPLEMENTED
    503: 14,  # UNAVAILABLE
    504: 4,  # DEADLINE_EXCEEDED
}
_BATCH_STATES: Final = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED")
_ENDED: Final = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"})
_BATCH_TYPE: Final = "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch"
_OUTPUT_TYPE: Final = (
    "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatchOutput"
)
# Google's limit on a batchGenerateContent body with inline requests.
_MAX_INLINE_BATCH_BYTES: Final = 20 * 1024 * 1024
# Files expire 48 h after upload at Google; the stub only reports the time.
_FILE_TTL_S: Final = 48 * 3600.0
# Upload sessions never finalized would pin their bytes; the oldest are dropped.
_MAX_OPEN_UPLOADS: Final = 32
# How long a batches.get/list/cancel waits for results being made: long enough that a
# small batch due at once reads SUCCEEDED the first time, short of any client's timeout
# (a big one reads RUNNING meanwhile, as at Google).
_RESULTS_WAIT_S: Final = 10.0
_FILE_ID_RE: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
_DEFAULT_PAGE_SIZE: Final = 50
_MAX_PAGE_SIZE: Final = 1000
_STORE_COUNTERS: Final = (
    "files_uploaded",
    "file_bytes_uploaded",
    "file_gets",
    "file_lists",
    "file_downloads",
    "file_deletes",
    "batch_creations",
    "batch_gets",
    "batch_lists",
    "batch_cancels",
    "batch_deletes",
    "batch_lines",
    "batch_line_errors",
    "batch_generated",
)


def _rpc_status(http_code: int, message: str) -> JsonDict:
    """A google.rpc.Status as batch results carry it: ``{"code": <rpc code>, "message"}``."""
    return {"code": _RPC_CODES.get(http_code, 2), "message": message}  # 2: UNKNOWN


def _rfc3339(wall: float) -> str:
    moment = datetime.datetime.fromtimestamp(wall, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _new_id(length: int) -> str:
    # Lowercase alphanumerics: google-genai reads a file id out of a URI as [a-z0-9]+.
    return uuid.uuid4().hex[:length]


@dataclass
class _StoredFile:
    file_id: str
    mime_type: str
    data: bytes
    source: str  # UPLOADED (files.upload) or GENERATED (a batch's results)
    api_version: str
    created: float  # wall clock
    display_name: str | None = None

    def to_json(self, base_url: str) -> JsonDict:
        """The File resource as files.get and the upload's finalize answer it."""
        version = self.api_version or "v1beta"
        doc: JsonDict = {
            "name": f"files/{self.file_id}",
            "mimeType": self.mime_type,
            "sizeBytes": str(len(self.data)),  # int64 travels as a JSON string
            "createTime": _rfc3339(self.created),
            "updateTime": _rfc3339(self.created),
            "expirationTime": _rfc3339(self.created + _FILE_TTL_S),
            "sha256Hash": base64.b64encode(hashlib.sha256(self.data).digest()).decode(),
            "uri": f"{base_url}/{version}/files/{self.file_id}",
            "state": "ACTIVE",
            "source": self.source,
        }
        if self.display_name:
            doc["displayName"] = self.display_name
        if self.source == "GENERATED":
            doc["downloadUri"] = f"{base_url}/{version}/files/{self.file_id}:download?alt=media"
        return doc


@dataclass
class _Upload:
    """A resumable upload between its start request and its finalize."""

    upload_id: str
    file_id: str
    mime_type: str
    size: int
    api_version: str
    display_name: str | None
    received: bytearray = field(default_factory=bytearray)


@dataclass
class _BatchLine:
    """One request of a batch: a JSONL line (``key``) or an inline request (``metadata``)."""

    request: _GenerateRequest | None
    # Why the line cannot run (bad JSON, no text...): it ends as a per-line error.
    problem: ApiError | None = None
    key: Any = None
    metadata: JsonDict | None = None
    raw_config: JsonDict | None = None


@dataclass
class _LineOutcome:
    response: JsonDict | None = None
    error: JsonDict | None = None
    generated: bool = False


@dataclass
class _Batch:
    batch_id: str
    model: str
    api_version: str
    display_name: str | None
    input_file: str | None  # "files/ID" for a file-sourced batch, None for inline requests
    lines: list[_BatchLine]
    pending_s: float
    running_s: float
    expire_s: float
    created_mono: float
    created_wall: float
    # A state set over the control plane (or by cancel/expiry), and since when.
    # PENDING/RUNNING hold until the batch is re-timed; SUCCEEDED ends it once its
    # results are made.
    forced: str | None = None
    forced_mono: float = 0.0
    error: JsonDict | None = None  # Operation.error of a FAILED batch
    output: JsonDict | None = None  # GenerateContentBatchOutput once SUCCEEDED
    finished_mono: float = 0.0
    outcomes: list[_LineOutcome] = field(default_factory=list)
    # Set by the worker thread making the results once it is done; None while no
    # worker is on it, so that the results are made once.
    making: threading.Event | None = None

    @property
    def name(self) -> str:
        return f"batches/{self.batch_id}"

    def wall(self, mono: float) -> float:
        return self.created_wall + (mono - self.created_mono)

    def advance(self, now: float) -> bool:
        """Apply expiry; True when the results are due and not produced yet."""
        if self.output is not None:
            return False
        if self.forced == "SUCCEEDED":
            return True
        if self.forced is not None:
            return False
        elapsed = now - self.created_mono
        due_after = self.pending_s + self.running_s
        if self.expire_s < due_after and elapsed >= self.expire_s:
            self.forced, self.forced_mono = "EXPIRED", self.created_mono + self.expire_s
            return False
        return elapsed >= due_after

    def state(self, now: float) -> tuple[str, float]:
        """The state a client sees now, and since when (monotonic)."""
        if self.output is not None:
            return "SUCCEEDED", self.finished_mono
        if self.forced == "SUCCEEDED":
            return "RUNNING", self.forced_mono  # until its lines have run
        if self.forced is not None:
            return self.forced, self.forced_mono
        if now - self.created_mono < self.pending_s:
            return "PENDING", self.created_mono
        return "RUNNING", self.created_mono + self.pending_s

    def operation(self, now: float) -> JsonDict:
        """The batch as batches.get answers it: a long-running Operation."""
        state, since = self.state(now)
        stats: JsonDict = {"requestCount": str(len(self.lines))}
        # Proto3 JSON leaves zero counts out.
        if self.output is not None:
            failed = sum(1 for o in self.outcomes if o.error is not None)
            if len(self.outcomes) - failed:
                stats["successfulRequestCount"] = str(len(self.outcomes) - failed)
            if failed:
                stats["failedRequestCount"] = str(failed)
        elif state not in _ENDED and self.lines:
            stats["pendingRequestCount"] = str(len(self.lines))
        metadata: JsonDict = {
            "@type": _BATCH_TYPE,
            "model": f"models/{self.model}",
            "name": self.name,
            "createTime": _rfc3339(self.created_wall),
            "updateTime": _rfc3339(self.wall(since)),
            "batchStats": stats,
            "state": f"BATCH_STATE_{state}",
        }
        if self.display_name:
            metadata["displayName"] = self.display_name
        if self.input_file:
            metadata["inputConfig"] = {"fileName": self.input_file}
        operation: JsonDict = {"name": self.name, "metadata": metadata}
        if state in _ENDED:
            metadata["endTime"] = _rfc3339(self.wall(since))
            operation["done"] = True
        if self.output is not None:
            metadata["output"] = self.output
            operation["response"] = {"@type": _OUTPUT_TYPE, **self.output}
        if state == "FAILED" and self.error:
            operation["error"] = self.error
        return operation

    def control_view(self, now: float) -> JsonDict:
        """What /_stub/batches shows: timing, holds and what each line asked for."""
        state, _ = self.state(now)
        lines = []
        for i, line in enumerate(self.lines):
            outcome = self.outcomes[i] if i < len(self.outcomes) else None
            lines.append(
                {
                    "key": line.key,
                    "metadata": line.metadata,
                    "prompt": line.request.prompt if line.request else None,
                    "generationConfig": line.raw_config,
                    "reference_images": line.request.reference_images if line.request else [],
                    "problem": line.problem.message if line.problem else None,
                    "outcome": None
                    if outcome is None
                    else ("error" if outcome.error is not None else "response"),
                }
            )
        return {
            "name": self.name,
            "model": self.model,
            "display_name": self.display_name,
            "state": state,
            "input_file": self.input_file,
            "pending_s": self.pending_s,
            "running_s": self.running_s,
            "expire_s": self.expire_s,
            "forced": self.forced,
            "output": self.output,
            "lines": lines,
        }


def _parse_line(number: int, raw: bytes, model: str = "") -> _BatchLine:
    """One JSONL line ``{"key": ..., "request": {...}}``; defects become per-line errors."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _BatchLine(None, _bad_request(f"Invalid JSON on line {number}: {exc}"))
    if not isinstance(doc, dict):
        return _BatchLine(None, _bad_request(f"Line {number} is not a JSON object."))
    return _batch_line(doc.get("request"), key=doc.get("key"), model=model)


def _batch_line(
    request: Any, key: Any = None, metadata: JsonDict | None = None, model: str = ""
) -> _BatchLine:
    config = _field(request, "generationConfig") if isinstance(request, dict) else None
    try:
        parsed = _parse_request(request, model)
    except ApiError as exc:
        return _BatchLine(None, exc, key, metadata, config if isinstance(config, dict) else None)
    return _BatchLine(parsed, None, key, metadata, parsed.generation_config)


def _result_line(line: _BatchLine, outcome: _LineOutcome) -> JsonDict:
    """A responses-file line: the input line's key with its response or error."""
    doc: JsonDict = {} if line.key is None else {"key": line.key}
    if outcome.error is not None:
        doc["error"] = outcome.error
    else:
        doc["response"] = outcome.response
    return doc


def _page(items: list[Any], query: dict[str, list[str]]) -> tuple[list[Any], str | None]:
    """One page of a list call; the token is the offset of the next page."""
    try:
        size = int((query.get("pageSize") or [str(_DEFAULT_PAGE_SIZE)])[0])
        start = int((query.get("pageToken") or ["0"])[0] or 0)
    except ValueError:
        raise _bad_request("Invalid pageSize or pageToken.") from None
    if size <= 0:
        size = _DEFAULT_PAGE_SIZE
    size = min(size, _MAX_PAGE_SIZE)
    if start < 0:
        raise _bad_request("Invalid pageToken.")
    end = start + size
    return items[start:end], (str(end) if end < len(items) else None)


class _Store:
    """Files, upload sessions and batches in memory, with their counters.

    ``answer`` runs one batch line through the generateContent logic; a worker thread
    calls it without ``lock`` held, since rendering images takes a while.
    """

    def __init__(
        self, answer: Callable[[str, _BatchLine], _LineOutcome], stopping: threading.Event
    ) -> None:
        self.lock = threading.Lock()
        self._answer = answer
        self._stopping = stopping
        self.files: dict[str, _StoredFile] = {}
        self.uploads: dict[str, _Upload] = {}
        self.batches: dict[str, _Batch] = {}  # in creation order
        self.counts: dict[str, int] = dict.fromkeys(_STORE_COUNTERS, 0)
        self.creations_by_model: dict[str, int] = {}
        self.by_prompt: dict[str, _PromptStats] = {}

    def reset(self) -> None:
        with self.lock:
            self.files.clear()
            self.uploads.clear()
            self.batches.clear()
            self.counts = dict.fromkeys(_STORE_COUNTERS, 0)
            self.creations_by_model = {}
            self.by_prompt = {}

    def stats(self) -> JsonDict:
        with self.lock:
            return {
                **self.counts,
                "batch_creations_by_model": dict(self.creations_by_model),
                "batch_by_prompt": {
                    prompt: {"lines": s.requests, "generated": s.generated}
                    for prompt, s in self.by_prompt.items()
                },
            }

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    # -- files

    def start_upload(
        self, api_version: str, meta: Any, size: int, mime_type: str, limit: int
    ) -> _Upload:
        if size < 0:
            raise _bad_request("X-Goog-Upload-Header-Content-Length must not be negative.")
        if size > limit:
            raise _bad_request(f"File size {size} exceeds the maximum of {limit} bytes.")
        meta = meta if isinstance(meta, dict) else {}
        name = _field(meta, "name")
        display_name = _field(meta, "displayName")
        file_id = _new_id(12)
        if name:
            file_id = str(name).removeprefix("files/")
            if not _FILE_ID_RE.match(file_id):
                raise _bad_request(
                    f"Invalid file name {name!r}: up to 40 lowercase letters, digits or "
                    "dashes, not starting or ending with a dash."
                )
        upload = _Upload(
            _new_id(24),
            file_id,
            mime_type,
            size,
            api_version,
            str(display_name) if display_name else None,
        )
        with self.lock:
            if file_id in self.files or any(u.file_id == file_id for u in self.uploads.values()):
                raise ApiError(
                    409, f"File files/{file_id} already exists.", status="ALREADY_EXISTS"
                )
            self.uploads[upload.upload_id] = upload
            while len(self.uploads) > _MAX_OPEN_UPLOADS:
                del self.uploads[next(iter(self.uploads))]
        return upload

    def upload_chunk(
        self, upload_id: str, commands: set[str], offset: int | None, chunk: bytes
    ) -> tuple[_Upload, _StoredFile | None]:
        """Apply an upload / finalize / query command; the file once finalized."""
        with self.lock:
            upload = self.uploads.get(upload_id)
            if upload is None:
                raise ApiError(404, "No upload session with this upload_id.")
            if "query" in commands:
                return upload, None
            if "upload" in commands:
                if offset != len(upload.received):
                    raise _bad_request(
                        f"X-Goog-Upload-Offset {offset} does not match the "
                        f"{len(upload.received)} bytes received."
                    )
                if len(upload.received) + len(chunk) > upload.size:
                    del self.uploads[upload_id]
                    raise _bad_request("More bytes than X-Goog-Upload-Header-Content-Length.")
                upload.received += chunk
            if "finalize" not in commands:
                return upload, None
            if len(upload.received) != upload.size:
                del self.uploads[upload_id]
                raise _bad_request(
                    f"Upload finalized after {len(upload.received)} of {upload.size} bytes."
                )
            del self.uploads[upload_id]
            stored = _StoredFile(
                upload.file_id,
                upload.mime_type,
                bytes(upload.received),
                "UPLOADED",
                upload.api_version,
                time.time(),
                upload.display_name,
            )
            self.files[stored.file_id] = stored
            self.counts["files_uploaded"] += 1
            self.counts["file_bytes_uploaded"] += upload.size
            return upload, stored

    def file(self, file_id: str) -> _StoredFile:
        with self.lock:
            stored = self.files.get(file_id)
        if stored is None:
            # Google answers 403, not 404, for a file that is not there.
            raise ApiError(
                403,
                f"You do not have permission to access the File {file_id} or it may not exist.",
            )
        return stored

    def delete_file(self, file_id: str) -> None:
        self.file(file_id)
        with self.lock:
            self.files.pop(file_id, None)
            self.counts["file_deletes"] += 1

    # -- batches

    def create_batch(self, batch: _Batch) -> JsonDict:
        with self.lock:
            self.batches[batch.batch_id] = batch
            self.counts["batch_creations"] += 1
            self.creations_by_model[batch.model] = self.creations_by_model.get(batch.model, 0) + 1
            return batch.operation(batch.created_mono)

    def batch(self, batch_id: str) -> _Batch:
        with self.lock:
            batch = self.batches.get(batch_id)
        if batch is None:
            raise ApiError(404, "Requested entity was not found.")
        return batch

    def settle(self, batches: Sequence[_Batch], wait: bool) -> None:
        """Bring batches up to date: expire them, or start making results that are due.

        With ``wait`` (the API's reads), results being made get up to
        ``_RESULTS_WAIT_S`` to land; the control plane passes False and never waits.
        """
        making = [done for batch in batches if (done := self._start_making(batch)) is not None]
        if wait:
            deadline = time.monotonic() + _RESULTS_WAIT_S
            for done in making:
                done.wait(max(0.0, deadline - time.monotonic()))

    def _start_making(self, batch: _Batch) -> threading.Event | None:
        """Apply expiry and, once the results are due, have a worker thread make them.

        Returns the event the worker sets when done (None if none is on it).  No
        request makes results itself: 36 4K images take long enough on a small
        machine to time out whoever happened to ask first (e.g. a control call).
        """
        with self.lock:
            if batch.making is None and batch.advance(time.monotonic()):
                batch.making = threading.Event()
                threading.Thread(
                    target=self._make,
                    args=(batch, batch.making),
                    name=f"make-{batch.name}",
                    daemon=True,  # must not keep a stopping stub alive
                ).start()
            return batch.making

    def _make(self, batch: _Batch, done: threading.Event) -> None:
        """Run a due batch's lines and commit the results (on a worker thread)."""
        try:
            outcomes = []
            for line in batch.lines:
                if self._stopping.is_set():
                    return  # the server is closing; nobody will read them
                outcomes.append(self._answer(batch.model, line))
            results = None
            if batch.input_file is not None:
                results = b"".join(
                    json.dumps(_result_line(line, o), separators=(",", ":")).encode() + b"\n"
                    for line, o in zip(batch.lines, outcomes, strict=True)
                )
            with self.lock:
                # Whatever came in meanwhile wins: a cancel, forced end, re-time or delete.
                if self.batches.get(batch.batch_id) is batch and batch.advance(time.monotonic()):
                    self._commit(batch, outcomes, results)
        except Exception as exc:  # a stub bug must fail the batch, not leave it RUNNING
            log.exception("making the results of %s failed", batch.name)
            with self.lock:
                if batch.output is None and batch.forced in (None, "SUCCEEDED"):
                    batch.forced, batch.forced_mono = "FAILED", time.monotonic()
                    batch.error = _rpc_status(500, f"The stub could not make the results: {exc}")
        finally:
            with self.lock:
                batch.making = None
            done.set()

    def _commit(self, batch: _Batch, outcomes: list[_LineOutcome], results: bytes | None) -> None:
        batch.outcomes = outcomes
        batch.finished_mono = time.monotonic()
        if results is not None:
            stored = _StoredFile(
                _new_id(12),
                "application/jsonl",
                results,
                "GENERATED",
                batch.api_version,
                batch.wall(batch.finished_mono),
            )
            self.files[stored.file_id] = stored
            batch.output = {"responsesFile": f"files/{stored.file_id}"}
        else:
            inlined = []
            for line, outcome in zip(batch.lines, outcomes, strict=True):
                item: JsonDict = (
                    {"error": outcome.error}
                    if outcome.error is not None
                    else {"response": outcome.response}
                )
                if line.metadata is not None:
                    item["metadata"] = line.metadata
                inlined.append(item)
            batch.output = {"inlinedResponses": {"inlinedResponses": inlined}}
        for line, outcome in zip(batch.lines, outcomes, strict=True):
            self.counts["batch_lines"] += 1
            if outcome.error is not None:
                self.counts["batch_line_errors"] += 1
            if outcome.generated:
                self.counts["batch_generated"] += 1
            if line.request is not None:
                entry = self.by_prompt.setdefault(line.request.prompt, _PromptStats())
                entry.requests += 1
                entry.generated += int(outcome.generated)

    def get_operation(self, batch_id: str, counter: str | None = "batch_gets") -> JsonDict:
        batch = self.batch(batch_id)
        self.settle([batch], wait=True)
        with self.lock:
            if counter:
                self.counts[counter] += 1
            return batch.operation(time.monotonic())

    def list_operations(self, query: dict[str, list[str]]) -> JsonDict:
        with self.lock:
            newest_first = list(reversed(self.batches.values()))
        page, token = _page(newest_first, query)
        self.settle(page, wait=True)
        with self.lock:
            self.counts["batch_lists"] += 1
            now = time.monotonic()
            answer: JsonDict = {"operations": [b.operation(now) for b in page]}
        if token:
            answer["nextPageToken"] = token
        return answer

    def cancel(self, batch_id: str) -> None:
        batch = self.batch(batch_id)
        self.settle([batch], wait=True)
        with self.lock:
            now = time.monotonic()
            state, _ = batch.state(now)
            if state in _ENDED:
                raise ApiError(
                    400,
                    f"Batch {batch.name} is already {state} and cannot be cancelled.",
                    status="FAILED_PRECONDITION",
                )
            batch.forced, batch.forced_mono = "CANCELLED", now
            self.counts["batch_cancels"] += 1

    def delete_batch(self, batch_id: str) -> None:
        self.batch(batch_id)
        with self.lock:
            self.batches.pop(batch_id, None)
            self.counts["batch_deletes"] += 1

    def control(self, batch_id: str, doc: Any) -> JsonDict:
        """Re-time a batch, hold it in a state, or end it (``POST /_stub/batches/{id}``)."""
        if not isinstance(doc, dict):
            raise _bad_request("expected a JSON object")
        timing = {}
        for name in ("pending_s", "running_s", "expire_s"):
            if name in doc:
                value = doc[name]
                if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                    raise _bad_request(f"{name} must be a non-negative number")
                timing[name] = float(value)
        state = doc.get("state")
        if state is not None:
            state = str(state).upper().removeprefix("JOB_STATE_").removeprefix("BATCH_STATE_")
            if state not in _BATCH_STATES:
                raise _bad_request(f"state must be one of {list(_BATCH_STATES)}")
        error = doc.get("error")
        if error is not None and not (
            isinstance(error, dict)
            and isinstance(error.get("code", 13), int)
            and isinstance(error.get("message", ""), str)
        ):
            raise _bad_request('error must be {"code": <google.rpc.Code>, "message": str}')
        batch = self.batch(batch_id)
        self.settle([batch], wait=False)
        with self.lock:
            now = time.monotonic()
            current, _ = batch.state(now)
            if current in _ENDED and (timing or state):
                raise ApiError(
                    400,
                    f"Batch {batch.name} already ended ({current}).",
                    status="FAILED_PRECONDITION",
                )
            for name, value in timing.items():
                setattr(batch, name, value)
            if timing and batch.forced in ("PENDING", "RUNNING"):
                batch.forced = None  # re-timing releases a hold
            if state is not None:
                batch.forced, batch.forced_mono = state, now
                if state == "FAILED":
                    batch.error = {
                        "code": (error or {}).get("code", 13),
                        "message": (error or {}).get("message", "Internal error encountered."),
                    }
        # A forced SUCCEEDED (or a re-time to now) starts making its results; the
        # answer shows RUNNING until they are in.
        self.settle([batch], wait=False)
        with self.lock:
            return batch.control_view(time.monotonic())

    def control_views(self) -> list[JsonDict]:
        with self.lock:
            batches = list(self.batches.values())
        self.settle(batches, wait=False)
        with self.lock:
            now = time.monotonic()
            return [b.control_view(now) for b in batches]


# --------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's pooled client expects
    server_version = "GeminiStub/1.0"
    timeout = 300  # reap idle keep-alive connections eventually
    server: GeminiStubServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # -- plumbing

    def _send(
        self, code: int, payload: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> bool:
        """Send an answer; False if the client had already gone."""
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its own timeout while we slept); nothing to do.
            self.close_connection = True
            return False
        return True

    def _send_json(self, code: int, doc: JsonDict, headers: dict[str, str] | None = None) -> bool:
        """Send a JSON answer; False if the client had already gone."""
        payload = json.dumps(doc, separators=(",", ":")).encode()
        return self._send(code, payload, "application/json; charset=UTF-8", headers)

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
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = parse_qs(split.query)
        state = self.server.state
        try:
            self._read_body()
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
            elif path == "/_stub/batch-config":
                self._send_json(200, self._batch_config_json())
            elif path == "/_stub/requests":
                with state.lock:
                    logged = list(state.request_log)
                self._send_json(200, {"requests": logged})
            elif path == "/_stub/batches":
                self._send_json(200, {"batches": state.store.control_views()})
            elif (match := _STUB_BATCH_PATH.match(path)) is not None:
                self._send_json(200, state.store.control(match["id"], {}))
            elif (match := _MODEL_PATH.match(path)) is not None:
                self._authorize(match, query)
                self._send_json(200, self._model(match["version"] or "", match["model"]))
            elif not self._files_and_batches("GET", path, query, b""):
                raise ApiError(404, f"Not found: GET {path}")
        except ApiError as exc:
            self._send_json(exc.code, exc.body())

    def do_POST(self) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = parse_qs(split.query)
        try:
            body = self._read_body()
            match = _GENERATE_PATH.match(path)
            if match:
                self._generate(match, query, body)
            elif path == "/_stub/script":
                rules = _parse_rules(self._json_body(body))
                with self.server.state.lock:
                    self.server.state.rules = rules
                self._send_json(200, {"ok": True, "rules": len(rules)})
            elif path == "/_stub/config":
                self._update_config(self._json_body(body))
                self._send_json(200, self._config_json())
            elif path == "/_stub/batch-config":
                self._update_batch_config(self._json_body(body))
                self._send_json(200, self._batch_config_json())
            elif (stub_batch := _STUB_BATCH_PATH.match(path)) is not None:
                view = self.server.state.store.control(stub_batch["id"], self._json_body(body))
                self._send_json(200, view)
            elif path == "/_stub/reset":
                self.server.state.reset()
                self._send_json(200, {"ok": True})
            elif path == "/_stub/quota/reset-day":
                with self.server.state.lock:
                    self.server.state.day_count = 0
                self._send_json(200, {"ok": True})
            elif not self._files_and_batches("POST", path, query, body):
                raise ApiError(404, f"Not found: POST {path}")
        except ApiError as exc:
            self._send_json(exc.code, exc.body())

    def do_DELETE(self) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        try:
            self._read_body()
            if not self._files_and_batches("DELETE", path, parse_qs(split.query), b""):
                raise ApiError(404, f"Not found: DELETE {path}")
        except ApiError as exc:
            self._send_json(exc.code, exc.body())

    def _files_and_batches(
        self, method: str, path: str, query: dict[str, list[str]], body: bytes
    ) -> bool:
        """Serve a Files API or Batch API call; False if the path is neither's."""
        store = self.server.state.store
        if method == "POST" and (match := _UPLOAD_PATH.match(path)) is not None:
            if "upload_id" in query:
                # The upload URL is the session's capability: no API key on chunks.
                self._upload_chunk(query["upload_id"][0], body)
            else:
                self._check_key(query)
                self._start_upload(match["version"] or "", body)
        elif method == "POST" and (match := _BATCH_CREATE_PATH.match(path)) is not None:
            self._check_key(query)
            self._create_batch(match["version"] or "", match["model"], body)
        elif method == "GET" and _BATCHES_PATH.match(path) is not None:
            self._check_key(query)
            self._send_json(200, store.list_operations(query))
        elif (match := _BATCH_PATH.match(path)) is not None:
            call = (method, bool(match["cancel"]))
            if call not in (("GET", False), ("POST", True), ("DELETE", False)):
                return False
            self._check_key(query)
            if call == ("GET", False):
                self._send_json(200, store.get_operation(match["id"]))
            elif call == ("POST", True):
                store.cancel(match["id"])
                self._send_json(200, {})
            else:
                store.delete_batch(match["id"])
                self._send_json(200, {})
        elif method == "GET" and _FILES_PATH.match(path) is not None:
            self._check_key(query)
            self._list_files(query)
        elif (match := _FILE_PATH.match(path)) is not None:
            call = (method, bool(match["download"]))
            if call not in (("GET", False), ("GET", True), ("DELETE", False)):
                return False
            self._check_key(query)
            if call == ("GET", False):
                stored = store.file(match["id"])
                store.count("file_gets")
                self._send_json(200, stored.to_json(self.server.url))
            elif call == ("GET", True):
                self._download(match["id"], query)
            else:
                store.delete_file(match["id"])
                self._send_json(200, {})
        else:
            return False
        return True

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

    def _batch_config_json(self) -> JsonDict:
        config = self.server.state.config
        with self.server.state.lock:
            return {
                "pending_s": config.batch_pending_s,
                "running_s": config.batch_running_s,
                "expire_s": config.batch_expire_s,
                "max_file_bytes": config.max_file_bytes,
                "download_bytes_per_s": config.download_bytes_per_s,
                "max_inline_batch_bytes": _MAX_INLINE_BATCH_BYTES,
            }

    def _update_batch_config(self, doc: Any) -> None:
        if not isinstance(doc, dict):
            raise _bad_request("batch config must be a JSON object")
        timing: dict[str, float] = {}
        for name in ("pending_s", "running_s", "expire_s", "download_bytes_per_s"):
            if name in doc:
                value = doc[name]
                if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                    raise _bad_request(f"{name} must be a non-negative number")
                timing[name] = float(value)
        config = self.server.state.config
        limit = doc.get("max_file_bytes", config.max_file_bytes)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            raise _bad_request("max_file_bytes must be a positive integer")
        with self.server.state.lock:
            for name, value in timing.items():
                setattr(config, name if name.startswith("download") else f"batch_{name}", value)
            config.max_file_bytes = limit

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
            req = _parse_generate(body, model)
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

    # -- Files API and Batch API

    def _start_upload(self, version: str, body: bytes) -> None:
        """The resumable upload's start request: answer the session's upload URL."""
        protocol = (self.headers.get("X-Goog-Upload-Protocol") or "").lower()
        command = (self.headers.get("X-Goog-Upload-Command") or "").lower()
        if protocol != "resumable" or command != "start":
            raise _bad_request("Expected X-Goog-Upload-Protocol: resumable and Command: start.")
        try:
            size = int(self.headers.get("X-Goog-Upload-Header-Content-Length") or "")
        except ValueError:
            raise _bad_request("X-Goog-Upload-Header-Content-Length must be set.") from None
        doc = self._json_body(body)
        meta = doc.get("file") if isinstance(doc, dict) else None
        mime_type = self.headers.get("X-Goog-Upload-Header-Content-Type") or (
            _field(meta, "mimeType") if isinstance(meta, dict) else None
        )
        if not mime_type:
            raise _bad_request("The file's MIME type must be set.")
        with self.server.state.lock:
            limit = self.server.state.config.max_file_bytes
        upload = self.server.state.store.start_upload(version, meta, size, str(mime_type), limit)
        prefix = f"{version}/" if version else ""
        url = (
            f"{self.server.url}/upload/{prefix}files?upload_id={upload.upload_id}"
            "&upload_protocol=resumable"
        )
        self._send(
            200,
            b"",
            "text/plain; charset=utf-8",
            {"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"},
        )

    def _upload_chunk(self, upload_id: str, body: bytes) -> None:
        commands = {
            c.strip().lower()
            for c in (self.headers.get("X-Goog-Upload-Command") or "").split(",")
            if c.strip()
        }
        try:
            if not commands or commands - {"upload", "finalize", "query"}:
                raise _bad_request("X-Goog-Upload-Command must be upload, finalize or query.")
            offset_header = self.headers.get("X-Goog-Upload-Offset")
            try:
                offset = None if offset_header is None else int(offset_header)
            except ValueError:
                raise _bad_request("X-Goog-Upload-Offset must be an integer.") from None
            upload, stored = self.server.state.store.upload_chunk(upload_id, commands, offset, body)
        except ApiError as exc:
            # "final" ends the session for the SDK; without an upload status header
            # it would retry the chunk blindly (with sleeps) before failing anyway.
            self._send_json(exc.code, exc.body(), {"X-Goog-Upload-Status": "final"})
            return
        received = {"X-Goog-Upload-Size-Received": str(len(upload.received))}
        if stored is None:
            self._send(
                200,
                b"",
                "text/plain; charset=utf-8",
                {"X-Goog-Upload-Status": "active", **received},
            )
            return
        log.info("files.upload %s %d bytes", stored.file_id, len(stored.data))
        self._send_json(
            200,
            {"file": stored.to_json(self.server.url)},
            {"X-Goog-Upload-Status": "final", **received},
        )

    def _list_files(self, query: dict[str, list[str]]) -> None:
        store = self.server.state.store
        with store.lock:
            newest_first = list(reversed(store.files.values()))
            store.counts["file_lists"] += 1
        page, token = _page(newest_first, query)
        answer: JsonDict = {"files": [f.to_json(self.server.url) for f in page]}
        if token:
            answer["nextPageToken"] = token
        self._send_json(200, answer)

    def _download(self, file_id: str, query: dict[str, list[str]]) -> None:
        store = self.server.state.store
        stored = store.file(file_id)
        if query.get("alt") != ["media"]:
            store.count("file_gets")
            self._send_json(200, stored.to_json(self.server.url))
            return
        if stored.source != "GENERATED":
            # google-genai documents that uploaded files cannot be downloaded.
            raise _bad_request(f"File files/{file_id} was uploaded; only generated files download.")
        store.count("file_downloads")
        rate = self.server.state.config.download_bytes_per_s
        if rate <= 0:
            self._send(200, stored.data, stored.mime_type)
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", stored.mime_type)
            self.send_header("Content-Length", str(len(stored.data)))
            self.end_headers()
            chunk = max(1, int(rate / 20))  # twenty writes a second
            for start in range(0, len(stored.data), chunk):
                self.wfile.write(stored.data[start : start + chunk])
                self.wfile.flush()
                time.sleep(chunk / rate)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _create_batch(self, version: str, model: str, body: bytes) -> None:
        """models/{model}:batchGenerateContent with a file or inline requests."""
        retired = self._retired(version, model)
        if retired is not None:
            raise retired
        doc = self._json_body(body)
        batch_doc = doc.get("batch") if isinstance(doc, dict) else None
        if not isinstance(batch_doc, dict):
            raise _bad_request("* BatchGenerateContentRequest.batch: batch is required")
        input_config = _field(batch_doc, "inputConfig")
        if not isinstance(input_config, dict):
            raise _bad_request("* GenerateContentBatch.input_config: input_config is required")
        file_name, requests_doc = _field(input_config, "fileName"), _field(input_config, "requests")
        if (file_name is None) == (requests_doc is None):
            raise _bad_request("input_config needs exactly one of file_name and requests.")
        store = self.server.state.store
        if file_name is not None:
            source = store.file(str(file_name).removeprefix("files/"))
            lines = [
                _parse_line(number, raw, model)
                for number, raw in enumerate(source.data.splitlines(), start=1)
                if raw.strip()
            ]
        else:
            if len(body) > _MAX_INLINE_BATCH_BYTES:
                raise _bad_request(
                    f"Inline batch requests exceed {_MAX_INLINE_BATCH_BYTES} bytes; "
                    "upload them as a JSONL file."
                )
            items = _field(requests_doc, "requests") if isinstance(requests_doc, dict) else None
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise _bad_request("input_config.requests.requests must be a list of objects.")
            lines = []
            for i, item in enumerate(items):
                metadata = item.get("metadata")
                if metadata is not None and not isinstance(metadata, dict):
                    raise _bad_request(f"requests[{i}].metadata must be an object.")
                lines.append(_batch_line(item.get("request"), metadata=metadata, model=model))
        if not lines:
            raise _bad_request("The batch has no requests.")
        display_name = _field(batch_doc, "displayName")
        config = self.server.state.config
        with self.server.state.lock:
            timing = (config.batch_pending_s, config.batch_running_s, config.batch_expire_s)
        batch = _Batch(
            batch_id=_new_id(20),
            model=model,
            api_version=version,
            display_name=str(display_name) if display_name else None,
            input_file=f"files/{source.file_id}" if file_name is not None else None,
            lines=lines,
            pending_s=timing[0],
            running_s=timing[1],
            expire_s=timing[2],
            created_mono=time.monotonic(),
            created_wall=time.time(),
        )
        log.info("batchGenerateContent model=%s lines=%d %s", model, len(lines), batch.name)
        self._send_json(200, store.create_batch(batch))


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
    parser.add_argument(
        "--batch-pending-s",
        type=float,
        default=StubConfig.batch_pending_s,
        help="how long a new batch stays PENDING",
    )
    parser.add_argument(
        "--batch-running-s",
        type=float,
        default=StubConfig.batch_running_s,
        help="then how long it stays RUNNING before SUCCEEDED",
    )
    parser.add_argument(
        "--batch-expire-s",
        type=float,
        default=StubConfig.batch_expire_s,
        help="a batch still unfinished this long after creation EXPIRES",
    )
    parser.add_argument(
        "--max-file-bytes",
        type=int,
        default=StubConfig.max_file_bytes,
        help="largest file the Files API takes (kept in memory)",
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
        batch_pending_s=args.batch_pending_s,
        batch_running_s=args.batch_running_s,
        batch_expire_s=args.batch_expire_s,
        max_file_bytes=args.max_file_bytes,
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
