"""Models and money on the local stack: estimates that match the invoice, the
preflight that refuses a retired model, and the Vertex AI backend."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from google.cloud.firestore_v1.base_query import FieldFilter
from PIL import Image

from devstack.stack import Stack, StackConfig, emulator_env
from shared.contracts.objects import recorded_spent
from shared.domain.catalog import load_catalog
from tests.integration.conftest import LiveStack, assert_each_job_finished_once, live_handles

pytestmark = pytest.mark.integration

DEFAULT = "gemini-nano-banana-2.1"


def usage_doc(stack: LiveStack, day: str) -> dict[str, Any]:
    query = stack.firestore.collection("usage").where(filter=FieldFilter("day", "==", day))
    for doc in query.stream():
        data: dict[str, Any] = doc.to_dict()
        if data["caller"] == "local-dev":
            return data
    return {"images": 0, "cost_usd": "0"}


def test_a_4k_batch_with_references_costs_what_the_stub_reports_at_catalog_prices(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    bucket = stack.storage.bucket(stack.env["IMAGES_BUCKET"])
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 200)).save(png, "PNG")
    ref = f"refs/{uuid.uuid4().hex[:8]}/style.png"
    bucket.blob(ref).upload_from_string(png.getvalue(), content_type="image/png")
    items = [
        {
            "scene_id": scene("4k"),
            "prompt": "a lighthouse in a storm, matte painting",
            "variants": 2,
            "image_size": "4K",
            "aspect_ratio": "1:1",
            "ref_pack_public_url": f"gs://{stack.env['IMAGES_BUCKET']}/{ref}",
        }
    ]
    stack.add_rows(items)
    plan = stack.post_batch(items, run_mode="dry_run").json()
    (planned,) = plan["jobs"]
    assert (planned["image_size"], planned["reference_images"]) == ("4K", 1)
    entry = load_catalog().models[DEFAULT]
    prices = entry.token_prices_per_million["live"]
    # 0.1134 a 4K image, plus the prompt (4 characters a token) and one 1120-token reference.
    prompt_tokens = -(-len(items[0]["prompt"]) // 4)
    estimate = Decimal("0.1134") + (prompt_tokens + 1120) * prices.input / 1_000_000
    assert Decimal(planned["estimated_cost_per_image_usd"]) == estimate.quantize(Decimal("0.0001"))
    assert any("characters a token" in note for note in plan["estimate_notes"])

    answer = stack.post_batch(items).json()
    job_id = answer["jobs"][0]["job_id"]
    view = stack.wait_jobs([job_id])[job_id]
    assert view["state"] == "completed"

    objects = list(bucket.list_blobs(prefix=f"images/{items[0]['scene_id']}/"))
    assert len(objects) == 2
    from_metadata = Decimal(0)
    for blob in objects:
        spent = recorded_spent(blob.metadata)
        assert spent is not None
        usage = spent.usage
        # What the stub reported, at the catalog's token prices.
        assert usage["output_image_tokens"] == 3780
        assert usage["prompt_tokens"] >= 1120
        expected = (
            usage["prompt_tokens"] * prices.input
            + usage["output_image_tokens"] * prices.image_output
            + (
                usage["output_tokens"]
                - usage["output_image_tokens"]
                + usage.get("thought_tokens", 0)
            )
            * prices.text_output
        ) / 1_000_000
        assert Decimal(spent.cost_usd) == expected.quantize(Decimal("0.0001"))
        from_metadata += Decimal(spent.cost_usd)
    assert Decimal(view["cost_usd"]) == from_metadata
    # The estimate was within a tenth of a cent an image (the model's few words
    # of text next to the image are not in it).
    assert abs(from_metadata - 2 * estimate) < Decimal("0.002")
    # The sheet row's budget: what the batch reserved became what it cost.
    batch = requests.get(
        f"{stack.api}/batches/{answer['batch_id']}", headers=stack.headers(), timeout=30
    ).json()
    assert Decimal(batch["cost_usd"]) == from_metadata


def test_a_retired_model_is_refused_before_anything_is_reserved(
    stack: LiveStack, scene: Callable[[str], str]
) -> None:
    retired = "gemini-2.5-flash-image"
    stack.gemini("config", {"retired_models": [retired]})
    try:
        items = [{"scene_id": scene("ret"), "prompt": "a retired model", "variants": 1}]
        stack.add_rows(items)
        day = requests.post(
            f"{stack.api}/batch/images",
            json={
                "items": items,
                "runMode": "dry_run",
                "model": DEFAULT,
                "spreadsheet_id": stack.env["SPREADSHEET_ID"],
                "worksheet": stack.env["WORKSHEET"],
            },
            headers=stack.headers(),
            timeout=60,
        ).json()["budget"]["day"]
        before = usage_doc(stack, day)
        jobs_before = len(list(stack.firestore.collection("jobs").select([]).stream()))
        for run_mode in ("dry_run", "live"):
            answer = requests.post(
                f"{stack.api}/batch/images",
                json={
                    "items": items,
                    "runMode": run_mode,
                    "model": retired,
                    "spreadsheet_id": stack.env["SPREADSHEET_ID"],
                    "worksheet": stack.env["WORKSHEET"],
                },
                headers=stack.headers(),
                timeout=60,
            )
            assert answer.status_code == 422, answer.text
            body = answer.json()
            assert (body["error"], body["model"]) == ("model_unavailable", retired)
            assert f"'{retired}' is not available (Gemini answered 404 NOT_FOUND" in body["message"]
            assert "nothing was reserved or queued" in body["message"]
        after = usage_doc(stack, day)
        assert (after["images"], after["cost_usd"]) == (before["images"], before["cost_usd"])
        assert len(list(stack.firestore.collection("jobs").select([]).stream())) == jobs_before
    finally:
        stack.gemini("config", {"retired_models": []})


# --------------------------------------------------------------------------- Vertex AI


@pytest.fixture(scope="module")
def vertex_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    stack = Stack(
        StackConfig(
            state_dir=Path(tmp_path_factory.mktemp("vertex-stack")),
            gemini_latency_ms=50,
            gemini_backend="vertex",
        )
    )
    env = stack.start()
    try:
        live = live_handles(env)
        yield live
        with emulator_env(env):
            assert_each_job_finished_once(stack.state, live.firestore)
    finally:
        stack.stop()


def test_a_batch_runs_through_the_vertex_ai_backend(vertex_stack: LiveStack) -> None:
    live = vertex_stack
    assert "GEMINI_API_KEY" not in live.env  # service-account credentials, no key
    tag = uuid.uuid4().hex[:6]
    items = [{"scene_id": f"vx-{tag}", "prompt": f"vertex {tag}", "variants": 2}]
    live.add_rows(items)
    answer = live.post_batch(items)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["jobs"][0]["job_id"]
    view = live.wait_jobs([job_id])[job_id]
    assert view["state"] == "completed"
    stats = live.gemini("stats")
    assert stats["by_api"] == {"vertex": 2}
    logged = live.gemini("requests")["requests"]
    assert {r["key_source"] for r in logged} == {"bearer"}
    assert {r["api_version"] for r in logged} == {"v1beta1"}
    live.wait_for(lambda: live.sheet_row(items[0]["scene_id"])["status_img"] == "completed")
