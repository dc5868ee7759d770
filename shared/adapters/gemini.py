"""ImageGenerator on Gemini through google-genai (imported here only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google import genai
from google.genai import errors, types
from pydantic import ValidationError

from shared.errors import PermanentError, TransientError
from shared.imageformat import sniff
from shared.ports import GeneratedImage, ReferenceImage

# 408 and 429 are worth retrying later; other 4xx mean the request itself is wrong.
RETRYABLE_CODES = (408, 429, 500, 502, 503, 504)


class GeminiImageGenerator:
    def __init__(self, api_key: str, timeout_s: float, retry_attempts: int = 3) -> None:
        self._client = genai.Client(
            api_key=api_key,
            http_options=types.HttpOptions(
                # Google documents image settings (image_config) on v1beta.
                api_version="v1beta",
                timeout=int(timeout_s * 1000),
                retry_options=types.HttpRetryOptions(
                    attempts=retry_attempts,
                    initial_delay=1.0,
                    max_delay=8.0,
                    http_status_codes=list(RETRYABLE_CODES),
                ),
            ),
        )

    def generate(
        self, model: str, prompt: str, references: Sequence[ReferenceImage], seed: int
    ) -> GeneratedImage:
        contents: list[Any] = [prompt]
        contents += [types.Part.from_bytes(data=r.data, mime_type=r.mime_type) for r in references]
        config = types.GenerateContentConfig(response_modalities=["IMAGE"], seed=seed)
        try:
            response = self._client.models.generate_content(
                model=model, contents=contents, config=config
            )
        except errors.APIError as exc:
            detail = f"Gemini answered {exc.code} {exc.status or ''}: {exc.message or ''}".strip()
            if exc.code in RETRYABLE_CODES:
                raise TransientError(detail) from exc
            raise PermanentError(detail) from exc
        except ValidationError as exc:
            # The SDK decodes base64 itself; broken image data surfaces here.
            raise PermanentError(
                f"Gemini returned malformed data: {exc.error_count()} error(s)"
            ) from exc
        except (OSError, TimeoutError) as exc:
            raise TransientError(f"Gemini unreachable: {exc}") from exc
        except Exception as exc:
            # httpx transport errors do not share a base class with OSError.
            if "Timeout" in type(exc).__name__ or "Connect" in type(exc).__name__:
                raise TransientError(f"Gemini unreachable: {type(exc).__name__}: {exc}") from exc
            raise
        return read_image(response)


def read_image(response: types.GenerateContentResponse) -> GeneratedImage:
    """The first real image of the answer; a blocked or empty answer is permanent."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason:
        reason = getattr(feedback.block_reason, "value", feedback.block_reason)
        raise PermanentError(f"prompt blocked by Gemini ({reason})")
    if not response.candidates:
        raise PermanentError("Gemini returned no candidates")
    usage = _usage(response)
    candidate = response.candidates[0]
    bad_data = False
    for part in (candidate.content.parts if candidate.content else None) or []:
        if part.thought or part.inline_data is None or not part.inline_data.data:
            continue
        data = part.inline_data.data
        mime = sniff(data)
        if mime is None:
            bad_data = True
            continue
        return GeneratedImage(data=data, mime_type=mime, usage=usage)
    if bad_data:
        raise PermanentError("Gemini returned image data that is not PNG, JPEG or WebP")
    reason = candidate.finish_reason
    reason_text = getattr(reason, "value", reason) or "unknown"
    raise PermanentError(f"Gemini returned no image (finish reason {reason_text})")


def _usage(response: types.GenerateContentResponse) -> dict[str, int]:
    meta = response.usage_metadata
    if meta is None:
        return {}
    fields = {
        "prompt_tokens": meta.prompt_token_count,
        "output_tokens": meta.candidates_token_count,
        "total_tokens": meta.total_token_count,
    }
    return {name: int(value) for name, value in fields.items() if value is not None}
