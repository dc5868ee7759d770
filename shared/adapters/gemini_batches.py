"""BatchRunner on Gemini's Batch API and Files API through google-genai.

Requests travel inline only when both the requests and the images they will
bring back stay under ECONOMY_INLINE_MAX_BYTES: inline results come back in one
answer, all in memory. Otherwise they travel as a JSONL file (``files.upload``),
one line per variant keyed ``job_id/n``, and the results file is read line by
line as ``files.download`` streams it, so memory holds a few MB of it at a time.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Sequence
from itertools import islice
from typing import Any

import httpx2
from google.genai import errors, types

from shared.adapters.gemini import (
    QUOTA_CODE,
    RETRYABLE_CODES,
    Backend,
    gemini_client,
    image_config,
    read_image,
)
from shared.domain.economy_batches import GEMINI_STATES
from shared.domain.errors import PermanentError, TransientError
from shared.services.ports import BatchProgress, EconomyLine, LineResult

# Batches looked at when one is searched for by display name after a crash.
FIND_LIMIT = 500
# What one image may weigh in the results (PNG, before base64), by image size:
# generous, since an inline answer that is larger than planned is all in memory.
RESULT_BYTES_PER_IMAGE = {"512": 1 << 20, "1K": 3 << 20, "2K": 10 << 20, "4K": 32 << 20}
DEFAULT_RESULT_BYTES = 3 << 20
# Control calls (create, get, upload) are small: the SDK retries them briefly.
CONTROL_RETRY = types.HttpRetryOptions(
    attempts=3,
    initial_delay=1.0,
    max_delay=8.0,
    exp_base=2,
    jitter=1.0,
    http_status_codes=[408, QUOTA_CODE, *RETRYABLE_CODES],
)


def request_json(line: EconomyLine) -> dict[str, Any]:
    """One GenerateContentRequest in the REST form a JSONL batch line carries."""
    parts: list[dict[str, Any]] = [{"text": line.prompt}]
    parts += [
        {"inlineData": {"mimeType": r.mime_type, "data": base64.b64encode(r.data).decode()}}
        for r in line.references
    ]
    config: dict[str, Any] = {"responseModalities": ["IMAGE"], "seed": line.seed}
    shape = {
        key: value
        for key, value in (("aspectRatio", line.aspect_ratio), ("imageSize", line.image_size))
        if value
    }
    if shape:
        config["imageConfig"] = shape
    if line.thinking_level:
        config["thinkingConfig"] = {"thinkingLevel": line.thinking_level}
    return {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}


class _Lines(io.RawIOBase):
    """A writable stream that hands each complete JSONL line to ``each``."""

    def __init__(self, each: Callable[[bytes], None]) -> None:
        self._each = each
        self._partial = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk: Any) -> int:
        data = bytes(chunk)
        self._partial += data
        while (end := self._partial.find(b"\n")) >= 0:
            line = bytes(self._partial[:end])
            del self._partial[: end + 1]
            if line.strip():
                self._each(line)
        return len(data)

    def flush_last(self) -> None:
        if bytes(self._partial).strip():
            self._each(bytes(self._partial))
        self._partial.clear()


class GeminiBatchRunner:
    def __init__(
        self, backend: Backend, timeout_s: float, inline_max_bytes: int, max_pixels: int
    ) -> None:
        self._client = gemini_client(backend, timeout_s, CONTROL_RETRY)
        self._inline_max = inline_max_bytes
        self._max_pixels = max_pixels

    def submit(
        self, model: str, display_name: str, lines: Sequence[EconomyLine]
    ) -> tuple[str, bool]:
        # No retry of the create itself: a lost answer, retried, makes a second batch
        # (paid, never collected); the next tick finds the first by its display name.
        config = types.CreateBatchJobConfig(
            display_name=display_name,
            http_options=types.HttpOptions(retry_options=types.HttpRetryOptions(attempts=1)),
        )
        try:
            if inline_size(lines) <= self._inline_max:
                inline = [
                    types.InlinedRequest(
                        contents=[_content(line)],
                        config=image_config(
                            line.seed, line.aspect_ratio, line.image_size, line.thinking_level
                        ),
                        metadata={"key": line.key},
                    )
                    for line in lines
                ]
                batch = self._client.batches.create(model=model, src=inline, config=config)
                return _name(batch), True
            uploaded = self._client.files.upload(
                file=JsonlStream(lines),
                config=types.UploadFileConfig(
                    mime_type="application/jsonl", display_name=display_name
                ),
            )
            if not uploaded.name:
                raise TransientError("the Files API answered without a file name")
            batch = self._client.batches.create(model=model, src=uploaded.name, config=config)
            return _name(batch), False
        except CALL_ERRORS as exc:
            raise _translated("batch create", exc) from exc

    def find(self, display_name: str) -> str | None:
        try:
            pager = self._client.batches.list(config=types.ListBatchJobsConfig(page_size=100))
            for batch in islice(pager, FIND_LIMIT):
                if batch.display_name == display_name and batch.name:
                    return batch.name
        except CALL_ERRORS as exc:
            raise _translated("batch list", exc) from exc
        return None

    def cancel(self, name: str) -> None:
        try:
            self._client.batches.cancel(name=name)
        except CALL_ERRORS as exc:
            raise _translated("batch cancel", exc) from exc

    def progress(self, name: str) -> BatchProgress:
        try:
            batch = self._client.batches.get(name=name)
        except CALL_ERRORS as exc:
            raise _translated("batch get", exc) from exc
        state = GEMINI_STATES.get(str(getattr(batch.state, "value", batch.state)), "pending")
        error = batch.error.message if batch.error and batch.error.message else None
        return BatchProgress(state=state, error=error)

    def results(self, name: str, each: Callable[[LineResult], None]) -> None:
        try:
            self._results(name, each)
        except CALL_ERRORS as exc:
            raise _translated("batch results", exc) from exc

    def _results(self, name: str, each: Callable[[LineResult], None]) -> None:
        batch = self._client.batches.get(name=name)
        dest = batch.dest
        if dest is None:
            raise TransientError(f"batch {name} has no results yet")
        if dest.inlined_responses:
            for position, item in enumerate(dest.inlined_responses):
                key = str((item.metadata or {}).get("key", position))
                if item.error is not None:
                    each(LineResult(key, error=_line_error(item.error.code, item.error.message)))
                else:
                    each(self._line(key, item.response))
            return
        if not dest.file_name:
            raise TransientError(f"batch {name} names no results file")
        lines = _Lines(lambda raw: each(self._parse(raw)))
        self._client.files.download(file=dest.file_name, destination=lines)
        lines.flush_last()

    def _parse(self, raw: bytes) -> LineResult:
        try:
            doc = json.loads(raw)
        except ValueError:
            return LineResult("", error="a results line is not JSON")
        key = str(doc.get("key", "")) if isinstance(doc, dict) else ""
        if not isinstance(doc, dict):
            return LineResult(key, error="a results line is not a JSON object")
        if doc.get("error"):
            error = doc["error"] if isinstance(doc["error"], dict) else {}
            return LineResult(key, error=_line_error(error.get("code"), error.get("message")))
        try:
            response = types.GenerateContentResponse._from_response(
                response=doc.get("response") or {}, kwargs={}
            )
        except ValueError as exc:  # pydantic's ValidationError, broken base64 included
            return LineResult(key, error=f"Gemini returned malformed data: {exc}"[:300])
        return self._line(key, response)

    def _line(self, key: str, response: types.GenerateContentResponse | None) -> LineResult:
        if response is None:
            return LineResult(key, error="the batch line has no answer")
        try:
            return LineResult(key, image=read_image(response, self._max_pixels))
        except PermanentError as exc:
            return LineResult(key, error=str(exc))


def jsonl_line(line: EconomyLine) -> bytes:
    """One line of the batch's request file: its key and its request, base64 inline."""
    return (json.dumps({"key": line.key, "request": request_json(line)}) + "\n").encode()


