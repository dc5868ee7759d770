"""Generation over the whole local stack, with the Gemini stub scripted per prompt.

This module starts its own stack: the session stack keeps the production
Gemini timeout (120 s), and timing out a call there would cost minutes. Here a
call times out after 2 s, the SDK makes 2 attempts, and a claim lease lasts
28 s (GEMINI_BUDGET_S 8 s + 20 s), so redeliveries, failure budgets and the
takeover of a dead delivery's claim all happen within seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from devstack.stack import REPO, Stack, StackConfig, emulator_env, free_port
from tests.integration.conftest import (
    LiveStack,
    assert_each_job_finished_once,
    live_handles,
    push_body,
)

pytestmark = pytest.mark.integration

LINK_SIGNING_KEY = "generation-tests-link-key"
FUNCTION_ENV = {
    "GEMINI_TIMEOUT_S": "2",
    "GEMINI_RETRY_ATTEMPTS": "2",
    "GEMINI_RETRY_MAX_DELAY_S": "1",
    "GEMINI_BUDGET_S": "8",  # worst case 2 x 2 s + 1 s = 5 s
    "CLAIM_WAIT_S": "30",
    "LINK_SIGNING_KEY": LINK_SIGNING_KEY,
}
TERMINAL = {"completed", "partial", "failed", "cancelled"}


@dataclass
class GenStack:
    live: LiveStack
    stack: Stack

    @property
    def env(self) -> dict[str, str]:
        return self.live.env

    def script(self, rules: dict[str, dict[str, Any]]) -> None:
        """Stub rules by exact prompt: {prompt: {"mode": ..., "times": ..., ...}}."""
        body = [{"match": f"^{re.escape(p)}$", **rule} for p, rule in rules.items()]
        self.live.gemini("script", {"rules": body})

    def prompt_stats(self, prompt: str) -> dict[str, int]:
        stats: dict[str, int] = self.live.gemini("stats")["by_prompt"].get(prompt, {})
        return {"requests": stats.get("requests", 0), "generated": stats.get("generated", 0)}

    def submit(self, items: list[dict[str, Any]]) -> dict[str, str]:
        self.live.add_rows(items)
        answer = self.live.post_batch(items)
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body["unpublished"] == []
        return {job["scene_id"]: job["job_id"] for job in body["jobs"]}

    def job_doc(self, job_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = (
            self.live.firestore.collection("jobs").document(job_id).get().to_dict()
        )
        return doc

    def objects(self, scene_id: str) -> list[Any]:
        bucket = self.env["IMAGES_BUCKET"]
        return list(self.live.storage.list_blobs(bucket, prefix=f"images/{scene_id}/"))

    def generate_url(self, base: str | None = None) -> str:
        topic = f"/projects/{self.env['GOOGLE_CLOUD_PROJECT']}/topics/{self.env['JOBS_TOPIC']}"
        return (base or self.env["GENERATE_URL"]) + topic

    def wait_status(self, scene_id: str, check: Callable[[str], bool]) -> None:
        """Wait until the scene's ``status_img`` cell passes ``check``."""
        self.live.wait_for(
            lambda: check(self.live.sheet_row(scene_id)["status_img"]),
            what=f"the sheet's status of {scene_id}",
        )

    def function_logs(self, name: str = "fn-generate") -> list[dict[str, Any]]:
        path = self.stack.state / "logs" / f"{name}.log"
        entries = []
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    continue
        return entries


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GenStack]:
    stack = Stack(
        StackConfig(
            state_dir=Path(tmp_path_factory.mktemp("generation-stack")),
            gemini_latency_ms=50,
            retry_min_backoff_s=1,
            retry_max_backoff_s=2,
            function_env=dict(FUNCTION_ENV),
        )
    )
    env = stack.start()
    try:
        handles = GenStack(live_handles(env), stack)
        yield handles
        with emulator_env(env):
            assert_each_job_finished_once(stack.state, handles.live.firestore)
    finally:
        stack.stop()


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:6]


