"""The economy lane end to end: jobs sent with ``lane: economy`` go through one
Gemini batch (the stub's Batch and Files API, through the real SDK), then the
ordinary finalize -> thumbnail -> sheet path.

The stack's scheduler is off: each test calls the tick itself, as Cloud Scheduler
would, so it decides when batches are submitted and collected, and can run two
collectors at once or kill one mid-download.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.stack import Stack, StackConfig, emulator_env
from shared.contracts.objects import recorded_spent
from shared.domain.catalog import load_catalog
from shared.domain.pricing import actual_cost
from tests.integration.conftest import LiveStack, assert_each_job_finished_once, live_handles

pytestmark = pytest.mark.integration

LEASE_S = 8


@pytest.fixture(scope="module")
def economy_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LiveStack, Stack]]:
    stack = Stack(
        StackConfig(
            state_dir=Path(tmp_path_factory.mktemp("economy-stack")),
            gemini_latency_ms=20,
            economy_tick_s=0,
            function_env={
                "GEMINI_RETRY_ATTEMPTS": "1",
                # A collector killed mid-download is replaced after this long.
                "ECONOMY_LEASE_S": str(LEASE_S),
            },
        )
    )
    env = stack.start()
    try:
        live = live_handles(env)
        yield live, stack
        with emulator_env(env):
            assert_each_job_finished_once(stack.state, live.firestore)
    finally:
        stack.stop()


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:6]


def tick(live: LiveStack) -> dict[str, Any]:
    answer = requests.post(live.env["ECONOMY_URL"], json={}, timeout=300)
    assert answer.status_code == 200, answer.text
    report: dict[str, Any] = answer.json()
    return report


def post_economy(live: LiveStack, items: list[dict[str, Any]]) -> list[str]:
    live.add_rows(items)
    body = {
        "items": items,
        "runMode": "live",
        "lane": "economy",
        "spreadsheet_id": live.env["SPREADSHEET_ID"],
        "worksheet": live.env["WORKSHEET"],
    }
    answer = requests.post(
        f"{live.api}/batch/images", json=body, headers=live.headers(), timeout=60
    )
    assert answer.status_code == 202, answer.text
    return [job["job_id"] for job in answer.json()["jobs"]]


def stub_batches(live: LiveStack) -> list[dict[str, Any]]:
    views: list[dict[str, Any]] = live.gemini("batches")["batches"]
    return views


def batch_of(live: LiveStack, prompt: str) -> dict[str, Any]:
    """The one stub batch that carries ``prompt``."""
    found = [b for b in stub_batches(live) if any(line["prompt"] == prompt for line in b["lines"])]
    assert len(found) == 1, found
    return found[0]


def control(live: LiveStack, batch: dict[str, Any], doc: dict[str, Any]) -> None:
    name = batch["name"].removeprefix("batches/")
    answer = requests.post(
        f"{live.env['GEMINI_STUB_URL']}/_stub/batches/{name}", json=doc, timeout=10
    )
    assert answer.status_code == 200, answer.text


def wait_made(live: LiveStack, batch: dict[str, Any]) -> None:
    """Wait until the stub has made a due batch's results: it makes them off the
    request path, taking as long as this machine takes to make the images."""
    name = batch["name"].removeprefix("batches/")
    live.wait_for(
        lambda: live.gemini(f"batches/{name}")["state"] == "SUCCEEDED",
        timeout_s=600,
        what=f"the stub to make the results of {batch['name']}",
    )


def images_of(live: LiveStack, scene_ids: set[str]) -> list[Any]:
    return [
        blob
        for blob in live.storage.list_blobs(live.env["IMAGES_BUCKET"], prefix="images/")
        if blob.name.split("/")[1] in scene_ids
    ]


def submit_held(live: LiveStack, prompt: str, variants: int) -> dict[str, Any]:
    """A tick that submits the pending variants in a batch the stub holds pending
    (so this tick cannot collect it too); returns the stub's batch, still held."""
    live.gemini("batch-config", {"pending_s": 3600, "running_s": 0})
    try:
        assert tick(live)["variants_submitted"] == variants
    finally:
        live.gemini("batch-config", {"pending_s": 0, "running_s": 0})
    return batch_of(live, prompt)


def ticks_until_done(live: LiveStack, job_ids: list[str], most: int = 30) -> list[dict[str, Any]]:
    """Tick until every job is final; the reports of the ticks."""
    reports = []
    for _ in range(most):
        reports.append(tick(live))
        views = [live.status(job_id) for job_id in job_ids]
        if all(v["state"] in ("completed", "partial", "failed") for v in views):
            return reports
        time.sleep(0.5)
    pytest.fail(f"economy jobs not done after {most} ticks: {[live.status(j) for j in job_ids]}")


