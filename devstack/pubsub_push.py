"""Push delivery for the local stack, in place of the Pub/Sub emulator's own push.

The emulator (0.8.20) stops redelivering a subscription for good once two of
its messages fail at the same moment under a retry policy: its redelivery timer
dies on a NullPointerException (README, "The local stack"). This module pulls
from subscriptions that have neither a push config nor a retry policy, POSTs
each message to its function as Pub/Sub's push does (same body, same URL), acks
on a 102/200/201/202/204 answer, and on any other answer leaves the message with
an ack deadline equal to the retry backoff, so the emulator redelivers it then.
Like Pub/Sub, which adjusts its push rate to the rate of success answers, a
route that fails stops pushing a while (``PushPace``): an endpoint that is down
(an instance restarting) is not sent every waiting message in a moment, each
failing and spending a delivery attempt.
The emulator still counts delivery attempts and still forwards a message to the
dead-letter topic after the subscription's max delivery attempts, with its
``CloudPubSubDeadLetter*`` attributes.

    python -m devstack.pubsub_push --port P --route SUBSCRIPTION=URL [--route ...]
        [--min-backoff-s 10] [--max-backoff-s 600] [--concurrency 2] [--ack-deadline-s 600]

needs ``PUBSUB_EMULATOR_HOST``; ``GET /healthz`` on ``--port`` answers with counters.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

log = logging.getLogger("devstack.pubsub_push")

# What Pub/Sub push counts as an acknowledgement.
ACK_CODES = frozenset({102, 200, 201, 202, 204})
# A pull waits this long for messages; the emulator answers empty shortly before
# the deadline, so nothing is handed to a call that has already given up.
PULL_WAIT_S = 2.0
# Attempt counts kept for subscriptions without a dead-letter policy (the
# emulator counts only with one); bounded so a long ``make up`` cannot grow it.
_LOCAL_ATTEMPTS_MAX = 10_000
# After a failed push, a route pauses this long, doubling per failure in a row and
# reset by a success. Pub/Sub's push backoff ranges from 100 ms to 60 s; locally an
# endpoint is down for a restart of seconds, so the pause stays short.
PUSH_PAUSE_MIN_S = 0.1
PUSH_PAUSE_MAX_S = 1.0


class PushConfigError(ValueError):
    """A route's subscription would be delivered twice or hit the emulator bug."""


@dataclass(frozen=True)
class Route:
    """One subscription and the URL its messages are pushed to."""

    subscription: str
    endpoint: str
    min_backoff_s: float = 10.0
    max_backoff_s: float = 600.0
    concurrency: int = 2
    ack_deadline_s: int = 600


def backoff_s(route: Route, attempt: int) -> int:
    """Seconds before redelivery after failed attempt ``attempt`` (1-based): doubling
    from the minimum up to the maximum, whole seconds as ack deadlines are."""
    delay = route.min_backoff_s * 2.0 ** max(attempt - 1, 0)
    return math.ceil(min(delay, route.max_backoff_s))


def push_body(received: Any, subscription: str) -> dict[str, Any]:
    """The JSON body Pub/Sub POSTs for one pulled ``ReceivedMessage``."""
    pb = type(received).pb(received)
    message: dict[str, Any] = {}
    if pb.message.attributes:
        message["attributes"] = dict(pb.message.attributes)
    # Left out when empty, as push does (functions-framework then answers 400).
    if pb.message.data:
        message["data"] = base64.b64encode(pb.message.data).decode()
    message["messageId"] = message["message_id"] = pb.message.message_id
    publish_time = pb.message.publish_time.ToJsonString()
    message["publishTime"] = message["publish_time"] = publish_time
    if pb.message.ordering_key:
        message["orderingKey"] = pb.message.ordering_key
    body: dict[str, Any] = {"message": message, "subscription": subscription}
    # Present only with a dead-letter policy, as in production.
    if pb.delivery_attempt:
        body["deliveryAttempt"] = pb.delivery_attempt
    return body