# --------------------------------------------------------------------------- answers


SUCCESSES: dict[str, tuple[dict[str, Any], str]] = {
    "text-before-image": ({"mode": "ok"}, "png"),
    "thought": ({"mode": "thought"}, "png"),
    "jpeg": ({"mode": "jpeg"}, "jpg"),
    "webp": ({"mode": "webp"}, "webp"),
    "image-only": ({"mode": "image_only"}, "png"),
    "429-then-ok": ({"mode": "http:429", "times": 1}, "png"),
    "500-then-ok": ({"mode": "http:500", "times": 1}, "png"),
    "503-then-ok": ({"mode": "http:503", "times": 1}, "png"),
    "timeout-then-ok": ({"mode": "timeout", "timeout_s": 4, "times": 1}, "png"),
}
FAILURES: dict[str, tuple[str, str]] = {
    "block-safety": ("block_prompt:SAFETY", "prompt blocked by Gemini for the safety filters"),
    "block-prohibited": (
        "block_prompt:PROHIBITED_CONTENT",
        "prompt blocked by Gemini for prohibited content (PROHIBITED_CONTENT)",
    ),
    "block-blocklist": ("block_prompt:BLOCKLIST", "prompt blocked by Gemini for blocklisted"),
    "block-other": ("block_prompt:OTHER", "prompt blocked by Gemini for an unspecified reason"),
    "image-safety": (
        "finish:IMAGE_SAFETY",
        "no image: the image was blocked by the safety filters (finish reason IMAGE_SAFETY)",
    ),
    "image-prohibited": (
        "finish:IMAGE_PROHIBITED_CONTENT",
        "no image: the image was blocked as prohibited content",
    ),
    "image-other": ("finish:IMAGE_OTHER", "(finish reason IMAGE_OTHER)"),
    "image-recitation": ("finish:IMAGE_RECITATION", "(finish reason IMAGE_RECITATION)"),
    "no-image": ("finish:NO_IMAGE", "the model made no image (finish reason NO_IMAGE); it said:"),
    "safety": ("finish:SAFETY", "blocked by the safety filters (finish reason SAFETY)"),
    "prohibited": ("finish:PROHIBITED_CONTENT", "(finish reason PROHIBITED_CONTENT)"),
    "recitation": ("finish:RECITATION", "(finish reason RECITATION)"),
    "blocklist": ("finish:BLOCKLIST", "(finish reason BLOCKLIST)"),
    "spii": ("finish:SPII", "sensitive personal information (finish reason SPII)"),
    "no-candidates": ("no_candidates", "Gemini returned no candidates"),
    "bad-base64": ("bad_base64", "Gemini returned malformed data: candidates.0.content.parts"),
    "bad-image": ("bad_image", "Gemini returned image data that is unusable"),
}


def failed_with(reason: str) -> Callable[[str], bool]:
    return lambda status: status.startswith("failed: variant 1: ") and reason in status


