"""Session fixtures: the real local stack (emulators, stubs, three functions)."""

from __future__ import annotations

import base64
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.stack import HEADER, Stack, StackConfig, emulator_env, sheets_client

pytestmark = pytest.mark.integration

TERMINAL = {"completed", "partial", "failed", "cancelled"}


@dataclass
class LiveStack:
    """Handles on the running stack for tests."""

    env: dict[str, str]
    firestore: Any
    storage: Any
    publisher: Any
    worksheet: Any

    @property
    def api(self) -> str:
        return self.env["API_URL"]

    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.env["API_KEY"]}

    def post_batch(self, items: list[dict[str, Any]], run_mode: str = "live") -> requests.Response:
        body = {
            "items": items,
            "runMode": run_mode,
            "spreadsheet_id": self.env["SPREADSHEET_ID"],
            "worksheet": self.env["WORKSHEET"],
        }
        return requests.post(
            f"{self.api}/batch/images", json=body, headers=self.headers(), timeout=60
        )

    def status(self, job_id: str) -> dict[str, Any]:
        answer = requests.get(f"{self.api}/status/{job_id}", headers=self.headers(), timeout=30)
        answer.raise_for_status()
        data: dict[str, Any] = answer.json()
        return data

    def add_rows(self, items: list[dict[str, Any]]) -> None:
        """Put scenes in the sheet the way the team does before sending them."""
        rows = [
            [
                item["scene_id"],
                item["prompt"],
                item.get("ref_pack_public_url") or "",
                item["variants"],
            ]
            for item in items
        ]
        self.worksheet.append_rows(rows, value_input_option="RAW", table_range="A1")

    def sheet_row(self, scene_id: str, render: str = "FORMULA") -> dict[str, str]:
        grid = self.worksheet.get_all_values(value_render_option=render)
        header = grid[0]
        for row in grid[1:]:
            if row and row[0] == scene_id:
                return {name: row[i] if i < len(row) else "" for i, name in enumerate(header)}
        raise AssertionError(f"no row for {scene_id}")

    def wait_jobs(self, job_ids: list[str], timeout_s: float = 120) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            views = {job_id: self.status(job_id) for job_id in job_ids}
            if all(v["state"] in TERMINAL for v in views.values()):
                return views
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs not finished: {views}")
            time.sleep(0.5)

    def wait_for(self, check: Callable[[], bool], timeout_s: float = 60, what: str = "") -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.5)

    def gemini(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.env['GEMINI_STUB_URL']}/_stub/{path}"
        answer = (
            requests.post(url, json=payload or {}, timeout=10)
            if payload is not None
            else requests.get(url, timeout=10)
        )
        answer.raise_for_status()
        data: dict[str, Any] = answer.json()
        return data


def push_body(message: Mapping[str, Any], message_id: str) -> dict[str, Any]:
    """A Pub/Sub push request as a redelivery of ``message`` would arrive."""
    return {
        "message": {
            "data": base64.b64encode(json.dumps(message).encode()).decode(),
            "attributes": {},
            "messageId": message_id,
            "publishTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        },
        "subscription": "projects/local-project/subscriptions/test-redelivery",
    }


def function_log_entries(state_dir: Path) -> list[dict[str, Any]]:
    """Every structured entry any function process of a stack logged."""
    entries = []
    for path in sorted((state_dir / "logs").glob("fn-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    continue
    return entries


def assert_each_job_finished_once(state_dir: Path, firestore: Any) -> int:
    """The ledger's promise over a whole stack's run: every job of a batch sent to
    the HTTP function that ended (in generation, thumbnails, dead letters or
    intake) logged ``job_finished`` exactly once, whichever path ended it.
    Returns how many such jobs there were."""
    counts: dict[str, int] = {}
    batches = []
    for entry in function_log_entries(state_dir):
        if entry.get("event") == "job_finished":
            counts[entry["job_id"]] = counts.get(entry["job_id"], 0) + 1
        if entry.get("event") == "batch_accepted":
            batches.append(entry["batch_id"])
    assert {j: n for j, n in counts.items() if n != 1} == {}
    ended = 0
    for batch_id in batches:
        batch = firestore.collection("batches").document(batch_id).get().to_dict()
        jobs = firestore.get_all(
            [firestore.collection("jobs").document(j) for j in batch["job_ids"]]
        )
        for snap in jobs:
            if snap.exists and snap.to_dict()["state"] in TERMINAL:
                assert counts.get(snap.id) == 1, f"job {snap.id} ended without job_finished"
                ended += 1
    return ended


def live_handles(env: dict[str, str]) -> LiveStack:
    """Clients on a started stack's emulators and sheet."""
    with emulator_env(env):
        from google.cloud import firestore, pubsub_v1, storage  # type: ignore[attr-defined]

        return LiveStack(
            env=env,
            firestore=firestore.Client(project=env["GOOGLE_CLOUD_PROJECT"]),
            storage=storage.Client(project=env["GOOGLE_CLOUD_PROJECT"]),
            publisher=pubsub_v1.PublisherClient(),
            worksheet=sheets_client(env["SHEETS_API_URL"])
            .open_by_key(env["SPREADSHEET_ID"])
            .worksheet(env["WORKSHEET"]),
        )


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    if shutil.which("gcloud") is None:
        pytest.fail("gcloud (with the Pub/Sub and Firestore emulators) is required")
    state = Path(tmp_path_factory.mktemp("stack"))
    running = Stack(
        StackConfig(
            state_dir=state,
            gemini_latency_ms=100,
            # Five deliveries (100 in production) keep the dead-letter test short,
            # as does one SDK attempt per delivery.
            max_delivery_attempts=5,
            function_env={"GEMINI_RETRY_ATTEMPTS": "1"},
        )
    )
    env = running.start()
    try:
        handles = live_handles(env)
        assert handles.worksheet.row_values(1) == HEADER
        yield handles
        with emulator_env(env):
            assert_each_job_finished_once(state, handles.firestore)
    finally:
        running.stop()


@pytest.fixture
def scene() -> Callable[[str], str]:
    """Unique scene ids, so tests sharing the sheet never collide."""
    run = uuid.uuid4().hex[:6]
    return lambda name: f"{name}-{run}"