class PushPace:
    """When a route may push again: paused after a failure, the pause doubling per
    failure in a row up to a maximum, and lifted by a success."""

    def __init__(self, low_s: float = PUSH_PAUSE_MIN_S, high_s: float = PUSH_PAUSE_MAX_S) -> None:
        self._low, self._high = low_s, high_s
        self._pause = 0.0
        self._until = 0.0
        self._lock = threading.Lock()

    def failed(self, now: float) -> None:
        with self._lock:
            self._pause = min(self._high, max(self._low, self._pause * 2))
            self._until = max(self._until, now + self._pause)

    def succeeded(self) -> None:
        with self._lock:
            self._pause = 0.0
            self._until = 0.0

    def wait_s(self, now: float) -> float:
        """Seconds before the next push may start (0: now)."""
        with self._lock:
            return max(0.0, self._until - now)


class _RouteWorker:
    """Pulls one subscription and pushes up to ``concurrency`` messages at once."""

    def __init__(self, route: Route, subscriber: Any, stopping: threading.Event) -> None:
        self.route = route
        self.subscriber = subscriber
        self.stopping = stopping
        self.max_attempts = 0
        self.counts = {"acked": 0, "failed": 0, "dead_lettered": 0, "errors": 0}
        self._slots = threading.BoundedSemaphore(route.concurrency)
        self._pool = ThreadPoolExecutor(route.concurrency, thread_name_prefix="push")
        self._attempts: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self.pace = PushPace()
        self._thread = threading.Thread(target=self._pull_loop, name="pull", daemon=True)

    def check(self) -> None:
        """Read the subscription; refuse one the emulator would also push or retry."""
        sub = self.subscriber.get_subscription(subscription=self.route.subscription)
        if sub.push_config.push_endpoint:
            raise PushConfigError(f"{self.route.subscription} has a push endpoint")
        # Nacks under a retry policy go through the emulator's broken redelivery timer.
        if "retry_policy" in sub:
            raise PushConfigError(f"{self.route.subscription} has a retry policy")
        self.max_attempts = sub.dead_letter_policy.max_delivery_attempts

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float, wait: bool) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._pool.shutdown(wait=wait)

    def _pull_loop(self) -> None:
        from google.api_core import exceptions

        while not self.stopping.is_set():
            paused = self.pace.wait_s(time.monotonic())
            if paused > 0:
                self.stopping.wait(paused)
                continue
            if not self._slots.acquire(timeout=0.5):
                continue
            taken = 1
            while taken < self.route.concurrency and self._slots.acquire(blocking=False):
                taken += 1
            received: list[Any] = []
            try:
                answer = self.subscriber.pull(
                    request={"subscription": self.route.subscription, "max_messages": taken},
                    timeout=PULL_WAIT_S,
                )
                received = list(answer.received_messages)
            except exceptions.DeadlineExceeded:
                pass
            except Exception:
                if not self.stopping.is_set():
                    log.exception("pull from %s failed", self.route.subscription)
                    self._count("errors")
                    self.stopping.wait(1.0)
            for _ in range(taken - len(received)):
                self._slots.release()
            for message in received:
                self._pool.submit(self._deliver, message)

    def _deliver(self, received: Any) -> None:
        try:
            self._push(received)
        except Exception:
            # The message comes back when its ack deadline passes.
            log.exception("delivery on %s failed", self.route.subscription)
            self._count("errors")
        finally:
            self._slots.release()

    def _push(self, received: Any) -> None:
        route = self.route
        message_id = received.message.message_id
        attempt = received.delivery_attempt or self._local_attempt(message_id)
        status: int | str
        try:
            answer = requests.post(
                route.endpoint,
                data=json.dumps(push_body(received, route.subscription)),
                headers={"Content-Type": "application/json"},
                timeout=route.ack_deadline_s,
            )
            status = answer.status_code
        except requests.RequestException as exc:
            status = type(exc).__name__
        if status in ACK_CODES:
            self.pace.succeeded()
            self.subscriber.acknowledge(subscription=route.subscription, ack_ids=[received.ack_id])
            with self._lock:
                self._attempts.pop(message_id, None)
            self._count("acked")
            return
        if self.max_attempts and attempt >= self.max_attempts:
            # Last attempt: back now, so the emulator's next pull dead-letters it.
            delay = 0
            self._count("dead_lettered")
        else:
            delay = backoff_s(route, attempt)
        self.pace.failed(time.monotonic())
        self._count("failed")
        log.info(
            "push to %s: %s for message %s (attempt %d), again in %d s",
            route.endpoint,
            status,
            message_id,
            attempt,
            delay,
        )
        # With no retry policy on the subscription this is a plain ack deadline
        # (0 = nack now), which the emulator handles correctly.
        self.subscriber.modify_ack_deadline(
            subscription=route.subscription,
            ack_ids=[received.ack_id],
            ack_deadline_seconds=delay,
        )

    def _local_attempt(self, message_id: str) -> int:
        with self._lock:
            attempt = self._attempts.pop(message_id, 0) + 1
            self._attempts[message_id] = attempt
            while len(self._attempts) > _LOCAL_ATTEMPTS_MAX:
                self._attempts.popitem(last=False)
            return attempt

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1