def test_every_kind_of_answer_ends_in_the_right_state_with_the_right_reason(
    gen: GenStack, tag: str
) -> None:
    prompts = {case: f"answer {case} {tag}" for case in [*SUCCESSES, *FAILURES, "timeouts"]}
    rules: dict[str, dict[str, Any]] = {prompts[c]: rule for c, (rule, _) in SUCCESSES.items()}
    rules |= {prompts[case]: {"mode": mode} for case, (mode, _) in FAILURES.items()}
    rules[prompts["timeouts"]] = {"mode": "timeout", "timeout_s": 3}
    gen.script(rules)
    items: list[dict[str, Any]] = [
        {"scene_id": f"ans-{case}-{tag}", "prompt": prompt, "variants": 1}
        for case, prompt in prompts.items()
    ]
    job_ids = gen.submit(items)
    views = gen.live.wait_jobs(list(job_ids.values()), timeout_s=240)

    for case, (rule, extension) in SUCCESSES.items():
        scene_id = f"ans-{case}-{tag}"
        view = views[job_ids[scene_id]]
        assert view["state"] == "completed", (case, view)
        (obj,) = gen.objects(scene_id)
        assert obj.name.endswith(f"/var_1.{extension}"), case
        mime = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}[extension]
        assert obj.content_type == mime
        assert obj.metadata["output_image_tokens"] == "1120"  # a 1K image
        variant = gen.job_doc(job_ids[scene_id])["variants"]["1"]
        # SDK retries stay inside one attempt; a quota refusal is waited out and
        # tried again in the same delivery, under a new claim, never as a failure.
        assert variant["attempts"] == (2 if "429" in case else 1), case
        assert variant["failures"] == 0, case
        assert variant["model"] == "gemini-nano-banana-2.1"
        # 1120 image tokens at $30/M, a little text and the prompt: about 0.0337.
        assert Decimal(variant["cost_usd"]) == Decimal(obj.metadata["cost_usd"])
        assert Decimal("0.0336") <= Decimal(variant["cost_usd"]) < Decimal("0.0345")
        assert variant["usage"]["output_image_tokens"] == 1120
        stats = gen.prompt_stats(prompts[case])
        assert stats["requests"] == (2 if "times" in rule else 1), case
        # The stub may also count an answer it wrote to a client that had timed out.
        assert stats["generated"] in ((1, 2) if rule["mode"] == "timeout" else (1,)), case
        gen.wait_status(scene_id, lambda status: status == "completed")

    for case, (_, reason) in FAILURES.items():
        scene_id = f"ans-{case}-{tag}"
        view = views[job_ids[scene_id]]
        assert view["state"] == "failed", (case, view)
        assert view["error"].startswith("variant 1: "), (case, view["error"])
        assert reason in view["error"], (case, view["error"])
        assert gen.objects(scene_id) == []
        # An answer, even a refusal, is never asked for again.
        assert gen.prompt_stats(prompts[case])["requests"] == 1, case
        gen.wait_status(scene_id, failed_with(reason))

    # A call that always times out: the SDK's 2 attempts per delivery, Pub/Sub's
    # redeliveries, then the failure budget (3 attempts) fails the job with the error.
    timeouts = views[job_ids[f"ans-timeouts-{tag}"]]
    assert timeouts["state"] == "failed"
    assert (
        "gave up after 3 failed attempts; the last: Gemini timed out (ReadTimeout)"
        in timeouts["error"]
    )
    assert timeouts["variants"][0]["failures"] == 3
    assert gen.prompt_stats(prompts["timeouts"])["requests"] == 6  # 3 attempts x 2
    gen.wait_status(f"ans-timeouts-{tag}", lambda status: "Gemini timed out" in status)

    # Every job that ended in generation said so once, for the log-based metrics.
    finished = {e["job_id"]: e for e in gen.function_logs() if e.get("event") == "job_finished"}
    for case in FAILURES:
        entry = finished[job_ids[f"ans-{case}-{tag}"]]
        assert entry["state"] == "failed"
        assert isinstance(entry["duration_s"], float) and entry["duration_s"] >= 0
        assert entry["cost_usd"] == "0.0000"


def test_aspect_ratio_and_image_size_reach_gemini(gen: GenStack, tag: str) -> None:
    prompt = f"shape {tag}"
    item: dict[str, Any] = {
        "scene_id": f"shape-{tag}",
        "prompt": prompt,
        "variants": 1,
        "aspect_ratio": "16:9",
        "image_size": "2K",
    }
    job_id = gen.submit([item])[item["scene_id"]]
    assert gen.live.wait_jobs([job_id])[job_id]["state"] == "completed"
    sent = [r for r in gen.live.gemini("requests")["requests"] if r["prompt"] == prompt]
    assert [r["generationConfig"]["imageConfig"] for r in sent] == [
        {"aspectRatio": "16:9", "imageSize": "2K"}
    ]
    assert [r["api_version"] for r in sent] == ["v1beta"]
    (obj,) = gen.objects(item["scene_id"])
    with Image.open(io.BytesIO(obj.download_as_bytes())) as image:
        assert image.size == (2048, 1152)


