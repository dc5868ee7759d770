"""GeminiBatchRunner (the economy lane's Batch/Files API adapter) against the
Gemini stub, through the real google-genai SDK."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import requests
from PIL import Image

from devstack.gemini_stub import GeminiStubServer, StubConfig, image_dimensions
from shared.adapters.gemini import Backend
from shared.adapters.gemini_batches import GeminiBatchRunner, inline_size
from shared.domain.errors import PermanentError, TransientError
from shared.services.ports import EconomyLine, LineResult, ReferenceImage
from tests.stubs import serving

MODEL = "gemini-3.1-flash-image"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


@pytest.fixture
def stub() -> Iterator[GeminiStubServer]:
    config = StubConfig(batch_pending_s=0, batch_running_s=0, retired_models=("gemini-retired",))
    with serving(config) as server:
        yield server


def runner(stub: GeminiStubServer, inline_max: int = 15 << 20) -> GeminiBatchRunner:
    backend = Backend(kind="gemini_api", api_key="test", base_url=stub.url)
    return GeminiBatchRunner(backend, 30.0, inline_max, 40_000_000)


def line(key: str, prompt: str, size: str = "512", refs: int = 0) -> EconomyLine:
    return EconomyLine(
        key=key,
        prompt=prompt,
        references=[ReferenceImage(PNG, "image/png")] * refs,
        seed=7,
        aspect_ratio="1:1",
        image_size=size,
    )


def stub_batches(stub: GeminiStubServer) -> list[dict[str, object]]:
    found: list[dict[str, object]] = requests.get(f"{stub.url}/_stub/batches", timeout=5).json()[
        "batches"
    ]
    return found


def collect(run: GeminiBatchRunner, name: str) -> dict[str, LineResult]:
    got: list[LineResult] = []
    run.results(name, got.append)
    return {result.key: result for result in got}


def test_inline_only_when_requests_and_expected_images_both_fit() -> None:
    small = [line(str(i), "a fox", "512") for i in range(2)]
    big = [line(str(i), "a fox", "4K") for i in range(2)]
    # Two 4K images may bring back ~85 MB of base64: never inline, however small
    # the requests, since an inline answer arrives whole.
    assert inline_size(big) > 15 << 20 > inline_size(small)
    heavy_refs = [line("0", "a fox", "512", refs=1)]
    assert inline_size(heavy_refs) >= inline_size([line("0", "a fox", "512")])


def test_a_small_batch_goes_inline_and_its_results_come_back_by_key(
    stub: GeminiStubServer,
) -> None:
    run = runner(stub)
    name, inline = run.submit(MODEL, "econ-inline", [line("j1/1", "a fox"), line("j1/2", "a kite")])
    assert inline and name.startswith("batches/")
    assert run.progress(name).state == "succeeded"
    results = collect(run, name)

    assert set(results) == {"j1/1", "j1/2"}
    for result in results.values():
        assert result.error is None and result.image is not None
        size = Image.open(io.BytesIO(result.image.data)).size
        assert size == image_dimensions("1:1", "512")
        assert result.image.usage.get("output_image_tokens")
    stats = requests.get(f"{stub.url}/_stub/stats", timeout=5).json()
    assert (stats["files_uploaded"], stats["requests"], stats["batch_lines"]) == (0, 0, 2)


def test_a_large_batch_goes_as_a_file_and_line_errors_stay_per_line(
    stub: GeminiStubServer,
) -> None:
    requests.post(
        f"{stub.url}/_stub/script",
        json={"rules": [{"match": "broken", "mode": "http:500", "lane": "batch"}]},
        timeout=5,
    ).raise_for_status()
    run = runner(stub, inline_max=0)
    lines = [line("a/1", "a fox", refs=2), line("b/1", "[refuse] a fox"), line("c/1", "broken")]
    name, inline = run.submit(MODEL, "econ-file", lines)
    assert not inline
    [batch] = stub_batches(stub)
    assert batch["input_file"] and batch["display_name"] == "econ-file"
    results = collect(run, name)

    assert results["a/1"].image is not None
    assert results["b/1"].image is None and "SAFETY" in (results["b/1"].error or "")
    assert results["c/1"].error is not None
    assert "in the batch (INTERNAL:" in results["c/1"].error
    lines_seen = batch["lines"]
    assert isinstance(lines_seen, list)
    assert lines_seen[0]["reference_images"] == [{"mimeType": "image/png", "bytes": len(PNG)}] * 2


def test_find_returns_the_batch_of_a_display_name(stub: GeminiStubServer) -> None:
    run = runner(stub)
    first, _ = run.submit(MODEL, "econ-a", [line("a/1", "a fox")])
    second, _ = run.submit(MODEL, "econ-b", [line("b/1", "a kite")])
    assert run.find("econ-a") == first and run.find("econ-b") == second
    assert run.find("econ-none") is None


def test_progress_follows_the_batch_to_its_end(stub: GeminiStubServer) -> None:
    requests.post(
        f"{stub.url}/_stub/batch-config", json={"pending_s": 3600}, timeout=5
    ).raise_for_status()
    run = runner(stub)
    name, _ = run.submit(MODEL, "econ-slow", [line("a/1", "a fox")])
    assert run.progress(name).state == "pending"
    batch_id = name.removeprefix("batches/")
    requests.post(
        f"{stub.url}/_stub/batches/{batch_id}", json={"state": "EXPIRED"}, timeout=5
    ).raise_for_status()
    assert run.progress(name).state == "expired"
    with pytest.raises(TransientError):
        run.results(name, lambda _: None)


def test_refusals_are_permanent_and_an_unreachable_api_is_transient(
    stub: GeminiStubServer,
) -> None:
    run = runner(stub)
    with pytest.raises(PermanentError):
        run.progress("batches/nosuchbatch")
    with pytest.raises(PermanentError):
        run.submit("gemini-retired", "econ-x", [line("a/1", "a fox")])
    gone = Backend(kind="gemini_api", api_key="test", base_url="http://127.0.0.1:9")
    with pytest.raises(TransientError):
        GeminiBatchRunner(gone, 2.0, 0, 40_000_000).progress("batches/x")


def test_the_request_file_is_streamed_line_by_line_with_its_size_known() -> None:
    from shared.adapters.gemini_batches import JsonlStream, jsonl_line

    refs = [ReferenceImage(bytes([n]) * 300_000, "image/png") for n in range(3)]
    lines = [
        EconomyLine(key=f"job_1/{n}", prompt=f"prompt {n}", references=refs, seed=n)
        for n in range(1, 6)
    ]
    whole = b"".join(jsonl_line(line) for line in lines)
    stream = JsonlStream(lines)
    # The SDK's size probe: to the end and back.
    assert stream.seek(0, io.SEEK_END) == len(whole) and stream.tell() == len(whole)
    assert stream.seek(0) == 0
    read, largest = b"", 0
    while chunk := stream.read(65_536):
        read += chunk
        largest = max(largest, len(stream._buffer))
    assert read == whole
    # Never more than one line (and a chunk) held at once, not the whole file.
    assert largest < len(jsonl_line(lines[0])) + 65_536 < len(whole) / 3
    stream.seek(1_000_000)
    assert stream.read(10) == whole[1_000_000:1_000_010]