class JsonlStream(io.RawIOBase):
    """The batch's request file, read as it is made: one line's JSON (its references
    in base64) at a time, so the file is never whole in memory (on Cloud Functions
    even /tmp is memory). Its size is measured first, by making each line once and
    dropping it; the SDK's resumable upload asks for it (seek to the end) before it
    reads from the start."""

    def __init__(self, lines: Sequence[EconomyLine]) -> None:
        super().__init__()
        self._lines = lines
        self._size = sum(len(jsonl_line(line)) for line in lines)
        self._rewind(0)

    def _rewind(self, position: int) -> None:
        self._next = iter(self._lines)
        self._buffer = b""
        self._position = 0
        self._skip(position)

    def _skip(self, count: int) -> None:
        while count > 0:
            chunk = self.read(min(count, 1 << 20))
            if not chunk:
                return
            count -= len(chunk)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self._position + offset}.get(
            whence, self._size + offset
        )
        if target >= self._size:
            # Only the SDK's size probe goes to the end; nothing is read there.
            self._next, self._buffer, self._position = iter(()), b"", target
        elif target != self._position:
            self._rewind(target)
        return self._position

    def readinto(self, out: Any) -> int:
        view = memoryview(out).cast("B")
        while len(self._buffer) < len(view):
            line = next(self._next, None)
            if line is None:
                break
            self._buffer += jsonl_line(line)
        count = min(len(view), len(self._buffer))
        view[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        self._position += count
        return count


def inline_size(lines: Sequence[EconomyLine]) -> int:
    """The larger of the batch's requests and its expected results, base64 included."""
    requests = sum(len(r.data) * 4 // 3 for line in lines for r in line.references)
    requests += sum(len(line.prompt) + 512 for line in lines)
    results = sum(
        RESULT_BYTES_PER_IMAGE.get(line.image_size or "", DEFAULT_RESULT_BYTES) * 4 // 3
        for line in lines
    )
    return max(requests, results)


def _content(line: EconomyLine) -> types.Content:
    parts = [types.Part.from_text(text=line.prompt)]
    parts += [types.Part.from_bytes(data=r.data, mime_type=r.mime_type) for r in line.references]
    return types.Content(role="user", parts=parts)


def _name(batch: types.BatchJob) -> str:
    if not batch.name:
        raise TransientError("the Batch API answered without a batch name")
    return batch.name


# A batch line's error is a google.rpc.Status: its code is an rpc code, not HTTP.
RPC_CODES = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    13: "INTERNAL",
    14: "UNAVAILABLE",
}


def _line_error(code: object, message: object) -> str:
    named = RPC_CODES.get(code, code) if isinstance(code, int) else code
    what = f"{named or 'error'}: {message or ''}".strip()
    return f"Gemini could not make this image in the batch ({what})"


CALL_ERRORS = (errors.APIError, httpx2.TransportError, OSError)


def _translated(what: str, exc: Exception) -> TransientError | PermanentError:
    """Batch and Files API errors as ours: 4xx other than 408/429 are permanent."""
    if isinstance(exc, errors.APIError):
        detail = f"{what}: Gemini answered {exc.code} {exc.status or ''}: {exc.message or ''}"
        if exc.code in (408, QUOTA_CODE, *RETRYABLE_CODES):
            return TransientError(detail.strip())
        return PermanentError(detail.strip())
    return TransientError(f"{what}: {type(exc).__name__}: {exc}")