# --------------------------------------------------------------------------- exactly once


def test_same_message_twice_at_once_and_again_later_pays_once(gen: GenStack, tag: str) -> None:
    prompt = f"twice {tag}"
    # Slow answers (1.5 s, under the 2 s timeout) keep the deliveries overlapping.
    gen.script({prompt: {"mode": "timeout", "timeout_s": 1.5}})
    item: dict[str, Any] = {"scene_id": f"twice-{tag}", "prompt": prompt, "variants": 3}
    job_id = gen.submit([item])[item["scene_id"]]
    message = {
        "job_id": job_id,
        "batch_id": gen.job_doc(job_id)["batch_id"],
        "scene_id": item["scene_id"],
    }

    # Pub/Sub's own delivery is under way; two more copies arrive at the same time.
    codes: list[int] = []

    def deliver(n: int) -> None:
        answer = requests.post(gen.generate_url(), json=push_body(message, f"dup-{n}"), timeout=120)
        codes.append(answer.status_code)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert gen.live.wait_jobs([job_id])[job_id]["state"] == "completed"
    assert len(codes) == 2

    # And twice more, one after the other, once it is all done.
    for n in (2, 3):
        answer = requests.post(gen.generate_url(), json=push_body(message, f"dup-{n}"), timeout=60)
        assert answer.status_code < 300

    assert gen.prompt_stats(prompt) == {"requests": 3, "generated": 3}
    assert len(gen.objects(item["scene_id"])) == 3
    doc = gen.job_doc(job_id)
    assert [doc["variants"][str(n)]["attempts"] for n in (1, 2, 3)] == [1, 1, 1]


def test_retry_after_a_sibling_failed_makes_only_the_missing_variant(
    gen: GenStack, tag: str
) -> None:
    prompt = f"sibling {tag}"
    # 4 failures over 3 variants with 2 SDK attempts each: one variant fails its
    # delivery; the other two succeed on their second attempt.
    gen.script({prompt: {"mode": "http:503", "times": 4}})
    item: dict[str, Any] = {"scene_id": f"sibling-{tag}", "prompt": prompt, "variants": 3}
    job_id = gen.submit([item])[item["scene_id"]]
    assert gen.live.wait_jobs([job_id])[job_id]["state"] == "completed"

    assert gen.prompt_stats(prompt) == {"requests": 7, "generated": 3}
    assert len(gen.objects(item["scene_id"])) == 3
    doc = gen.job_doc(job_id)
    assert sorted(doc["variants"][str(n)]["attempts"] for n in (1, 2, 3)) == [1, 1, 2]


