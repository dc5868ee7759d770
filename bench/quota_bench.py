"""Quota benchmark (issue 12): a batch larger than the Gemini quota, with and without crashes.

    .venv/bin/python -m bench.quota_bench [--images 80] [--quota 20] [--pace 19.4]
                                          [--scenarios paced,crashes,unpaced]

On the local stack whose Gemini stub enforces a per-project quota of Q images
in any rolling minute (answering 429 RESOURCE_EXHAUSTED with QuotaFailure and
RetryInfo, as Gemini does), a batch of N images (scenes of 2 variants):

- paced: the functions pace the fleet at GEMINI_IMAGES_PER_MINUTE (default 97 %
  of Q);
- crashes: the same, while the generate function is SIGKILLed every 45 s (and
  restarted), and every fifth job's message is published a second time;
- unpaced: no pace: only refusals close the fleet's shared gate.

For each it reports the wall time from submit to the last job finished as a
ratio to the ideal N / Q minutes (target <= 1.15 paced), the quota refusals per
image, paid images per stored image, and how many jobs completed. Real time
windows: each scenario takes about N / Q minutes. Reports figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from devstack.stack import Stack, StackConfig, emulator_env, sheets_client

VARIANTS = 2
TERMINAL = {"completed", "partial", "failed", "cancelled"}
CRASH_EVERY_S = 45.0


@dataclass
class Result:
    scenario: str
    images: int
    wall_s: float
    ideal_s: float
    refusals: int
    paid: int
    stored: int
    completed: int
    jobs: int
    crashes: int

    def line(self) -> str:
        return (
            f"{self.scenario:8s} wall {self.wall_s:6.1f} s = "
            f"{self.wall_s / self.ideal_s:.3f} x ideal ({self.ideal_s:.0f} s); "
            f"refusals {self.refusals} "
            f"({self.refusals / self.images:.3f} per image); paid/stored "
            f"{self.paid}/{self.stored} = {self.paid / max(self.stored, 1):.2f}; "
            f"completed {self.completed}/{self.jobs}; crashes {self.crashes}"
        )


def run(scenario: str, images: int, quota: int, pace: float) -> Result:
    function_env = {"GEMINI_IMAGES_PER_MINUTE": str(pace if scenario != "unpaced" else 0)}
    stack = Stack(
        StackConfig(
            state_dir=Path(tempfile.mkdtemp(prefix=f"quota-bench-{scenario}-")),
            gemini_latency_ms=500,
            gemini_quota_per_minute=quota,
            function_env=function_env,
        )
    )
    env = stack.start()
    crashes = 0
    try:
        headers = {"X-API-Key": env["API_KEY"]}
        tag = uuid.uuid4().hex[:6]
        items = [
            {"scene_id": f"q{tag}-{i}", "prompt": f"quota bench {tag} {i}", "variants": VARIANTS}
            for i in range(images // VARIANTS)
        ]
        sheets_client(env["SHEETS_API_URL"]).open_by_key(env["SPREADSHEET_ID"]).worksheet(
            env["WORKSHEET"]
        ).append_rows(
            [[i["scene_id"], i["prompt"], "", VARIANTS] for i in items],
            value_input_option="RAW",
            table_range="A1",
        )
        body = {
            "items": items,
            "runMode": "live",
            "spreadsheet_id": env["SPREADSHEET_ID"],
            "worksheet": env["WORKSHEET"],
        }
        started = time.monotonic()
        answer = requests.post(
            f"{env['API_URL']}/batch/images", json=body, headers=headers, timeout=60
        )
        answer.raise_for_status()
        batch_id = answer.json()["batch_id"]
        job_ids = [job["job_id"] for job in answer.json()["jobs"]]
        done = threading.Event()
        if scenario == "crashes":
            duplicate(env, answer.json()["jobs"][::5], batch_id)
            crasher = threading.Thread(target=crash_loop, args=(stack, done), daemon=True)
            crasher.start()
        views = wait(env, batch_id, len(job_ids))
        wall = time.monotonic() - started
        done.set()
        if scenario == "crashes":
            crasher.join(timeout=120)
            crashes = crash_count[0]
        stats = requests.get(f"{env['GEMINI_STUB_URL']}/_stub/stats", timeout=10).json()
        with emulator_env(env):
            from google.cloud import storage  # type: ignore[attr-defined]

            stored = sum(
                1
                for blob in storage.Client(project=env["GOOGLE_CLOUD_PROJECT"]).list_blobs(
                    env["IMAGES_BUCKET"], prefix="images/"
                )
                if tag in blob.name
            )
        return Result(
            scenario=scenario,
            images=len(items) * VARIANTS,
            wall_s=wall,
            ideal_s=len(items) * VARIANTS / quota * 60,
            refusals=int(stats["quota_refusals"]),
            paid=int(stats["generated"]),
            stored=stored,
            completed=sum(1 for v in views if v["state"] == "completed"),
            jobs=len(job_ids),
            crashes=crashes,
        )
    finally:
        stack.stop()


crash_count = [0]


def crash_loop(stack: Stack, done: threading.Event) -> None:
    """Kill the generate function every CRASH_EVERY_S, mid-request, and restart it."""
    crash_count[0] = 0
    while not done.wait(CRASH_EVERY_S):
        stack.crash_and_restart("fn-generate")
        crash_count[0] += 1


def duplicate(env: dict[str, str], jobs: list[dict[str, Any]], batch_id: str) -> None:
    """Publish these jobs' messages a second time, as an at-least-once delivery may."""
    with emulator_env(env):
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]

        publisher = pubsub_v1.PublisherClient()
        topic = publisher.topic_path(env["GOOGLE_CLOUD_PROJECT"], env["JOBS_TOPIC"])
        for job in jobs:
            message = {"job_id": job["job_id"], "batch_id": batch_id, "scene_id": job["scene_id"]}
            publisher.publish(topic, json.dumps(message).encode()).result(timeout=30)


def wait(env: dict[str, str], batch_id: str, jobs: int) -> list[dict[str, Any]]:
    headers = {"X-API-Key": env["API_KEY"]}
    while True:
        view = requests.get(
            f"{env['API_URL']}/batches/{batch_id}", headers=headers, timeout=30
        ).json()
        finished = [j for j in view["jobs"] if j["state"] in TERMINAL]
        if len(finished) == jobs:
            return list(view["jobs"])
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quota_bench")
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--quota", type=int, default=20, help="the stub's images per minute")
    parser.add_argument("--pace", type=float, default=0.0, help="default: 97 %% of the quota")
    parser.add_argument("--scenarios", default="paced,crashes,unpaced")
    args = parser.parse_args(argv)
    pace = args.pace or round(args.quota * 0.97, 2)
    for scenario in args.scenarios.split(","):
        result = run(scenario, args.images, args.quota, pace)
        print(result.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
