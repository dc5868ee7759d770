"""Export benchmark (issue 14): the hand-over zip of a large batch, time and peak memory.

    .venv/bin/python -m bench.export_bench [--sizes 30,300] [--image-mb 2]

On the local stack (fake-gcs-server on its filesystem backend, so 600 MB stay
off the heap), batches of N kept images of about ``--image-mb`` MB each are
seeded straight into Firestore and the bucket; then each is exported through
the real path: ``POST /batches/{id}:export`` to the HTTP function, the exports
topic, the export function (functions-framework) streaming every image from
the bucket into one zip that it uploads with a resumable upload (in parts, one
per delivery, joined at the end, when it does not fit in EXPORT_DEADLINE_S),
until ``GET /batches/{id}`` shows the download link.

For each size it reports the wall time (request to link), the zip's size and
throughput, the deliveries and parts it took and the mean time of a delivery,
and the export function's peak memory: its worker process's
resident set high-water mark (``VmHWM``), reset (``/proc/PID/clear_refs``)
after a warm-up export, against its resident set when idle. Reports figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from devstack.stack import Stack, StackConfig, emulator_env

VARIANTS = 4
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def worker_pids(leader: int) -> list[int]:
    """The processes of the service's group (functions-framework may fork a worker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == leader:  # the process group id
            pids.append(int(entry.name))
    return sorted(pids)


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pids: list[int]) -> None:
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def seed_batch(env: dict[str, str], images: int, image_bytes: int) -> str:
    """A batch of ``images`` kept images (jobs of VARIANTS variants), objects included."""
    from google.cloud import firestore, storage  # type: ignore[attr-defined]

    from shared.adapters.firestore_store import FirestoreJobStore
    from shared.domain.batch import Batch
    from shared.domain.job import Job, VariantState

    now = datetime.now(UTC)
    run = uuid.uuid4().hex[:6]
    batch_id = f"bat_bench{run}"
    bucket = storage.Client(project=env["GOOGLE_CLOUD_PROJECT"]).bucket(env["IMAGES_BUCKET"])
    jobs = []
    uploads = []
    for j in range((images + VARIANTS - 1) // VARIANTS):
        count = min(VARIANTS, images - j * VARIANTS)
        job = Job(
            job_id=f"job_bench{run}{j:04d}",
            batch_id=batch_id,
            scene_id=f"bench-{run}-{j:04d}",
            prompt=f"benchmark scene {j}",
            variant_count=count,
            caller="local-dev",
            spreadsheet_id=env["SPREADSHEET_ID"],
            worksheet=env["WORKSHEET"],
            model="gemini-3.1-flash-image",
            price_per_image="0.0670",
            created_at=now,
            updated_at=now,
            state="completed",
        )
        for n in range(1, count + 1):
            # Outside images/: no finalize notification, nothing to thumbnail.
            name = f"bench/{job.scene_id}/{job.job_id}/var_{n}.png"
            variant = job.variant(n)
            variant.state = VariantState.DONE
            variant.object_name = name
            variant.thumb_name = name
            variant.cost_usd = "0.0670"
            variant.generated_at = now
            uploads.append(name)
        jobs.append(job)

    def upload(name: str) -> None:
        # Random bytes do not compress: a stored zip member of the full size.
        data = PNG_SIGNATURE + os.urandom(image_bytes - len(PNG_SIGNATURE))
        bucket.blob(name).upload_from_string(data, content_type="image/png")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, uploads))
    store = FirestoreJobStore(firestore.Client(project=env["GOOGLE_CLOUD_PROJECT"]))
    store.create_batch(
        Batch(
            batch_id=batch_id,
            caller="local-dev",
            spreadsheet_id=env["SPREADSHEET_ID"],
            worksheet=env["WORKSHEET"],
            model="gemini-3.1-flash-image",
            job_ids=[job.job_id for job in jobs],
            image_count=images,
            estimated_cost_usd="0",
            created_at=now,
        ),
        jobs,
    )
    return batch_id


def export(
    env: dict[str, str], batch_id: str, timeout_s: float = 7200
) -> tuple[float, dict[str, Any]]:
    headers = {"X-API-Key": env["API_KEY"]}
    begin = time.monotonic()
    answer = requests.post(
        f"{env['API_URL']}/batches/{batch_id}:export", headers=headers, timeout=60
    )
    answer.raise_for_status()
    while time.monotonic() - begin < timeout_s:
        view = requests.get(f"{env['API_URL']}/batches/{batch_id}", headers=headers, timeout=60)
        state: dict[str, Any] = view.json().get("export") or {}
        if state.get("state") in ("done", "failed"):
            return time.monotonic() - begin, state
        time.sleep(0.2)
    raise TimeoutError(f"export of {batch_id} did not finish in {timeout_s} s")


def deliveries(env: dict[str, str], batch_id: str) -> tuple[int, int, float]:
    """The export's deliveries, its parts (a zip past one delivery's deadline is
    written in parts) and the mean time a delivery took, from its record."""
    from google.cloud import firestore  # type: ignore[attr-defined]

    from shared.adapters.firestore_store import FirestoreJobStore

    batch = FirestoreJobStore(firestore.Client(project=env["GOOGLE_CLOUD_PROJECT"])).get_batch(
        batch_id
    )
    export = batch.export if batch is not None else None
    if export is None or export.started_at is None or export.finished_at is None:
        return 0, 0, 0.0
    took = (export.finished_at - export.started_at).total_seconds()
    return export.deliveries, len(export.parts) + 1, took / max(1, export.deliveries)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.export_bench")
    parser.add_argument("--sizes", default="30,300", help="images per batch, comma-separated")
    parser.add_argument("--image-mb", type=float, default=2.0)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    image_bytes = int(args.image_mb * 1024 * 1024)
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        stack = Stack(
            StackConfig(state_dir=Path(tmp), gemini_latency_ms=0, gcs_backend="filesystem")
        )
        env = stack.start()
        try:
            with emulator_env(env):
                leader = next(s.pid for s in stack.services if s.name == "fn-export")
                warm = seed_batch(env, 2, 64 * 1024)
                export(env, warm)  # imports and clients loaded: an idle instance
                print(f"export function processes: {worker_pids(leader)}")
                print(
                    f"{'images':>6} {'zip MB':>8} {'wall s':>7} {'MB/s':>6} "
                    f"{'idle MB':>8} {'peak MB':>8} {'peak-idle MB':>12} "
                    f"{'deliveries':>10} {'parts':>5} {'s/delivery':>10}"
                )
                for size in sizes:
                    batch_id = seed_batch(env, size, image_bytes)
                    pids = worker_pids(leader)
                    reset_peak(pids)
                    idle = max(memory_kb(pid, "VmRSS") for pid in pids)
                    wall, state = export(env, batch_id)
                    peak = max(memory_kb(pid, "VmHWM") for pid in pids)
                    if state["state"] != "done":
                        print(f"{size:6d} export failed: {state.get('error')}")
                        continue
                    megabytes = state["bytes"] / 1024 / 1024
                    count, parts, each = deliveries(env, batch_id)
                    print(
                        f"{size:6d} {megabytes:8.1f} {wall:7.1f} {megabytes / wall:6.1f} "
                        f"{idle / 1024:8.1f} {peak / 1024:8.1f} {(peak - idle) / 1024:12.1f} "
                        f"{count:10d} {parts:5d} {each:10.1f}"
                    )
        finally:
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