def _doomed_instance(gen: GenStack) -> tuple[subprocess.Popen[bytes], str]:
    """One more generate instance, configured like the stack's, that we can kill."""
    port = free_port()
    env = {
        **os.environ,
        **gen.env,
        "PUBLIC_BASE_URL": gen.env["API_URL"],
        **FUNCTION_ENV,
        "PYTHONPATH": str(REPO),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "functions_framework",
            "--source",
            str(REPO / "main.py"),
            "--target",
            "generate_images",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError("the extra generate instance did not start")


def test_delivery_killed_between_gemini_and_upload_is_taken_over_after_its_lease(
    gen: GenStack, tag: str
) -> None:
    from shared.adapters.firestore_store import FirestoreJobStore
    from shared.domain.batch import Batch
    from shared.domain.ids import new_id, utcnow
    from shared.domain.job import Job

    prompt = f"crash {tag}"
    scene_id = f"crash-{tag}"
    gen.live.add_rows([{"scene_id": scene_id, "prompt": prompt, "variants": 2}])
    # The job exists but is not published yet: only the doomed instance gets it first.
    now = utcnow()
    job = Job(
        job_id=new_id("job"),
        batch_id=new_id("bat"),
        scene_id=scene_id,
        prompt=prompt,
        variant_count=2,
        caller="local-dev",
        spreadsheet_id=gen.env["SPREADSHEET_ID"],
        worksheet=gen.env["WORKSHEET"],
        model="gemini-3.1-flash-image",
        price_per_image="0.0670",
        created_at=now,
        updated_at=now,
    )
    batch = Batch(
        batch_id=job.batch_id,
        caller="local-dev",
        spreadsheet_id=job.spreadsheet_id,
        worksheet=job.worksheet,
        model=job.model,
        job_ids=[job.job_id],
        image_count=2,
        estimated_cost_usd="0.1340",
        created_at=now,
    )
    FirestoreJobStore(gen.live.firestore).create_batch(batch, [job])
    message = {"job_id": job.job_id, "batch_id": job.batch_id, "scene_id": scene_id}
    # The first two calls hang (the instance dies during them); later ones answer.
    gen.script({prompt: {"mode": "timeout", "timeout_s": 5, "times": 2}})

    process, url = _doomed_instance(gen)

    def doomed_delivery() -> None:
        with contextlib.suppress(requests.ConnectionError):  # it dies mid-request
            requests.post(gen.generate_url(url), json=push_body(message, "doomed"), timeout=30)

    try:
        threading.Thread(target=doomed_delivery, daemon=True).start()
        # Killed while both Gemini calls hang, after its row write (so the crash is
        # exactly between Gemini and the upload, not in the middle of a sheet write).
        gen.live.wait_for(
            lambda: (
                gen.prompt_stats(prompt)["requests"] >= 2
                and gen.live.sheet_row(scene_id)["status_img"] == "generating (0/2)"
            ),
            timeout_s=30,
            what="both calls and the row write",
        )
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    # The state a crash leaves: live claims, no objects.
    doc = gen.job_doc(job.job_id)
    for n in ("1", "2"):
        variant = doc["variants"][n]
        assert variant["state"] == "generating" and variant["claim_id"], variant
        assert variant["claim_expires"] > utcnow()
    assert gen.objects(scene_id) == []

    # Pub/Sub redelivers the unacknowledged message to the stack's instance, and a
    # duplicate comes along: both find the dead instance's claims and wait them out,
    # however many deliveries that takes, without counting the waits as failures.
    topic = gen.live.publisher.topic_path(gen.env["GOOGLE_CLOUD_PROJECT"], gen.env["JOBS_TOPIC"])
    for _ in range(2):
        gen.live.publisher.publish(topic, json.dumps(message).encode()).result(timeout=30)
    view = gen.live.wait_jobs([job.job_id], timeout_s=120)[job.job_id]
    assert view["state"] == "completed"

    stats = gen.prompt_stats(prompt)
    assert stats["requests"] == 4  # 2 lost with the instance, 2 by the takeover
    assert 2 <= stats["generated"] <= 4  # at most one more per killed call
    assert len(gen.objects(scene_id)) == 2
    doc = gen.job_doc(job.job_id)
    assert [doc["variants"][n]["attempts"] for n in ("1", "2")] == [2, 2]
    # The dead holder is one real failure per variant; the waits are none.
    assert [doc["variants"][n]["failures"] for n in ("1", "2")] == [1, 1]


# --------------------------------------------------------------------------- references


def test_reference_packs_from_our_bucket(gen: GenStack, tag: str) -> None:
    def png(color: tuple[int, int, int]) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (32, 32), color).save(out, "PNG")
        return out.getvalue()

    bucket = gen.live.storage.bucket(gen.env["IMAGES_BUCKET"])
    pack = io.BytesIO()
    with zipfile.ZipFile(pack, "w") as archive:
        archive.writestr("a.png", png((255, 0, 0)))
        archive.writestr("b.png", png((0, 255, 0)))
        archive.writestr("notes.txt", b"not an image")
    bucket.blob(f"refs/{tag}/pack.zip").upload_from_string(pack.getvalue())
    bucket.blob(f"refs/{tag}/c.png").upload_from_string(png((0, 0, 255)))
    manifest = {"images": [f"gs://{gen.env['IMAGES_BUCKET']}/refs/{tag}/c.png"]}
    bucket.blob(f"refs/{tag}/m.json").upload_from_string(json.dumps(manifest))
    items = [
        {
            "scene_id": f"zip-{tag}",
            "prompt": f"zip pack {tag}",
            "variants": 2,
            "ref_pack_public_url": f"gs://{gen.env['IMAGES_BUCKET']}/refs/{tag}/pack.zip",
        },
        {
            "scene_id": f"manifest-{tag}",
            "prompt": f"manifest pack {tag}",
            "variants": 1,
            "ref_pack_public_url": f"gs://{gen.env['IMAGES_BUCKET']}/refs/{tag}/m.json",
        },
    ]
    job_ids = gen.submit(items)
    views = gen.live.wait_jobs(list(job_ids.values()))
    assert {v["state"] for v in views.values()} == {"completed"}
    sent = {
        r["prompt"]: [ref["mimeType"] for ref in r["reference_images"]]
        for r in gen.live.gemini("requests")["requests"]
    }
    assert sent[f"zip pack {tag}"] == ["image/png", "image/png"]
    assert sent[f"manifest pack {tag}"] == ["image/png"]


