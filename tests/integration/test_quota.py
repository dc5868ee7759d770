"""A batch larger than the Gemini quota completes, on a stack whose stub enforces one.

The stub's "per-minute" quota is 6 requests in any rolling 5 s (a movable
window, so the test takes seconds, not minutes); the functions pace the fleet
at 66 images per minute of that scale, just under the quota's 72.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import Stack, StackConfig, emulator_env
from tests.integration.conftest import LiveStack, assert_each_job_finished_once, live_handles

pytestmark = pytest.mark.integration

QUOTA, WINDOW_S = 6, 5.0
PACE_PER_MINUTE = 66  # QUOTA per WINDOW_S is 72 a minute


@pytest.fixture(scope="module")
def quota_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveStack, Stack]]:
    stack = Stack(
        StackConfig(
            state_dir=Path(tmp_path_factory.mktemp("quota-stack")),
            gemini_latency_ms=50,
            gemini_quota_per_minute=QUOTA,
            gemini_quota_window_s=WINDOW_S,
            retry_min_backoff_s=1,
            retry_max_backoff_s=5,
            function_env={
                "GEMINI_IMAGES_PER_MINUTE": str(PACE_PER_MINUTE),
                "GEMINI_TIMEOUT_S": "10",
                "GEMINI_BUDGET_S": "25",
                "DELIVERY_DEADLINE_S": "90",
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


def stored_images(live: LiveStack, scene_ids: set[str]) -> list[Any]:
    bucket = live.env["IMAGES_BUCKET"]
    return [
        blob
        for blob in live.storage.list_blobs(bucket, prefix="images/")
        if blob.name.split("/")[1] in scene_ids
    ]


def test_a_batch_four_times_the_quota_completes_paying_once_per_image(
    quota_stack: tuple[LiveStack, Stack],
) -> None:
    live, _ = quota_stack
    tag = uuid.uuid4().hex[:6]
    items = [
        {"scene_id": f"q{i:02d}-{tag}", "prompt": f"quota scene {i} {tag}", "variants": 2}
        for i in range(12)
    ]
    live.add_rows(items)
    before = live.gemini("stats")
    answer = live.post_batch(items)
    assert answer.status_code == 202, answer.text
    job_ids = [job["job_id"] for job in answer.json()["jobs"]]
    views = live.wait_jobs(job_ids, timeout_s=240)

    assert {view["state"] for view in views.values()} == {"completed"}
    stats = live.gemini("stats")
    paid = stats["generated"] - before["generated"]
    refused = stats["quota_refusals"] - before["quota_refusals"]
    images = stored_images(live, {item["scene_id"] for item in items})
    assert len(images) == 24 >= 4 * QUOTA
    assert paid / len(images) == 1.0
    print(f"\nquota refusals: {refused} for {len(images)} images ({refused / len(images):.1%})")
    assert refused <= 0.10 * len(images)
    for view in views.values():
        assert [v["failures"] for v in view["variants"]] == [0, 0]
    live.wait_for(
        lambda: all(live.sheet_row(i["scene_id"])["status_img"] == "completed" for i in items),
        what="every row completed",
    )