def test_an_economy_batch_is_one_gemini_batch_and_completes_at_the_batch_price(
    economy_stack: tuple[LiveStack, Stack], tag: str
) -> None:
    live, _ = economy_stack
    live.gemini("batch-config", {"pending_s": 0.5, "running_s": 0.5})
    items = [
        {"scene_id": f"eco{i}-{tag}", "prompt": f"economy scene {i} {tag}", "variants": 2}
        for i in range(3)
    ]
    before = live.gemini("stats")
    job_ids = post_economy(live, items)

    queued = [live.status(job_id) for job_id in job_ids]
    assert {v["lane"] for v in queued} == {"economy"}
    first = tick(live)
    assert first["batches_submitted"] == 1 and first["variants_submitted"] == 6, first
    ticks_until_done(live, job_ids)
    views = {job_id: live.wait_jobs([job_id])[job_id] for job_id in job_ids}

    assert {v["state"] for v in views.values()} == {"completed"}
    after = live.gemini("stats")
    # One batch for the six images, and not a single online call.
    assert after["batch_creations"] - before["batch_creations"] == 1
    assert after["requests"] == before["requests"]
    assert after["batch_generated"] - before["batch_generated"] == 6

    blobs = images_of(live, {i["scene_id"] for i in items})
    assert len(blobs) == 6
    entry = load_catalog().entry(views[job_ids[0]]["model"])
    assert entry is not None
    total = Decimal(0)
    for blob in blobs:
        spent = recorded_spent(blob.metadata or {})
        assert spent is not None and spent.usage, blob.metadata
        assert Decimal(spent.cost_usd) == actual_cost(entry, "batch", "1K", spent.usage)
        assert Decimal(spent.cost_usd) < actual_cost(entry, "live", "1K", spent.usage)
        total += Decimal(spent.cost_usd)
    assert sum(Decimal(v["cost_usd"]) for v in views.values()) == total

    for item in items:
        live.wait_for(
            lambda item=item: (
                live.sheet_row(item["scene_id"])["status_img"].startswith("completed")
                and live.sheet_row(item["scene_id"])["nano_img_1"].startswith("=IMAGE(")
                and live.sheet_row(item["scene_id"])["nano_img_2"].startswith("=IMAGE(")
            ),
            what=f"row of {item['scene_id']}",
        )


def test_blocked_and_failed_lines_fail_only_their_own_images(
    economy_stack: tuple[LiveStack, Stack], tag: str
) -> None:
    live, _ = economy_stack
    live.gemini("batch-config", {"pending_s": 0, "running_s": 0})
    good = {"scene_id": f"ok-{tag}", "prompt": f"a calm lake {tag}", "variants": 2}
    blocked = {"scene_id": f"blk-{tag}", "prompt": f"[refuse] a lake {tag}", "variants": 1}
    broken = {"scene_id": f"brk-{tag}", "prompt": f"a broken lake {tag}", "variants": 1}
    live.gemini(
        "script",
        {"rules": [{"match": f"broken lake {tag}", "mode": "http:500", "lane": "batch"}]},
    )
    try:
        job_ids = post_economy(live, [good, blocked, broken])
        ticks_until_done(live, job_ids)
    finally:
        live.gemini("script", {"rules": []})
    views = [live.status(job_id) for job_id in job_ids]

    assert [v["state"] for v in views] == ["completed", "failed", "failed"]
    assert "blocked" in views[1]["error"].lower() or "refus" in views[1]["error"].lower()
    assert "could not make this image in the batch (INTERNAL:" in views[2]["error"]
    # All three were one batch: the failures were per line.
    assert len(batch_of(live, good["prompt"])["lines"]) == 4
    assert len(images_of(live, {good["scene_id"], blocked["scene_id"], broken["scene_id"]})) == 2
    for item, view in zip((blocked, broken), views[1:], strict=True):
        live.wait_for(
            lambda item=item, view=view: live.sheet_row(item["scene_id"])["status_img"].startswith(
                "failed"
            ),
            what=f"failure of {item['scene_id']} in the sheet",
        )


def test_an_expired_batch_sends_its_images_to_the_live_lane(
    economy_stack: tuple[LiveStack, Stack], tag: str
) -> None:
    live, _ = economy_stack
    live.gemini("batch-config", {"pending_s": 0, "running_s": 0})
    items = [{"scene_id": f"exp-{tag}", "prompt": f"expiring scene {tag}", "variants": 2}]
    before = live.gemini("stats")
    job_ids = post_economy(live, items)
    control(live, submit_held(live, items[0]["prompt"], 2), {"state": "EXPIRED"})
    report = tick(live)
    assert report["variants_to_live"] == 2, report
    view = live.wait_jobs(job_ids)[job_ids[0]]

    assert view["state"] == "completed"
    after = live.gemini("stats")
    # Gemini made nothing in the batch; the live lane made both images.
    assert after["by_prompt"][items[0]["prompt"]] == {"requests": 2, "generated": 2}
    assert after["batch_generated"] == before["batch_generated"]
    assert len(images_of(live, {items[0]["scene_id"]})) == 2


