"""Economy-lane benchmark (issue 13): 100 images through Gemini's Batch API, and
the same batch through the live lane for comparison.

    .venv/bin/python -m bench.economy_bench [--images 100] [--latency-ms 1000]
                                            [--tick-s 5]

On one local stack (the Gemini stub answers each live call after --latency-ms;
the dev stack's scheduler calls the economy tick every --tick-s, a real window):

- live: a batch of N images (scenes of 2 variants) sent in the live lane; wall
  time from the 202 to the last sheet row showing its thumbnails;
- economy: the same batch in the economy lane. The stub holds the Gemini batch
  pending until it is submitted, then lets it succeed at once; wall time from
  that success to the last sheet row.

Reports, per lane: Gemini API calls by kind (generateContent, batch creations,
batch reads, file uploads and downloads), collector runs (ticks that worked on
the batch after its success), Firestore writes per image (Commit/BatchWrite
calls of every function process, counted by bench.firestore_meter), and the
economy wall time as a ratio to the live one. Reports figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bench import firestore_meter
from devstack.stack import REPO, Stack, StackConfig, sheets_client

VARIANTS = 2
GEMINI_COUNTERS = (
    "requests",
    "batch_creations",
    "batch_gets",
    "batch_lists",
    "files_uploaded",
    "file_downloads",
    "batch_lines",
)


@dataclass
class Lane:
    lane: str
    images: int
    wall_s: float
    gemini: dict[str, int]
    firestore_calls: int
    firestore_writes: int
    collector_runs: int = 0
    ticks: int = 0

    def line(self) -> str:
        calls = ", ".join(f"{k} {v}" for k, v in self.gemini.items() if v)
        ticks = (
            f"; collector runs {self.collector_runs} (of {self.ticks} ticks)"
            if self.lane == "economy"
            else ""
        )
        return (
            f"{self.lane:8s} {self.images} images: wall {self.wall_s:6.1f} s; "
            f"Gemini calls: {calls or 'none'}{ticks}; Firestore {self.firestore_writes} writes "
            f"in {self.firestore_calls} commits = {self.firestore_writes / self.images:.2f} "
            f"writes/image"
        )


class Bench:
    def __init__(self, stack: Stack, env: dict[str, str], meter_log: Path) -> None:
        self.stack = stack
        self.env = env
        self.meter_log = meter_log
        self.headers = {"X-API-Key": env["API_KEY"]}
        self.worksheet = (
            sheets_client(env["SHEETS_API_URL"])
            .open_by_key(env["SPREADSHEET_ID"])
            .worksheet(env["WORKSHEET"])
        )

    def stub(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.env['GEMINI_STUB_URL']}/_stub/{path}"
        answer = (
            requests.post(url, json=payload, timeout=30)
            if payload is not None
            else requests.get(url, timeout=30)
        )
        answer.raise_for_status()
        data: dict[str, Any] = answer.json()
        return data

    def items(self, lane: str, images: int) -> list[dict[str, Any]]:
        tag = uuid.uuid4().hex[:6]
        items = [
            {"scene_id": f"{lane[:3]}{tag}-{i}", "prompt": f"{lane} bench {tag} {i}", "variants": 2}
            for i in range(images // VARIANTS)
        ]
        self.worksheet.append_rows(
            [[i["scene_id"], i["prompt"], "", VARIANTS] for i in items],
            value_input_option="RAW",
            table_range="A1",
        )
        return items

    def post(self, items: list[dict[str, Any]], lane: str) -> None:
        body = {
            "items": items,
            "runMode": "live",
            "lane": lane,
            "spreadsheet_id": self.env["SPREADSHEET_ID"],
            "worksheet": self.env["WORKSHEET"],
        }
        answer = requests.post(
            f"{self.env['API_URL']}/batch/images", json=body, headers=self.headers, timeout=120
        )
        answer.raise_for_status()

    def wait_rows(self, items: list[dict[str, Any]], timeout_s: float = 1800) -> None:
        """Until every scene's row is final with its thumbnails."""
        wanted = {i["scene_id"] for i in items}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            grid = self.worksheet.get_all_values(value_render_option="FORMULA")
            header = grid[0]
            status, first, second = (
                header.index(c) for c in ("status_img", "nano_img_1", "nano_img_2")
            )
            done = {
                row[0]
                for row in grid[1:]
                if row
                and row[0] in wanted
                and len(row) > second
                and not row[status].startswith(("queued", "generating", "economy", "waiting"))
                and row[first].startswith("=IMAGE(")
                and row[second].startswith("=IMAGE(")
            }
            if done == wanted:
                return
            time.sleep(0.25)
        raise TimeoutError("rows not final in time")

    def gemini_delta(self, before: dict[str, Any]) -> dict[str, int]:
        after = self.stub("stats")
        return {k: int(after[k]) - int(before[k]) for k in GEMINI_COUNTERS}

    def live(self, images: int) -> Lane:
        items = self.items("live", images)
        gemini, writes = self.stub("stats"), firestore_meter.read(self.meter_log)
        started = time.monotonic()
        self.post(items, "live")
        self.wait_rows(items)
        wall = time.monotonic() - started
        time.sleep(2)  # late writes (the job's last row) land in the count
        counted = firestore_meter.read(self.meter_log)
        return Lane(
            "live",
            len(items) * VARIANTS,
            wall,
            self.gemini_delta(gemini),
            counted.calls - writes.calls,
            counted.writes - writes.writes,
        )

    def economy(self, images: int) -> Lane:
        items = self.items("economy", images)
        gemini, writes = self.stub("stats"), firestore_meter.read(self.meter_log)
        self.stub("batch-config", {"pending_s": 3600, "running_s": 0})
        self.post(items, "economy")
        prompts = {i["prompt"] for i in items}
        held = self.held_batch(prompts, len(items) * VARIANTS)
        ticks_log = self.stack.state / "logs" / "fn-economy.log"
        offset = ticks_log.stat().st_size
        self.stub(f"batches/{held.removeprefix('batches/')}", {"pending_s": 0, "running_s": 0})
        started = time.monotonic()
        self.wait_rows(items)
        wall = time.monotonic() - started
        time.sleep(2)
        counted = firestore_meter.read(self.meter_log)
        reports = ticks_after(ticks_log, offset)
        return Lane(
            "economy",
            len(items) * VARIANTS,
            wall,
            self.gemini_delta(gemini),
            counted.calls - writes.calls,
            counted.writes - writes.writes,
            collector_runs=sum(1 for r in reports if r["batches_checked"]),
            ticks=len(reports),
        )

    def held_batch(self, prompts: set[str], lines: int, timeout_s: float = 300) -> str:
        """The stub batch the scheduler's tick submitted for these prompts."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for batch in self.stub("batches")["batches"]:
                seen = {line["prompt"] for line in batch["lines"]}
                if seen and seen <= prompts and len(batch["lines"]) == lines:
                    self.stub("batch-config", {"pending_s": 0, "running_s": 0})
                    return str(batch["name"])
            time.sleep(0.5)
        raise TimeoutError("the economy batch was not submitted")


def ticks_after(log: Path, offset: int) -> list[dict[str, Any]]:
    """The economy tick reports logged after ``offset``."""
    with log.open("rb") as lines:
        lines.seek(offset)
        found = []
        for raw in lines:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if entry.get("event") == "economy_tick":
                found.append(ast.literal_eval(entry["state"]))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.economy_bench")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--latency-ms", type=int, default=1000, help="the stub's live latency")
    parser.add_argument("--tick-s", type=float, default=5.0, help="the scheduler's period")
    args = parser.parse_args(argv)
    state = Path(tempfile.mkdtemp(prefix="economy-bench-"))
    meter_log = state / "firestore-writes.log"
    site = firestore_meter.site_dir()
    stack = Stack(
        StackConfig(
            state_dir=state,
            gemini_latency_ms=args.latency_ms,
            economy_tick_s=args.tick_s,
            function_env={
                "PYTHONPATH": f"{site}:{REPO}",
                firestore_meter.LOG_VARIABLE: str(meter_log),
            },
        )
    )
    env = stack.start()
    try:
        bench = Bench(stack, env, meter_log)
        live = bench.live(args.images)
        print(live.line(), flush=True)
        economy = bench.economy(args.images)
        print(economy.line(), flush=True)
        print(
            f"economy / live wall time (success -> last row vs submit -> last row): "
            f"{economy.wall_s / live.wall_s:.2f} (tick every {args.tick_s:g} s, "
            f"live latency {args.latency_ms} ms)",
            flush=True,
        )
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
