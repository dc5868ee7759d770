"""The Pub/Sub emulator's redelivery bug, measured; and the dev stack's way around it.

    .venv/bin/python -m bench.pubsub_emulator [--watch-s 45] [--repeat 1] [--only WORD ...]

Starts one emulator (``gcloud beta emulators pubsub start``) and, for each
scenario at once, a topic, a subscription and a local endpoint that answers 500
to the first ``k`` deliveries of each message and 204 after (optionally slowly,
with failing answers spaced apart as a relay in front of the function could
space them, or among slow successful messages). Modes: ``push`` (the
emulator's own push, optionally with a retry and a dead-letter policy),
``pull-nack`` (a pull client that nacks, under a retry policy) and
``dispatcher`` (``devstack.pubsub_push``: pull, push, ack deadline as
backoff). For each: messages answered 2xx in the end, dead-lettered, lost
(neither, when the watch ends), deliveries, and the gaps between one message's
deliveries. ``--repeat N`` runs each scenario on N subscriptions at once and
also says on how many of them some message was lost.

Reports figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from devstack.pubsub_push import PushDispatcher, Route
from devstack.stack import LOCALHOST, emulator_env, free_port, pubsub_emulator

PROJECT = "bench-project"
NEVER = 10**6  # fail forever


@dataclass
class Scenario:
    name: str
    mode: str  # push | pull-nack | dispatcher
    messages: int
    fail_first: int
    retry: tuple[int, int] | None = (1, 5)
    dead_letter_after: int = 0
    publish_gap_s: float = 0.0
    answer_delay_s: float = 0.0
    fail_spacing_s: float = 0.0
    # (seconds after start, how many first deliveries fail) for messages sent later
    followups: list[tuple[float, int]] = field(default_factory=list)
    # messages sent after the others that succeed at once but answer slowly
    slow_messages: int = 0
    slow_answer_s: float = 2.0


SCENARIOS = [
    Scenario("retry, 1 message", "push", 1, 3),
    Scenario("retry, 2 at once", "push", 2, 3),
    Scenario("retry, 8 at once", "push", 8, 3),
    Scenario("retry, 2 fail only twice", "push", 2, 2),
    Scenario("retry, 4 sent 2 s apart", "push", 4, 3, publish_gap_s=2.0),
    Scenario("retry+DLQ(5), 4 always fail", "push", 4, NEVER, dead_letter_after=5),
    Scenario(
        "retry, 8 at once, then new ones",
        "push",
        8,
        3,
        retry=(1, 2),
        followups=[(15.0, 0), (15.5, 1), (16.0, 2)],
    ),
    Scenario("retry, failing answers 150 ms apart", "push", 8, 3, fail_spacing_s=0.15),
    Scenario(
        "retry, 150 ms apart, 1 s answers",
        "push",
        8,
        3,
        answer_delay_s=1.0,
        fail_spacing_s=0.15,
    ),
    Scenario(
        "retry, 150 ms apart, slow traffic too",
        "push",
        8,
        4,
        fail_spacing_s=0.15,
        slow_messages=16,
    ),
    Scenario("no retry policy, 8 at once", "push", 8, 3, retry=None),
    Scenario("no retry+DLQ(5), 4 always fail", "push", 4, NEVER, retry=None, dead_letter_after=5),
    Scenario("pull nack under retry, 4 at once", "pull-nack", 4, 3),
    Scenario("dispatcher, 8 at once", "dispatcher", 8, 3),
    Scenario("dispatcher, 20 at once, k=4", "dispatcher", 20, 4),
    Scenario("dispatcher, slow traffic too", "dispatcher", 8, 4, slow_messages=16),
    Scenario("dispatcher+DLQ(5), 4 always fail", "dispatcher", 4, NEVER, dead_letter_after=5),
]


@dataclass
class Delivery:
    at: float
    key: str
    status: int


class Endpoints:
    """One local HTTP server; the push URL path names the scenario's topic."""

    def __init__(self, scenarios: dict[str, Scenario], start: float) -> None:
        self.scenarios = scenarios
        self.start = start
        self.lock = threading.Lock()
        self.seen: dict[tuple[str, str], int] = defaultdict(int)
        self.log: dict[str, list[Delivery]] = defaultdict(list)
        self.last_failure: dict[str, float] = defaultdict(float)
        self.fail_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        endpoints = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                topic = self.path.rsplit("/", 1)[-1]
                status = endpoints.answer(topic, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        # Scenarios run at once: the default listen backlog (5) resets connections.
        ThreadingHTTPServer.request_queue_size = 256
        self.server = ThreadingHTTPServer((LOCALHOST, free_port()), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, topic: str, body: dict[str, Any]) -> int:
        scenario = self.scenarios[topic]
        key = base64.b64decode(body["message"]["data"]).decode()
        limit = int(key.split(":")[1])
        if key.startswith("slow"):
            time.sleep(scenario.slow_answer_s)
        with self.lock:
            self.seen[topic, key] += 1
            n = self.seen[topic, key]
        if scenario.answer_delay_s:
            time.sleep(scenario.answer_delay_s)
        status = 500 if n <= limit else 204
        if status == 500 and scenario.fail_spacing_s:
            # What a relay serialising failing answers would do.
            with self.fail_locks[topic]:
                wait = self.last_failure[topic] + scenario.fail_spacing_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self.last_failure[topic] = time.monotonic()
        with self.lock:
            self.log[topic].append(Delivery(time.monotonic() - self.start, key, status))
        return status


def run(scenarios: list[Scenario], watch_s: float) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        pubsub_emulator(Path(tmp) / "pubsub.log", PROJECT) as host,
        emulator_env({"PUBSUB_EMULATOR_HOST": host}),
    ):
        measure(scenarios, watch_s)