class _Counter:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.count += 1
            conn.close()


@pytest.fixture
def listener() -> Iterator[_Counter]:
    counter = _Counter()
    yield counter
    counter.stop.set()
    counter.thread.join(timeout=2)
    counter.sock.close()


def test_reference_urls_to_internal_addresses_fail_the_job_and_reach_nothing(
    gen: GenStack, tag: str, listener: _Counter
) -> None:
    urls: dict[str, tuple[str, str]] = {
        "loopback": (f"https://127.0.0.1:{listener.port}/pack.zip", "not a public address"),
        "decimal": (f"https://2130706433:{listener.port}/pack.zip", "non-canonical spelling"),
        "octal": (f"https://0177.0.0.1:{listener.port}/pack.zip", "non-canonical spelling"),
        "mapped": (f"https://[::ffff:127.0.0.1]:{listener.port}/p", "not a public address"),
        "localhost": (f"https://localhost:{listener.port}/pack.zip", "internal name"),
        "metadata-ip": ("https://169.254.169.254/computeMetadata/v1/", "not a public address"),
        "metadata-name": ("https://metadata.google.internal/computeMetadata/v1/", "internal"),
        "private": ("https://10.0.0.8/pack.zip", "not a public address"),
    }
    items = [
        {
            "scene_id": f"ssrf-{name}-{tag}",
            "prompt": f"ssrf {name} {tag}",
            "variants": 1,
            "ref_pack_public_url": url,
        }
        for name, (url, _) in urls.items()
    ]
    job_ids = gen.submit(items)
    views = gen.live.wait_jobs(list(job_ids.values()))
    for name, (_, reason) in urls.items():
        view = views[job_ids[f"ssrf-{name}-{tag}"]]
        assert view["state"] == "failed", (name, view)
        assert view["error"].startswith("variant 1: reference pack: "), view["error"]
        assert reason in view["error"], (name, view["error"])
        assert gen.prompt_stats(f"ssrf {name} {tag}")["requests"] == 0
    assert listener.count == 0
    gen.wait_status(f"ssrf-metadata-ip-{tag}", lambda status: "reference pack: " in status)
