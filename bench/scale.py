"""Scale benchmark (issue 23): many spreadsheets on one deployment, at the Gemini pace.

    .venv/bin/python -m bench.scale [--sheets 10] [--images 1000] [--quota 240]

On the local stack, whose Gemini stub allows ``--quota`` images in any rolling
minute and whose Sheets stub allows the service account 60 write requests a
minute (answering 429 as Sheets does), ``--sheets`` spreadsheets each send one
batch at once (scenes of 4 variants, ``--images`` in all). Every function process
counts its Firestore writes by document (``bench.firestore_meter``).

It reports:

- the wall time from the first submit to the last job ended, against the ideal
  (images / quota minutes; target <= 1.15);
- the Sheets stub's refusals (429; with ``--fleet-pace 0`` each function process
  paces itself alone, as before the fleet's pace) and the refusals that reached a job (a job that
  ended with a ``sheet_error``, or whose row never showed all its images; target 0);
- the lag from a scene's last thumbnail to its row showing every image (p50, p95,
  max), read by polling every sheet each second;
- the most writes to any one Firestore document in any 60 s window (target <= 60),
  which document that was, and the largest document's approximate size (its JSON)
  before the batches and after.

Real time windows: the run takes about images / quota minutes. Reports figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from bench import firestore_meter
from devstack.stack import HEADER, REPO, Stack, StackConfig, emulator_env, sheets_client

VARIANTS = 4
SHEETS_QUOTA = 60
TERMINAL = {"completed", "partial", "failed", "cancelled"}
# The seed's header has three image columns: the bench's sheets have four.
BENCH_HEADER = [*HEADER[:-1], "nano_img_4", HEADER[-1]]
IMAGE_COLUMNS = [BENCH_HEADER.index(f"nano_img_{n}") for n in range(1, VARIANTS + 1)]


@dataclass
class Sheet:
    spreadsheet_id: str
    scenes: list[str]
    batch_id: str = ""
    job_of: dict[str, str] = field(default_factory=dict)  # scene -> job
    row_done_at: dict[str, float] = field(default_factory=dict)  # scene -> epoch seconds


def make_sheets(env: dict[str, str], count: int, scenes_each: int, tag: str) -> list[Sheet]:
    """``count`` spreadsheets (the stack's own first) with their scene rows."""
    client = sheets_client(env["SHEETS_API_URL"])
    ids = [env["SPREADSHEET_ID"]]
    for n in range(1, count):
        answer = client.http_client.request(
            "post",
            "https://sheets.googleapis.com/v4/spreadsheets",
            json={"properties": {"title": f"scale bench {n}"}},
        ).json()
        book = client.open_by_key(answer["spreadsheetId"])
        book.add_worksheet(env["WORKSHEET"], rows=scenes_each + 10, cols=len(BENCH_HEADER))
        ids.append(book.id)
    sheets = []
    for n, spreadsheet_id in enumerate(ids):
        scenes = [f"s{tag}-{n}-{i:03d}" for i in range(scenes_each)]
        tab = client.open_by_key(spreadsheet_id).worksheet(env["WORKSHEET"])
        tab.resize(rows=scenes_each + 10, cols=len(BENCH_HEADER))
        tab.update([BENCH_HEADER], "A1", value_input_option="RAW")
        tab.append_rows(
            [[scene, f"scale bench {scene}", "", VARIANTS] for scene in scenes],
            value_input_option="RAW",
            table_range="A1",
        )
        sheets.append(Sheet(spreadsheet_id, scenes))
    return sheets


def submit(env: dict[str, str], sheet: Sheet) -> None:
    body = {
        "items": [
            {"scene_id": s, "prompt": f"scale bench {s}", "variants": VARIANTS}
            for s in sheet.scenes
        ],
        "runMode": "live",
        "spreadsheet_id": sheet.spreadsheet_id,
        "worksheet": env["WORKSHEET"],
    }
    answer = requests.post(
        f"{env['API_URL']}/batch/images",
        json=body,
        headers={"X-API-Key": env["API_KEY"]},
        timeout=120,
    )
    answer.raise_for_status()
    sheet.batch_id = answer.json()["batch_id"]
    sheet.job_of = {job["scene_id"]: job["job_id"] for job in answer.json()["jobs"]}


def watch_rows(env: dict[str, str], sheets: list[Sheet], stop: threading.Event) -> None:
    """Poll every sheet each second; note when each scene's row shows every image."""
    client = sheets_client(env["SHEETS_API_URL"])
    tabs = [client.open_by_key(s.spreadsheet_id).worksheet(env["WORKSHEET"]) for s in sheets]
    while not stop.is_set():
        for sheet, tab in zip(sheets, tabs, strict=True):
            now = time.time()
            for row in tab.get_all_values(value_render_option="FORMULA")[1:]:
                scene = row[0] if row else ""
                if scene in sheet.row_done_at or scene not in sheet.job_of:
                    continue
                cells = [row[c] if c < len(row) else "" for c in IMAGE_COLUMNS]
                if all(cell.startswith("=IMAGE(") for cell in cells):
                    sheet.row_done_at[scene] = now
        stop.wait(1.0)


def batch_states(env: dict[str, str], sheet: Sheet) -> dict[str, dict[str, Any]]:
    headers = {"X-API-Key": env["API_KEY"]}
    views = {}
    for job_id in sheet.job_of.values():
        views[job_id] = requests.get(
            f"{env['API_URL']}/status/{job_id}", headers=headers, timeout=60
        ).json()
    return views


def thumbnail_times(env: dict[str, str]) -> dict[str, float]:
    """Each job's last thumbnail, as Cloud Storage recorded its creation."""
    from google.cloud import storage  # type: ignore[attr-defined]

    bucket = env.get("THUMBNAILS_BUCKET") or env["IMAGES_BUCKET"]
    last: dict[str, float] = {}
    client = storage.Client(project=env["GOOGLE_CLOUD_PROJECT"])
    for blob in client.list_blobs(bucket, prefix=env.get("THUMBNAILS_PREFIX", "thumbnails/")):
        parts = str(blob.name).split("/")
        if len(parts) >= 4 and blob.time_created is not None:
            job_id = parts[2]
            last[job_id] = max(last.get(job_id, 0.0), blob.time_created.timestamp())
    return last


def largest_document(env: dict[str, str]) -> tuple[int, str]:
    """The largest Firestore document, by the size of its fields as JSON."""
    from google.cloud import firestore  # type: ignore[attr-defined]

    client = firestore.Client(project=env["GOOGLE_CLOUD_PROJECT"])
    best = (0, "")

    def walk(collection: Any) -> None:
        nonlocal best
        for snap in collection.stream():
            size = len(json.dumps(snap.to_dict(), default=str)) + len(snap.reference.path)
            best = max(best, (size, snap.reference.path))
            for child in snap.reference.collections():
                walk(child)

    for collection in client.collections():
        walk(collection)
    return best


def hottest_document(log: Path) -> tuple[int, str]:
    """The most writes to one document within any 60 s window (and which one)."""
    times: dict[str, list[float]] = defaultdict(list)
    if log.exists():
        for line in log.read_text().splitlines():
            kind, _, rest = line.partition(" ")
            if kind != "doc":
                continue
            at, _, name = rest.partition(" ")
            times[name].append(float(at))
    best = (0, "")
    for name, stamps in times.items():
        window: deque[float] = deque()
        for stamp in sorted(stamps):
            window.append(stamp)
            while window[0] < stamp - 60.0:
                window.popleft()
            best = max(best, (len(window), name))
    return best


def run(sheets_count: int, images: int, quota: int, fleet_pace: float, timeout_s: float) -> int:
    state = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    meter_log = state / "firestore-writes.log"
    site = firestore_meter.site_dir()
    stack = Stack(
        StackConfig(
            state_dir=state,
            gemini_latency_ms=500,
            gemini_quota_per_minute=quota,
            economy_tick_s=5.0,
            function_env={
                "PYTHONPATH": f"{site}:{REPO}",
                firestore_meter.LOG_VARIABLE: str(meter_log),
                firestore_meter.DOCS_VARIABLE: "1",
                "ALLOWED_SPREADSHEET_IDS": "*",
                "DAILY_IMAGE_CAP": str(images * 10),
                "GEMINI_IMAGES_PER_MINUTE": str(round(quota * 0.97, 2)),
                # As Terraform sets them: each instance may use the quota alone, the
                # fleet's pace shares it.
                "SHEETS_WRITES_PER_MINUTE": str(SHEETS_QUOTA),
                "SHEETS_FLEET_WRITES_PER_MINUTE": str(fleet_pace),
            },
        )
    )
    env = stack.start()
    try:
        with emulator_env(env):
            requests.post(
                f"{env['SHEETS_API_URL']}/_stub/quota",
                json={"write_quota_per_minute": SHEETS_QUOTA},
                timeout=30,
            ).raise_for_status()
            tag = uuid.uuid4().hex[:5]
            scenes_each = max(1, images // VARIANTS // sheets_count)
            sheets = make_sheets(env, sheets_count, scenes_each, tag)
            total = scenes_each * sheets_count * VARIANTS
            before = largest_document(env)
            requests.post(f"{env['SHEETS_API_URL']}/_stub/reset_stats", timeout=30)
            meter_log.write_text("")
            stop = threading.Event()
            started = time.time()
            with ThreadPoolExecutor(sheets_count) as pool:
                list(pool.map(lambda s: submit(env, s), sheets))
            watcher = threading.Thread(target=watch_rows, args=(env, sheets, stop), daemon=True)
            watcher.start()
            ended_at = 0.0
            views: dict[str, dict[str, Any]] = {}
            while time.time() - started < timeout_s:
                views = {}
                for sheet in sheets:
                    views.update(batch_states(env, sheet))
                if all(v.get("state") in TERMINAL for v in views.values()):
                    ended_at = ended_at or time.time()
                rows_done = sum(len(s.row_done_at) for s in sheets)
                if ended_at and (rows_done == len(views) or time.time() - ended_at > 120):
                    break
                time.sleep(2.0)
            stop.set()
            watcher.join(timeout=30)
            report(env, sheets, views, started, ended_at, total, quota, before, meter_log)
    finally:
        stack.stop()
    return 0


def report(
    env: dict[str, str],
    sheets: list[Sheet],
    views: dict[str, dict[str, Any]],
    started: float,
    ended_at: float,
    images: int,
    quota: int,
    before: tuple[int, str],
    meter_log: Path,
) -> None:
    ideal = images / quota * 60.0
    wall = (ended_at or time.time()) - started
    stats = requests.get(f"{env['SHEETS_API_URL']}/_stub/stats", timeout=30).json()
    sheet_errors = [j for j, v in views.items() if v.get("sheet_error")]
    thumbs = thumbnail_times(env)
    lags, missing = [], 0
    for sheet in sheets:
        for scene, job_id in sheet.job_of.items():
            done = sheet.row_done_at.get(scene)
            if done is None:
                missing += int(views.get(job_id, {}).get("state") == "completed")
            elif job_id in thumbs:
                lags.append(max(0.0, done - thumbs[job_id]))
    states: dict[str, int] = defaultdict(int)
    for view in views.values():
        states[str(view.get("state"))] += 1
    hot, hot_doc = hottest_document(meter_log)
    after = largest_document(env)
    lags.sort()
    p95 = lags[max(0, int(len(lags) * 0.95) - 1)] if lags else float("nan")
    print(
        f"spreadsheets {len(sheets)}, images {images}, Gemini quota {quota}/min, "
        f"Sheets quota {SHEETS_QUOTA}/min",
        flush=True,
    )
    print(f"jobs by state: {dict(states)}")
    print(f"wall {wall:.0f} s vs ideal {ideal:.0f} s: {wall / ideal:.3f} x ideal")
    print(
        f"Sheets: {stats.get('writes')} write requests, {stats.get('rejected_writes')} refused "
        f"(429); refusals that reached a job: {len(sheet_errors)} with sheet_error, "
        f"{missing} completed jobs whose row never showed every image"
    )
    if lags:
        print(
            f"thumbnail -> row lag: p50 {statistics.median(lags):.1f} s, p95 {p95:.1f} s, "
            f"max {lags[-1]:.1f} s ({len(lags)} scenes)"
        )
    print(f"most writes to one Firestore document in a 60 s window: {hot} ({hot_doc})")
    print(
        f"largest Firestore document (JSON bytes): before {before[0]} ({before[1]}), "
        f"after {after[0]} ({after[1]})"
    )
    print(f"run at {datetime.now().isoformat(timespec='seconds')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    parser.add_argument("--sheets", type=int, default=10)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--quota", type=int, default=240, help="the Gemini stub's images a minute")
    parser.add_argument(
        "--fleet-pace",
        type=float,
        default=57.0,
        help="SHEETS_FLEET_WRITES_PER_MINUTE (0: each instance paces itself alone)",
    )
    parser.add_argument("--timeout-s", type=float, default=3600.0)
    args = parser.parse_args(argv)
    return run(args.sheets, args.images, args.quota, args.fleet_pace, args.timeout_s)


if __name__ == "__main__":
    sys.exit(main())
