"""adapters/gemini.read_image on hand-built google-genai responses (no network)."""

from __future__ import annotations

import pytest
from google.genai import types

from shared.adapters.gemini import read_image
from shared.errors import PermanentError
from tests.fakes import jpeg_bytes, png_bytes

PNG = png_bytes(color=(1, 2, 3))
OTHER_PNG = png_bytes(color=(9, 9, 9))
JPEG = jpeg_bytes()


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


def test_text_before_image() -> None:
    image = read_image(response(types.Part(text="Here is your fox."), image_part(PNG)))
    assert (image.data, image.mime_type) == (PNG, "image/png")


def test_thought_image_is_skipped() -> None:
    image = read_image(response(image_part(OTHER_PNG, thought=True), image_part(PNG)))
    assert image.data == PNG


def test_jpeg_accepted_with_sniffed_mime() -> None:
    # The declared mime type is not trusted; the bytes decide.
    image = read_image(response(image_part(JPEG, mime="image/png")))
    assert (image.data, image.mime_type) == (JPEG, "image/jpeg")


def test_usage_tokens_extracted() -> None:
    usage = types.GenerateContentResponseUsageMetadata(
        prompt_token_count=12, candidates_token_count=1290, total_token_count=1302
    )
    image = read_image(response(image_part(PNG), usage=usage))
    assert image.usage == {"prompt_tokens": 12, "output_tokens": 1290, "total_tokens": 1302}


def test_partial_usage_and_no_usage() -> None:
    usage = types.GenerateContentResponseUsageMetadata(total_token_count=5)
    assert read_image(response(image_part(PNG), usage=usage)).usage == {"total_tokens": 5}
    assert read_image(response(image_part(PNG))).usage == {}


def test_prompt_blocked_is_permanent_with_reason() -> None:
    blocked = types.GenerateContentResponse(
        prompt_feedback=types.GenerateContentResponsePromptFeedback(
            block_reason=types.BlockedReason.PROHIBITED_CONTENT
        )
    )
    with pytest.raises(PermanentError, match=r"prompt blocked by Gemini \(PROHIBITED_CONTENT\)"):
        read_image(blocked)


@pytest.mark.parametrize("candidates", [None, []])
def test_no_candidates_is_permanent(candidates: list[types.Candidate] | None) -> None:
    with pytest.raises(PermanentError, match="no candidates"):
        read_image(types.GenerateContentResponse(candidates=candidates))


def test_image_safety_without_image_names_the_reason() -> None:
    refused = response(
        types.Part(text="I can't make that image."), finish=types.FinishReason.IMAGE_SAFETY
    )
    with pytest.raises(PermanentError, match=r"no image \(finish reason IMAGE_SAFETY\)"):
        read_image(refused)


def test_candidate_without_content_is_permanent() -> None:
    empty = types.GenerateContentResponse(
        candidates=[types.Candidate(finish_reason=types.FinishReason.NO_IMAGE)]
    )
    with pytest.raises(PermanentError, match="finish reason NO_IMAGE"):
        read_image(empty)


def test_no_finish_reason_says_unknown() -> None:
    with pytest.raises(PermanentError, match="finish reason unknown"):
        read_image(response(types.Part(text="hmm"), finish=None))


def test_non_image_bytes_are_permanent() -> None:
    with pytest.raises(PermanentError, match="not PNG, JPEG or WebP"):
        read_image(response(image_part(b"GIF89a not allowed", mime="image/gif")))


def test_bad_part_followed_by_good_image_uses_the_image() -> None:
    image = read_image(response(image_part(b"junk"), image_part(PNG)))
    assert image.data == PNG


def test_only_thought_images_is_no_image() -> None:
    with pytest.raises(PermanentError, match="no image"):
        read_image(response(image_part(PNG, thought=True)))