def measure(scenarios: list[Scenario], watch_s: float) -> None:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]
    from google.protobuf import duration_pb2
    from google.pubsub_v1 import types

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topics = {f"bench-{i}": s for i, s in enumerate(scenarios)}  # one subscription each
    start = time.monotonic()
    endpoints = Endpoints(topics, start)
    dispatchers: list[PushDispatcher] = []
    for topic, scenario in topics.items():
        topic_path = publisher.topic_path(PROJECT, topic)
        publisher.create_topic(name=topic_path)
        dead_letter = None
        if scenario.dead_letter_after:
            publisher.create_topic(name=f"{topic_path}-dl")
            subscriber.create_subscription(
                name=subscriber.subscription_path(PROJECT, f"{topic}-dl"),
                topic=f"{topic_path}-dl",
            )
            dead_letter = types.DeadLetterPolicy(
                dead_letter_topic=f"{topic_path}-dl",
                max_delivery_attempts=scenario.dead_letter_after,
            )
        retry = None
        if scenario.retry and scenario.mode != "dispatcher":
            retry = types.RetryPolicy(
                minimum_backoff=duration_pb2.Duration(seconds=scenario.retry[0]),
                maximum_backoff=duration_pb2.Duration(seconds=scenario.retry[1]),
            )
        url = f"http://{LOCALHOST}:{endpoints.port}/projects/{PROJECT}/topics/{topic}"
        sub_path = subscriber.subscription_path(PROJECT, topic)
        subscriber.create_subscription(
            request=types.Subscription(
                name=sub_path,
                topic=topic_path,
                push_config=(
                    types.PushConfig(push_endpoint=url) if scenario.mode == "push" else None
                ),
                ack_deadline_seconds=60,
                retry_policy=retry,
                dead_letter_policy=dead_letter,
            )
        )
        if scenario.mode == "dispatcher":
            low, high = scenario.retry or (1, 5)
            dispatcher = PushDispatcher(
                [Route(sub_path, url, min_backoff_s=low, max_backoff_s=high, ack_deadline_s=60)],
                subscriber,
            )
            dispatcher.start()
            dispatchers.append(dispatcher)
        elif scenario.mode == "pull-nack":
            threading.Thread(
                target=pull_and_nack,
                args=(subscriber, sub_path, url, start + watch_s),
                daemon=True,
            ).start()

    def publish(topic: str, scenario: Scenario) -> None:
        path = publisher.topic_path(PROJECT, topic)
        for i in range(scenario.messages):
            publisher.publish(path, f"m{i}:{scenario.fail_first}".encode()).result()
            if scenario.publish_gap_s:
                time.sleep(scenario.publish_gap_s)
        for i in range(scenario.slow_messages):
            publisher.publish(path, f"slow{i}:0".encode()).result()
        for j, (at, fail_first) in enumerate(scenario.followups):
            time.sleep(max(0.0, start + at - time.monotonic()))
            publisher.publish(path, f"late{j}:{fail_first}".encode()).result()

    for topic, scenario in topics.items():
        threading.Thread(target=publish, args=(topic, scenario), daemon=True).start()
    time.sleep(watch_s)
    for dispatcher in dispatchers:
        dispatcher.stop()
    report(topics, endpoints, subscriber, watch_s)