class PushDispatcher:
    """Push delivery for several routes; ``start`` checks every subscription first."""

    def __init__(self, routes: Iterable[Route], subscriber: Any | None = None) -> None:
        if subscriber is None:
            from google.cloud import pubsub_v1  # type: ignore[attr-defined]

            subscriber = pubsub_v1.SubscriberClient()
        self._stopping = threading.Event()
        self._workers = [_RouteWorker(r, subscriber, self._stopping) for r in routes]

    def start(self) -> None:
        for worker in self._workers:
            worker.check()
        for worker in self._workers:
            worker.start()

    def stop(self, wait: bool = True) -> None:
        """Stop pulling (within ``PULL_WAIT_S``); with ``wait``, let pushes in flight end."""
        self._stopping.set()
        for worker in self._workers:
            worker.join(PULL_WAIT_S + 1.0, wait)

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per subscription: acked, failed answers, dead-lettered, errors."""
        return {w.route.subscription: w.snapshot() for w in self._workers}


def parse_route(text: str, defaults: Mapping[str, Any]) -> Route:
    subscription, sep, endpoint = text.partition("=")
    if not sep or not subscription.startswith("projects/") or "://" not in endpoint:
        raise argparse.ArgumentTypeError(f"expected SUBSCRIPTION_PATH=URL, got {text!r}")
    return Route(subscription, endpoint, **defaults)


def _health_server(port: int, dispatcher: PushDispatcher) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/healthz":
                self.send_error(404)
                return
            body = json.dumps(dispatcher.stats()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.pubsub_push")
    parser.add_argument("--port", type=int, required=True, help="health and counters")
    parser.add_argument("--route", action="append", required=True, metavar="SUB=URL")
    parser.add_argument("--min-backoff-s", type=float, default=10.0)
    parser.add_argument("--max-backoff-s", type=float, default=600.0)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--ack-deadline-s", type=int, default=600)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    defaults = {
        "min_backoff_s": args.min_backoff_s,
        "max_backoff_s": args.max_backoff_s,
        "concurrency": args.concurrency,
        "ack_deadline_s": args.ack_deadline_s,
    }
    routes = [parse_route(text, defaults) for text in args.route]
    dispatcher = PushDispatcher(routes)
    dispatcher.start()
    server = _health_server(args.port, dispatcher)
    # SIGTERM (the stack's stop) ends serve_forever; the finally stops the pulls.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log.info("pushing %s", ", ".join(f"{r.subscription} -> {r.endpoint}" for r in routes))
    try:
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    finally:
        server.server_close()
        dispatcher.stop(wait=False)
    # The stack stops the emulator next: a push still in flight has nothing left
    # to ack, so do not wait for it (its worker thread would hold the exit).
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