def test_with_on_expiry_fail_an_expired_batch_fails_its_jobs_with_the_reason(
    economy_stack: tuple[LiveStack, Stack], tag: str
) -> None:
    live, stack = economy_stack
    stack.crash_and_restart("fn-economy", env={"ECONOMY_ON_EXPIRY": "fail"})
    try:
        items = [{"scene_id": f"expf-{tag}", "prompt": f"expiring for good {tag}", "variants": 1}]
        job_ids = post_economy(live, items)
        control(live, submit_held(live, items[0]["prompt"], 1), {"state": "EXPIRED"})
        tick(live)
        view = live.wait_jobs(job_ids)[job_ids[0]]
    finally:
        stack.crash_and_restart("fn-economy", env={"ECONOMY_ON_EXPIRY": "live"})

    assert view["state"] == "failed"
    assert "expired" in view["error"], view["error"]
    assert items[0]["prompt"] not in live.gemini("stats")["by_prompt"]
    live.wait_for(
        lambda: "expired" in live.sheet_row(items[0]["scene_id"])["status_img"],
        what="the expiry in the sheet",
    )


def test_two_collectors_at_once_store_and_charge_each_image_once(
    economy_stack: tuple[LiveStack, Stack], tag: str
) -> None:
    live, _ = economy_stack
    live.gemini("batch-config", {"pending_s": 0, "running_s": 0})
    items = [
        {"scene_id": f"two{i}-{tag}", "prompt": f"two collectors {i} {tag}", "variants": 3}
        for i in range(4)
    ]
    job_ids = post_economy(live, items)
    held = submit_held(live, items[0]["prompt"], 12)
    control(live, held, {"pending_s": 0, "running_s": 0})
    # Both collectors must find the batch done, however long its images took.
    wait_made(live, held)
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda _: tick(live), range(2)))
    ticks_until_done(live, job_ids)
    views = live.wait_jobs(job_ids)

    # One collected the batch; the other found it leased (or already collected).
    assert sum(r["batches_collected"] for r in reports) == 1, reports
    assert sum(r["images_stored"] for r in reports) == 12, reports
    assert {v["state"] for v in views.values()} == {"completed"}
    blobs = images_of(live, {i["scene_id"] for i in items})
    assert len(blobs) == 12
    costs = sum(Decimal(recorded_spent(b.metadata or {}).cost_usd) for b in blobs)  # type: ignore[union-attr]
    assert sum(Decimal(v["cost_usd"]) for v in views.values()) == costs
    assert len(batch_of(live, items[0]["prompt"])["lines"]) == 12


def test_a_collector_killed_mid_download_is_resumed_and_stores_each_image_once(
    economy_stack: tuple[LiveStack, Stack], tag: str
) -> None:
    live, stack = economy_stack
    live.gemini("batch-config", {"pending_s": 0, "running_s": 0})
    items = [
        {
            "scene_id": f"kill{i:02d}-{tag}",
            "prompt": f"killed collector {i} {tag}",
            "variants": 3,
            "image_size": "4K",
        }
        for i in range(12)
    ]
    scene_ids = {i["scene_id"] for i in items}
    # 4K images: a results file of ~30 MB, which the SDK hands over in 8 MiB pieces
    # while a slow server trickles the rest.
    job_ids = post_economy(live, items)
    held = submit_held(live, items[0]["prompt"], 36)
    before = live.gemini("stats")
    live.gemini("batch-config", {"download_bytes_per_s": 4_000_000})
    control(live, held, {"pending_s": 0, "running_s": 0})
    # The collector must find the batch done, however long 36 4K images took.
    wait_made(live, held)

    try:
        collector = threading.Thread(target=lambda: _tick_quietly(live), daemon=True)
        collector.start()
        deadline = time.monotonic() + 60
        while not images_of(live, scene_ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        stack.crash_and_restart("fn-economy")
        collector.join(timeout=30)
        stored_at_kill = len(images_of(live, scene_ids))
        assert 0 < stored_at_kill < 36, "the kill should land mid-download"
    finally:
        live.gemini("batch-config", {"download_bytes_per_s": 0})

    # The dead collector's lease runs out; a later tick resumes the batch.
    time.sleep(LEASE_S + 1)
    ticks_until_done(live, job_ids)
    views = live.wait_jobs(job_ids)

    assert {v["state"] for v in views.values()} == {"completed"}
    assert len(images_of(live, scene_ids)) == 36
    after = live.gemini("stats")
    assert after["batch_creations"] == before["batch_creations"]
    assert after["requests"] == before["requests"]


def _tick_quietly(live: LiveStack) -> None:
    """A tick whose process is killed under it: its connection just drops."""
    with contextlib.suppress(requests.RequestException):
        requests.post(live.env["ECONOMY_URL"], json={}, timeout=120)
