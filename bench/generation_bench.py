"""Generation benchmarks (issue 4): variants in parallel, and a batch against its bound.

    .venv/bin/python -m bench.generation_bench [--latency-ms 2000] [--runs 3] [--scenes 30]

On the local stack with the Gemini stub answering after a fixed latency L:

1. a job of 3 variants: the generate function's time (job started -> last variant
   uploaded) as a ratio to L. Variants run in parallel (GENERATE_CONCURRENCY),
   so it should be about 1, not 3;
2. a batch of N scenes of 3 variants: the time from submitting to the last
   upload, as a ratio to the lower bound the configured concurrency allows.
   Jobs run in parallel up to D = min(the stack's push concurrency, the
   generate process's THREADS); each job's variants in one round when
   GENERATE_CONCURRENCY >= 3. So the bound is ceil(N / D) x ceil(3 / G) x L.
   The stack pushes at most 2 messages per subscription at once
   (StackConfig.push_concurrency, as the emulator's own push did: 20 messages
   to an endpoint that answers after 2 s took 18 s, never more than 2 in
   flight), so D = 2 locally although THREADS is 8; both bounds are reported.
   In production D = the generate function's max_instances x its per-instance
   concurrency (5 x 1 by default).

Reports figures; it asserts nothing (these machines are noisy).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from devstack.stack import Stack, StackConfig, emulator_env, sheets_client

VARIANTS = 3
GENERATE_CONCURRENCY = 4
THREADS = 8  # gunicorn threads of each functions-framework process


class Bench:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        with emulator_env(env):
            from google.cloud import firestore

            self.db = firestore.Client(project=env["GOOGLE_CLOUD_PROJECT"])
        self.worksheet = (
            sheets_client(env["SHEETS_API_URL"])
            .open_by_key(env["SPREADSHEET_ID"])
            .worksheet(env["WORKSHEET"])
        )

    def stub(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.env['GEMINI_STUB_URL']}/_stub/{path}"
        answer = (
            requests.post(url, json=body, timeout=10)
            if body is not None
            else requests.get(url, timeout=10)
        )
        answer.raise_for_status()
        data: dict[str, Any] = answer.json()
        return data

    def submit(self, scenes: int) -> tuple[float, list[str]]:
        """Post a live batch; (the wall-clock second it was sent, its job ids)."""
        tag = uuid.uuid4().hex[:6]
        items = [
            {"scene_id": f"g{tag}-{i}", "prompt": f"bench {tag} {i}", "variants": VARIANTS}
            for i in range(scenes)
        ]
        self.worksheet.append_rows(
            [[i["scene_id"], i["prompt"], "", VARIANTS] for i in items],
            value_input_option="RAW",
            table_range="A1",
        )
        sent = time.time()
        answer = requests.post(
            f"{self.env['API_URL']}/batch/images",
            json={
                "items": items,
                "runMode": "live",
                "spreadsheet_id": self.env["SPREADSHEET_ID"],
                "worksheet": self.env["WORKSHEET"],
            },
            headers={"X-API-Key": self.env["API_KEY"]},
            timeout=120,
        )
        answer.raise_for_status()
        return sent, [job["job_id"] for job in answer.json()["jobs"]]

    def wait_uploaded(self, job_ids: list[str], timeout_s: float = 600) -> list[dict[str, Any]]:
        """The job documents once every variant is uploaded (or further)."""
        deadline = time.monotonic() + timeout_s
        while True:
            docs: list[dict[str, Any]] = [
                self.db.collection("jobs").document(j).get().to_dict() or {} for j in job_ids
            ]
            if all(
                v["generated_at"] is not None or v["state"] == "failed"
                for doc in docs
                for v in doc.get("variants", {"-": {"generated_at": None, "state": ""}}).values()
            ):
                return docs
            if time.monotonic() > deadline:
                raise TimeoutError("variants not uploaded in time")
            time.sleep(0.2)


def _ts(value: datetime) -> float:
    return value.timestamp()


def one_job(bench: Bench, latency_s: float, runs: int) -> list[float]:
    """Generate-function time of a 3-variant job, in units of L, per run."""
    ratios = []
    for _ in range(runs):
        _, (job_id,) = bench.submit(1)
        (doc,) = bench.wait_uploaded([job_id])
        last = max(_ts(v["generated_at"]) for v in doc["variants"].values())
        ratios.append((last - _ts(doc["started_at"])) / latency_s)
    return ratios


def batch(bench: Bench, latency_s: float, scenes: int) -> dict[str, float]:
    bench.stub("reset", {})
    sent, job_ids = bench.submit(scenes)
    docs = bench.wait_uploaded(job_ids)
    last = max(_ts(v["generated_at"]) for d in docs for v in d["variants"].values())
    stats = bench.stub("stats")
    calls = stats["generated"]
    parallel_calls = stats["max_concurrency"]
    per_job = min(VARIANTS, GENERATE_CONCURRENCY)
    deliveries = max(1, parallel_calls // per_job)
    bound_configured = math.ceil(scenes / THREADS) * math.ceil(VARIANTS / per_job) * latency_s
    bound_observed = math.ceil(scenes / deliveries) * math.ceil(VARIANTS / per_job) * latency_s
    wall = last - sent
    return {
        "wall_s": wall,
        "calls": calls,
        "max_parallel_calls": parallel_calls,
        "deliveries_at_once": deliveries,
        "bound_configured_s": bound_configured,
        "bound_observed_s": bound_observed,
        "ratio_configured": wall / bound_configured,
        "ratio_observed": wall / bound_observed,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-ms", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenes", type=int, default=30)
    args = parser.parse_args()
    latency_s = args.latency_ms / 1000
    with tempfile.TemporaryDirectory() as state:
        stack = Stack(
            StackConfig(
                state_dir=Path(state),
                gemini_latency_ms=args.latency_ms,
                function_env={
                    "GENERATE_CONCURRENCY": str(GENERATE_CONCURRENCY),
                    "THREADS": str(THREADS),
                    "DAILY_IMAGE_CAP": "100000",
                    "DAILY_COST_CAP_USD": "100000",
                },
            )
        )
        env = stack.start()
        try:
            bench = Bench(env)
            bench.submit(1)  # warm every function instance (imports, clients, connections)
            time.sleep(3 * latency_s + 2)
            ratios = one_job(bench, latency_s, args.runs)
            figures = batch(bench, latency_s, args.scenes)
        finally:
            stack.stop()
    print(
        f"stub latency L = {latency_s:.1f} s; GENERATE_CONCURRENCY = {GENERATE_CONCURRENCY}, "
        f"generate THREADS = {THREADS}"
    )
    print(
        f"one job of {VARIANTS} variants (job started -> last variant uploaded): "
        f"median {statistics.median(ratios):.2f} x L (runs: "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + f"; {VARIANTS} x L would be sequential)"
    )
    print(
        f"batch of {args.scenes} scenes x {VARIANTS} variants ({figures['calls']:.0f} Gemini "
        f"calls): submit -> last upload {figures['wall_s']:.1f} s"
    )
    print(
        f"  at most {figures['max_parallel_calls']:.0f} Gemini calls at once seen by the stub = "
        f"{figures['deliveries_at_once']:.0f} deliveries x {min(VARIANTS, GENERATE_CONCURRENCY)} "
        "variants"
    )
    print(
        f"  bound with D = THREADS = {THREADS}: ceil({args.scenes}/{THREADS}) x L = "
        f"{figures['bound_configured_s']:.1f} s -> ratio {figures['ratio_configured']:.2f}"
    )
    print(
        f"  bound with the observed D = {figures['deliveries_at_once']:.0f}: "
        f"{figures['bound_observed_s']:.1f} s -> ratio {figures['ratio_observed']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