def pull_and_nack(subscriber: Any, sub_path: str, url: str, until: float) -> None:
    """A pull client that pushes like the dispatcher but nacks failures (deadline 0)."""
    from google.api_core import exceptions

    from devstack.pubsub_push import ACK_CODES, push_body

    while time.monotonic() < until:
        try:
            answer = subscriber.pull(
                request={"subscription": sub_path, "max_messages": 2}, timeout=2
            )
        except exceptions.DeadlineExceeded:
            continue
        except Exception as exc:
            print(f"pull-nack on {sub_path}: {exc!r}")
            time.sleep(0.5)
            continue
        for received in answer.received_messages:
            try:
                body = push_body(received, sub_path)
                status = requests.post(url, json=body, timeout=60).status_code
            except requests.RequestException:
                status = 0
            if status in ACK_CODES:
                subscriber.acknowledge(subscription=sub_path, ack_ids=[received.ack_id])
            else:
                subscriber.modify_ack_deadline(
                    subscription=sub_path, ack_ids=[received.ack_id], ack_deadline_seconds=0
                )


def report(
    topics: dict[str, Scenario], endpoints: Endpoints, subscriber: Any, watch_s: float
) -> None:
    header = (
        f"{'scenario':38} {'mode':10} {'msgs':>4} {'2xx':>4} {'DLQ':>4} {'lost':>4} "
        f"{'deliv':>5} {'last at':>7}  gaps between deliveries of a message (s)"
    )
    print(f"watched {watch_s:.0f} s\n{header}")
    stalled: dict[str, list[bool]] = defaultdict(list)
    for topic, scenario in topics.items():
        log = endpoints.log[topic]
        keys = {f"m{i}:{scenario.fail_first}" for i in range(scenario.messages)}
        keys |= {f"late{j}:{k}" for j, (_, k) in enumerate(scenario.followups)}
        keys |= {f"slow{i}:0" for i in range(scenario.slow_messages)}
        ok = {d.key for d in log if d.status < 300}
        dead = dead_lettered(subscriber, topic) if scenario.dead_letter_after else {}
        lost = sorted(keys - ok - set(dead))
        by_key: dict[str, list[float]] = defaultdict(list)
        for d in log:
            by_key[d.key].append(d.at)
        gaps = [b - a for times in by_key.values() for a, b in itertools.pairwise(times)]
        gap_text = (
            f"min {min(gaps):.1f} median {statistics.median(gaps):.1f} max {max(gaps):.1f}"
            if gaps
            else "-"
        )
        last = max((d.at for d in log), default=0.0)
        print(
            f"{scenario.name:38} {scenario.mode:10} {len(keys):>4} {len(ok & keys):>4} "
            f"{len(dead):>4} {len(lost):>4} {len(log):>5} {last:>7.1f}  {gap_text}"
        )
        stalled[scenario.name].append(bool(lost))
        if lost:
            counts = {k: len(by_key[k]) for k in lost}
            print(f"{'':38} lost, with deliveries seen: {counts}")
        if dead:
            print(f"{'':38} dead-lettered, CloudPubSubDeadLetterSourceDeliveryCount: {dead}")
    if any(len(runs) > 1 for runs in stalled.values()):
        print("\nsubscriptions that lost a message")
        for name, runs in stalled.items():
            print(f"{name:38} {sum(runs)} of {len(runs)}")


def dead_lettered(subscriber: Any, topic: str) -> dict[str, str]:
    path = subscriber.subscription_path(PROJECT, f"{topic}-dl")
    answer = subscriber.pull(request={"subscription": path, "max_messages": 100}, timeout=3)
    return {
        r.message.data.decode(): r.message.attributes.get(
            "CloudPubSubDeadLetterSourceDeliveryCount", "?"
        )
        for r in answer.received_messages
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pubsub_emulator")
    parser.add_argument("--watch-s", type=float, default=45.0)
    parser.add_argument("--repeat", type=int, default=1, help="subscriptions per scenario")
    parser.add_argument("--only", nargs="*", help="scenario names containing these words")
    args = parser.parse_args()
    chosen = [
        s
        for s in SCENARIOS
        for _ in range(args.repeat)
        if not args.only or any(word in s.name for word in args.only)
    ]
    run(chosen, args.watch_s)


if __name__ == "__main__":
    main()
