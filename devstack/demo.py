"""The main job: a batch of scenes from the sheet through the whole local stack.

It acts as the sheet's Apps Script would: reads the rows, asks for an estimate,
marks the rows queued, submits, then watches the jobs until each is finished.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import shutil
import sys
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from devstack.stack import HEADER, Stack, StackConfig, sheets_client

TERMINAL = {"completed", "partial", "failed", "cancelled"}
POLL_S = 1.0
# Columns the pipeline writes: never a template's fields.
PIPELINE_COLUMNS = {"status_img", "job_id", "error_img"}


@dataclass
class Client:
    """The HTTP calls the Apps Script client makes."""

    api_url: str
    api_key: str

    def post_batch(self, body: Mapping[str, Any]) -> requests.Response:
        return requests.post(
            f"{self.api_url}/batch/images",
            json=body,
            headers={"X-API-Key": self.api_key},
            timeout=60,
        )

    def post(self, path: str, body: Mapping[str, Any], key: str | None = None) -> dict[str, Any]:
        """A POST of the API that must succeed; its JSON answer."""
        headers = {"X-API-Key": self.api_key} | ({"Idempotency-Key": key} if key else {})
        answer = requests.post(f"{self.api_url}{path}", json=body, headers=headers, timeout=60)
        if answer.status_code >= 300:
            raise SystemExit(f"{path} failed: {answer.status_code} {answer.text}")
        data: dict[str, Any] = answer.json()
        return data

    def batch(self, batch_id: str) -> dict[str, Any]:
        answer = requests.get(
            f"{self.api_url}/batches/{batch_id}", headers={"X-API-Key": self.api_key}, timeout=30
        )
        answer.raise_for_status()
        data: dict[str, Any] = answer.json()
        return data

    def status(self, job_id: str) -> dict[str, Any]:
        answer = requests.get(
            f"{self.api_url}/status/{job_id}", headers={"X-API-Key": self.api_key}, timeout=30
        )
        answer.raise_for_status()
        data: dict[str, Any] = answer.json()
        return data


def reference_pngs() -> dict[str, bytes]:
    """Two small reference images and a zip of both, made on the spot."""
    from PIL import Image, ImageDraw

    images: dict[str, bytes] = {}
    for name, colour in (("palette-warm", (214, 110, 60)), ("palette-cool", (60, 120, 200))):
        image = Image.new("RGB", (256, 256), colour)
        ImageDraw.Draw(image).ellipse((48, 48, 208, 208), fill=(245, 235, 210))
        out = io.BytesIO()
        image.save(out, format="PNG")
        images[f"refs/{name}.png"] = out.getvalue()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in images.items():
            zf.writestr(Path(name).name, data)
    images["refs/pack.zip"] = archive.getvalue()
    # The character of the brief (examples/brief.json): a figure in a red scarf.
    mara = Image.new("RGB", (256, 256), (236, 230, 216))
    draw = ImageDraw.Draw(mara)
    draw.ellipse((98, 40, 158, 100), fill=(196, 150, 120))
    draw.rectangle((96, 100, 160, 210), fill=(40, 60, 90))
    draw.rectangle((92, 96, 164, 114), fill=(200, 30, 40))
    out = io.BytesIO()
    mara.save(out, format="PNG")
    images["refs/mara.png"] = out.getvalue()
    return images


def upload_references(env: Mapping[str, str]) -> None:
    from devstack.stack import emulator_env

    with emulator_env(env):
        from google.cloud import storage  # type: ignore[attr-defined]

        bucket = storage.Client(project=env["GOOGLE_CLOUD_PROJECT"]).bucket(env["IMAGES_BUCKET"])
        for name, data in reference_pngs().items():
            content_type = "application/zip" if name.endswith(".zip") else "image/png"
            bucket.blob(name).upload_from_string(data, content_type=content_type)


def load_scenes(env: Mapping[str, str], scenes_csv: Path) -> list[dict[str, str]]:
    """Put the example scenes into the local sheet, below the header; columns the
    pipeline does not know (a template's fields, ``characters``, ``avoid``) are added
    after its own, as a team adds them."""
    with scenes_csv.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        columns = HEADER + [c for c in reader.fieldnames or [] if c not in HEADER]
    worksheet = (
        sheets_client(env["SHEETS_API_URL"])
        .open_by_key(env["SPREADSHEET_ID"])
        .worksheet(env["WORKSHEET"])
    )
    if worksheet.col_count < len(columns):
        worksheet.resize(cols=len(columns))
    worksheet.update([columns], "A1", value_input_option="RAW")
    values = [[row.get(column, "") for column in columns] for row in rows]
    worksheet.batch_clear([f"A2:{_column(len(columns))}{max(len(values) + 50, 200)}"])
    worksheet.update(values, "A2", value_input_option="RAW")
    return rows


def _column(number: int) -> str:
    """A1 letters of a 1-based column number."""
    letters = ""
    while number:
        number, rest = divmod(number - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def load_brief(scenes_csv: Path) -> dict[str, Any]:
    """The sheet's named ranges the demo uses: the template and the characters."""
    brief: dict[str, Any] = json.loads(scenes_csv.with_name("brief.json").read_text())
    return brief


def scene_item(row: Mapping[str, str], brief: Mapping[str, Any]) -> dict[str, Any]:
    """A row as the sheet sends it: its prompt, or (prompt empty) the template with
    the row's columns, and the characters it names with their references."""
    item: dict[str, Any] = {
        "scene_id": row["scene_id"],
        "ref_pack_public_url": row["ref_pack_public_url"] or None,
        "variants": int(row["variants"] or 1),
    }
    if row.get("prompt"):
        item["prompt"] = row["prompt"]
    else:
        item["template"] = {"name": "default", "text": brief["prompt_template"]}
        item["fields"] = {
            name: value
            for name, value in row.items()
            if name not in PIPELINE_COLUMNS and not name.startswith("nano_img_")
        }
    if row.get("avoid"):
        item["avoid"] = row["avoid"]
    table = [(name, ref) for name, ref in brief.get("characters", [])]
    named = [n.strip() for n in (row.get("characters") or "").split(",") if n.strip()]
    references = [
        {"role": "character", "name": name, "ref": ref}
        for wanted in named
        for name, ref in table
        if name.lower() == wanted.lower()
    ]
    if references:
        item["references"] = references
    return item


def read_sheet(env: Mapping[str, str], render: str = "FORMATTED_VALUE") -> list[dict[str, str]]:
    """The sheet's rows by header name, as the Apps Script reads them."""
    worksheet = (
        sheets_client(env["SHEETS_API_URL"])
        .open_by_key(env["SPREADSHEET_ID"])
        .worksheet(env["WORKSHEET"])
    )
    grid = worksheet.get_all_values(value_render_option=render)
    header = grid[0]
    return [
        {name: (row[i] if i < len(row) else "") for i, name in enumerate(header)}
        for row in grid[1:]
        if any(row)
    ]


def write_cells(env: Mapping[str, str], updates: Sequence[tuple[int, str, str]]) -> None:
    """Write (row, column name, text) cells in one call, as text."""
    worksheet = (
        sheets_client(env["SHEETS_API_URL"])
        .open_by_key(env["SPREADSHEET_ID"])
        .worksheet(env["WORKSHEET"])
    )
    data = [
        {"range": f"{chr(65 + HEADER.index(column))}{row}", "values": [[value]]}
        for row, column, value in updates
    ]
    worksheet.batch_update(data, value_input_option="RAW")


def submit(
    env: Mapping[str, str], client: Client, brief: Mapping[str, Any], lane: str = "live"
) -> tuple[str, dict[str, str]]:
    """Estimate, mark queued, submit in ``lane``; returns the batch id and
    scene_id -> job_id."""
    rows = read_sheet(env)
    items = [scene_item(row, brief) for row in rows]
    body = {
        "items": items,
        "lane": lane,
        "spreadsheet_id": env["SPREADSHEET_ID"],
        "worksheet": env["WORKSHEET"],
    }
    estimate = client.post_batch({**body, "runMode": "dry_run"})
    estimate.raise_for_status()
    plan = estimate.json()
    print(
        f"estimate: {plan['job_count']} jobs, {plan['image_count']} images, "
        f"${plan['estimated_cost_usd']} with {plan['model']} in the {lane} lane "
        f"(live ${plan['lanes']['live']}, economy ${plan['lanes']['economy']})"
    )
    for job in plan["jobs"]:
        if not next(i for i in items if i["scene_id"] == job["scene_id"]).get("prompt"):
            print(f"  {job['scene_id']} from the template: {job['prompt']!r}")
    for size in ("2K", "4K"):
        print_delivered_costs(client, body, size)
    # Rows are marked before the batch goes out, so a fast job can never be
    # overwritten by a late "queued".
    write_cells(env, [(i + 2, "status_img", "queued") for i in range(len(rows))])
    answer = client.post_batch({**body, "runMode": "live"})
    if answer.status_code != 202:
        raise SystemExit(f"submit failed: {answer.status_code} {answer.text}")
    result = answer.json()
    jobs = {job["scene_id"]: job["job_id"] for job in result["jobs"]}
    row_of = {row["scene_id"]: i + 2 for i, row in enumerate(rows)}
    write_cells(env, [(row_of[scene], "job_id", job) for scene, job in jobs.items()])
    print(f"batch {result['batch_id']} accepted: {len(jobs)} jobs")
    return result["batch_id"], jobs


def watch(client: Client, jobs: Mapping[str, str], timeout_s: float) -> dict[str, dict[str, Any]]:
    """Poll every job until all are terminal; print a progress line as they move."""
    deadline = time.monotonic() + timeout_s
    last = ""
    views: dict[str, dict[str, Any]] = {}
    while True:
        views = {scene: client.status(job_id) for scene, job_id in jobs.items()}
        counts: dict[str, int] = {}
        for view in views.values():
            # A job waiting for the quota is still generating; say which.
            state = "waiting" if view.get("waiting") else view["state"]
            if view.get("gemini_batches") and state not in TERMINAL:
                state = f"in a Gemini batch ({view['gemini_batches'][-1]['state']})"
            counts[state] = counts.get(state, 0) + 1
        line = ", ".join(f"{state} {n}" for state, n in sorted(counts.items()))
        if line != last:
            print(f"  [{time.strftime('%H:%M:%S')}] {line}")
            last = line
        if all(v["state"] in TERMINAL for v in views.values()):
            return views
        if time.monotonic() > deadline:
            print("timed out waiting for jobs", file=sys.stderr)
            return views
        time.sleep(POLL_S)


def wait_for_sheet(env: Mapping[str, str], jobs: Mapping[str, str], timeout_s: float) -> None:
    """The sheet is written just after a job's last state change: wait for it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = {row["scene_id"]: row for row in read_sheet(env)}
        if all(
            rows.get(scene, {}).get("status_img", "").split(" ")[0].rstrip(":") in TERMINAL
            for scene in jobs
        ):
            return
        time.sleep(POLL_S)


def print_delivered_costs(client: Client, body: Mapping[str, Any], size: str = "2K") -> None:
    """What one delivered image per scene costs at ``size``: every variant made at
    that size, or drafts at the catalog's cheapest and the pick promoted."""
    at_size = {**body, "items": [{**i, "image_size": size} for i in body["items"]]}
    answer = client.post_batch({**at_size, "runMode": "dry_run", "drafts": True})
    answer.raise_for_status()
    paths = answer.json()["delivered"]
    saving = paths["saving"]
    verdict = f"costs {saving.lstrip('-')} more" if saving.startswith("-") else f"saves {saving}"
    print(
        f"per delivered image at {size}: every variant at {size} "
        f"${paths['every_image_final_usd']}; drafts then promote the pick "
        f"${paths['drafts_then_promote_usd']} ({verdict})"
    )


def review_and_deliver(
    env: Mapping[str, str], client: Client, batch_id: str, jobs: Mapping[str, str], output: Path
) -> list[str]:
    """The team's review: variant 1 of every scene approved, the first scene's
    other variants rejected and its variant 1 picked as final, then promoted to 2K;
    the approved images delivered to the Drive folder, copied into
    ``output/delivered``. Returns what it printed."""
    lines: list[str] = []
    first = sorted(jobs)[0]
    for scene, job_id in sorted(jobs.items()):
        client.post(f"/jobs/{job_id}/variants/1:review", {"decision": "approved", "version": 1})
        if scene == first:
            for n in range(2, len(client.status(job_id)["variants"]) + 1):
                client.post(f"/jobs/{job_id}/variants/{n}:review", {"decision": "rejected"})
    job_id = jobs[first]
    client.post(f"/jobs/{job_id}:final", {"variant": 1, "version": 1})
    promoted = client.post(
        f"/jobs/{job_id}/variants/1:promote",
        {"image_size": "2K", "version": 1},
        key=f"demo-promote-{batch_id}",
    )
    lines.append(
        f"{first}: variant 1 picked as final and promoted to 2K (version "
        f"{promoted['version']}, estimated ${promoted['price_per_image_usd']})"
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = client.status(job_id)
        if (status.get("final") or {}).get("version") == promoted["version"]:
            break
        time.sleep(POLL_S)
    version = status["variants"][0]["versions"][-1]
    lines.append(
        f"  the promoted image is {version['state']} at {version['image_size']}, cost "
        f"${version['cost_usd']}; the final pick is now version {status['final']['version']}"
    )
    asked = client.post(
        f"/batches/{batch_id}:export",
        {
            "only": "approved",
            "name_template": "{scene_id}_{variant}_{version}",
            "destination": "drive",
            "drive_folder_id": env["DRIVE_FOLDER_ID"],
        },
    )
    while time.monotonic() < deadline + 120:
        export = client.batch(batch_id)["export"]
        if export["export_id"] == asked["export_id"] and export["state"] in ("done", "failed"):
            break
        time.sleep(POLL_S)
    files = requests.get(f"{env['DRIVE_STUB_URL']}/_files", timeout=10).json()["files"]
    target = output / "delivered"
    target.mkdir(parents=True, exist_ok=True)
    for item in files:
        if env["DRIVE_FOLDER_ID"] in item["parents"] and not item["trashed"]:
            data = requests.get(
                f"{env['DRIVE_STUB_URL']}/drive/v3/files/{item['id']}",
                params={"alt": "media", "supportsAllDrives": "true"},
                timeout=30,
            )
            data.raise_for_status()
            (target / item["name"]).write_bytes(data.content)
    lines.append(
        f"approved-only delivery to the Drive folder: {export['state']}, "
        f"{export.get('images')} approved images ({export.get('added')} new) and the "
        f"manifest (CSV, JSON), copied to {target}"
        + (f": {export['error']}" if export.get("error") else "")
    )
    return lines


def labelled_calls(env: Mapping[str, str]) -> list[str]:
    """What the Gemini stub received for the rows that name a character: the words
    that tell the model which reference image is whom."""
    answer = requests.get(f"{env['GEMINI_STUB_URL']}/_stub/requests", timeout=10)
    answer.raise_for_status()
    lines = []
    for call in answer.json()["requests"]:
        if call["prompt"].startswith("Image"):
            head = call["prompt"].split("\n")[0]
            images = len(call["reference_images"])
            lines.append(f"  Gemini got {images} reference image(s), told: {head!r}")
    return sorted(set(lines))


def team_news(env: Mapping[str, str], batch_id: str, timeout_s: float) -> str:
    """The Chat message the batch's end sent (the local Chat stub keeps it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = requests.get(f"{env['CHAT_STUB_URL']}/_messages", timeout=10)
        answer.raise_for_status()
        told = [m for m in answer.json()["messages"] if m["threadKey"] == batch_id]
        if told:
            return "\n\n".join(str(m["text"]) for m in told)
        time.sleep(POLL_S)
    return ""


def download(url: str, target: Path) -> None:
    """Follow a durable link (302 to a signed URL) and save what it serves."""
    answer = requests.get(url, timeout=60, allow_redirects=True)
    answer.raise_for_status()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(answer.content)


def write_output(
    env: Mapping[str, str],
    output: Path,
    scenes: Sequence[Mapping[str, str]],
    views: Mapping[str, Mapping[str, Any]],
) -> None:
    if output.exists():
        shutil.rmtree(output)
    (output / "images").mkdir(parents=True)
    (output / "thumbnails").mkdir()
    cards = []
    for scene in scenes:
        scene_id = scene["scene_id"]
        view = views.get(scene_id, {})
        tiles = []
        for variant in view.get("variants", []):
            n = variant["variant"]
            if "image_url" in variant and "thumbnail_url" in variant:
                image = Path("images") / scene_id / f"var_{n}.png"
                thumb = Path("thumbnails") / scene_id / f"var_{n}.jpg"
                download(variant["image_url"], output / image)
                download(variant["thumbnail_url"], output / thumb)
                tiles.append(f'<a href="{image}"><img src="{thumb}" alt="variant {n}"></a>')
            else:
                reason = html.escape(str(variant.get("error")))
                tiles.append(f'<div class="missing">variant {n}: {reason}</div>')
        state = view.get("status_text", "unknown")
        cards.append(
            f'<section class="{html.escape(view.get("state", ""))}">'
            f"<h2>{html.escape(scene_id)}</h2>"
            f"<p>{html.escape(view.get('prompt') or scene['prompt'])}</p>"
            f'<p class="status">{html.escape(state)}</p>'
            f'<div class="tiles">{"".join(tiles)}</div></section>'
        )
    (output / "gallery.html").write_text(GALLERY.format(cards="\n".join(cards)))
    grid = read_sheet(env, render="FORMULA")
    columns = list(grid[0]) if grid else HEADER
    with (output / "sheet.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(grid)


GALLERY = """<!doctype html>
<html><head><meta charset="utf-8"><title>Demo batch</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; background: #fafafa; }}
section {{ background: white; border-left: 6px solid #2e7d32; margin: 1rem 0;
  padding: .5rem 1rem; }}
section.failed {{ border-color: #c62828; }} section.partial {{ border-color: #f9a825; }}
.tiles {{ display: flex; gap: .5rem; flex-wrap: wrap; }} .tiles img {{ border: 1px solid #ccc; }}
.status {{ font-weight: bold; }} .missing {{ color: #c62828; }}
</style></head><body><h1>Demo batch</h1>
{cards}
</body></html>
"""


def summary(scenes: Sequence[Mapping[str, str]], views: Mapping[str, Mapping[str, Any]]) -> str:
    rows = [("scene_id", "variants", "state", "job_id")]
    for scene in scenes:
        view = views.get(scene["scene_id"], {})
        rows.append(
            (
                scene["scene_id"],
                scene["variants"],
                str(view.get("status_text", "not submitted")),
                str(view.get("job_id", "")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    )


def demo_lane(environ: Mapping[str, str]) -> str:
    """``DEMO_LANE=economy`` sends the demo batch through Gemini's Batch API."""
    lane = environ.get("DEMO_LANE") or "live"
    if lane not in ("live", "economy"):
        raise SystemExit(f"DEMO_LANE must be live or economy, not {lane!r}")
    return lane


def demo_config(state_dir: Path, environ: Mapping[str, str]) -> StackConfig:
    """The demo's stack; ``DEMO_IPM=20`` gives the Gemini stub a quota of 20 images a
    minute and paces the functions at ``DEMO_PACE`` (default: the same; 0: no pace,
    so the quota refuses calls and the rows show the wait)."""
    ipm = int(environ.get("DEMO_IPM") or 0)
    if ipm <= 0:
        return StackConfig(state_dir=state_dir)
    pace = environ.get("DEMO_PACE") or str(ipm)
    return StackConfig(
        state_dir=state_dir,
        gemini_quota_per_minute=ipm,
        function_env={"GEMINI_IMAGES_PER_MINUTE": pace},
    )


def run_demo(state_dir: Path, scenes_csv: Path, output: Path, timeout_s: float = 600) -> int:
    demo_state = state_dir / "demo"
    if demo_state.exists():
        Stack.stop_recorded(demo_state)
        shutil.rmtree(demo_state)
    config = demo_config(demo_state, os.environ)
    lane = demo_lane(os.environ)
    if config.gemini_quota_per_minute:
        print(
            f"Gemini stub quota: {config.gemini_quota_per_minute} images a minute; "
            f"functions paced at {config.function_env['GEMINI_IMAGES_PER_MINUTE']}"
        )
        timeout_s = max(timeout_s, 3600)
    stack = Stack(config)
    print("starting the local stack ...")
    started = time.monotonic()
    try:
        env = stack.start()
        print(f"stack up in {time.monotonic() - started:.1f} s; API at {env['API_URL']}")
        print(f"Gemini: {stack.gemini_endpoint}")
        upload_references(env)
        scenes = load_scenes(env, scenes_csv)
        print(f"loaded {len(scenes)} scenes into the sheet")
        client = Client(env["API_URL"], env["API_KEY"])
        batch_id, jobs = submit(env, client, load_brief(scenes_csv), lane)
        views = watch(client, jobs, timeout_s)
        batch = client.batch(batch_id)
        print(
            f"batch {batch_id}: estimated ${batch['estimated_cost_usd']}, "
            f"actual ${batch['cost_usd']} for {batch['image_count']} images"
        )
        wait_for_sheet(env, jobs, 60)
        write_output(env, output, scenes, views)
        for line in labelled_calls(env):
            print(line)
        print("\nthe team reviews:")
        for line in review_and_deliver(env, client, batch_id, jobs, output):
            print(f"  {line}")
        news = team_news(env, batch_id, 60)
        print("\nthe team's Chat space was told:")
        print("\n".join(f"  | {line}" for line in news.splitlines()) or "  nothing (timed out)")
        (output / "notification.txt").write_text(news + "\n")
    finally:
        stack.stop()
    print()
    print(summary(scenes, views))
    completed = sum(1 for v in views.values() if v["state"] == "completed")
    print(f"\n{completed}/{len(scenes)} jobs completed; output in {output}")
    return 0 if completed == len(scenes) else 1
