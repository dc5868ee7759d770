"""Local protocol stub of a Google Chat space's incoming webhook, for the dev stack and tests.

Google ships no Chat emulator, so this answers what ``spaces.messages.create``
answers a webhook: ``POST /v1/spaces/{space}/messages?key=KEY&token=TOKEN`` with a
JSON ``Message`` (``{"text", "thread": {"threadKey"}}``) and the query parameters
``requestId`` and ``messageReplyOption``:

- a key or token other than the configured ones: 403 ``PERMISSION_DENIED``
  (Google's JSON error format), nothing stored;
- no text, text over 32,000 bytes (Chat's largest message), an unknown
  ``messageReplyOption`` or a body that is not a JSON object: 400 ``INVALID_ARGUMENT``;
- a ``requestId`` already used in the space: the message created with it, and
  nothing new stored (as Chat does);
- else the message is stored and answered ``{"name": "spaces/S/messages/M",
  "text", "thread": {"name": "spaces/S/threads/T"}}``. With
  ``REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD`` or ``REPLY_MESSAGE_OR_FAIL`` a
  ``threadKey`` seen before puts it in that key's thread; without a reply option
  every message starts a thread of its own (Chat then ignores the key).

Control endpoints (JSON; never in Chat):

- ``GET /_messages``: ``{"messages": [{"name", "space", "text", "threadKey",
  "thread", "requestId", "messageReplyOption", "time"}]}`` in the order stored;
- ``GET /_posts``: ``{"posts": n, "by_request_id": {id: n}}``, every POST to a
  message path received, refused and repeated ones included (by request id: the
  posts that named one);
- ``POST /_fail`` ``{"status": 500|429|503|..., "times": n}``: the next ``n``
  posts answer that status (Google's error format) and store nothing;
- ``POST /_reset`` forgets messages, counts and failures; ``GET /_healthz``.

Run: ``python -m devstack.chat_stub --port 0 [--host 127.0.0.1] [--key K --token T]``;
the webhook URL is then ``http://HOST:PORT/v1/spaces/LOCAL/messages?key=K&token=T``
(``webhook_url``). Dev and test use only; never deploy it.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import itertools
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from devstack.serving import running

log = logging.getLogger("chat_stub")

Json = dict[str, Any]

DEFAULT_KEY = "local"
DEFAULT_TOKEN = "local"
DEFAULT_SPACE = "LOCAL"
MAX_TEXT_BYTES = 32_000
MAX_BODY_BYTES = 1 << 20
REPLY_OPTIONS = frozenset(
    {
        "MESSAGE_REPLY_OPTION_UNSPECIFIED",
        "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD",
        "REPLY_MESSAGE_OR_FAIL",
    }
)
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class ApiError(Exception):
    """An error answered in Google's JSON error format."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def payload(self) -> Json:
        status = _STATUS.get(self.code, "UNKNOWN")
        return {"error": {"code": self.code, "message": self.message, "status": status}}


@dataclass
class Store:
    """The space's messages and the counters tests read; one lock for all."""

    key: str = DEFAULT_KEY
    token: str = DEFAULT_TOKEN
    messages: list[Json] = field(default_factory=list)
    posts: int = 0
    posts_by_request: dict[str, int] = field(default_factory=dict)
    # (space, requestId) -> the stored message; (space, threadKey) -> thread name.
    by_request: dict[tuple[str, str], Json] = field(default_factory=dict)
    threads: dict[tuple[str, str], str] = field(default_factory=dict)
    failures: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def create(self, space: str, query: dict[str, str], raw: bytes) -> Json:
        """What one webhook POST answers (raises ApiError for a refusal)."""
        with self.lock:
            self.posts += 1
            if query.get("requestId"):
                seen = self.posts_by_request.get(query["requestId"], 0)
                self.posts_by_request[query["requestId"]] = seen + 1
            if self.failures:
                code = self.failures.pop(0)
                raise ApiError(code, _failure_message(code))
            if not (
                hmac.compare_digest(query.get("key", ""), self.key)
                and hmac.compare_digest(query.get("token", ""), self.token)
            ):
                raise ApiError(403, "The caller does not have permission")
            body = _message_body(raw)
            option = query.get("messageReplyOption", "")
            if option and option not in REPLY_OPTIONS:
                raise ApiError(400, f"Invalid value at 'message_reply_option', \"{option}\"")
            request_id = query.get("requestId", "")
            if request_id and (space, request_id) in self.by_request:
                return _answer(self.by_request[(space, request_id)])
            text = body.get("text")
            if not isinstance(text, str) or not text:
                raise ApiError(400, "Message cannot be empty. Discarded message.")
            if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
                raise ApiError(400, f"Message too long: more than {MAX_TEXT_BYTES} bytes.")
            thread = body.get("thread") if isinstance(body.get("thread"), dict) else {}
            thread_key = str((thread or {}).get("threadKey") or query.get("threadKey") or "")
            number = next(self._ids)
            replying = option in ("REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD", "REPLY_MESSAGE_OR_FAIL")
            if replying and thread_key and (space, thread_key) in self.threads:
                thread_name = self.threads[(space, thread_key)]
            else:
                thread_name = f"spaces/{space}/threads/T{number:06d}"
                if replying and thread_key:
                    self.threads[(space, thread_key)] = thread_name
            message = {
                "name": f"spaces/{space}/messages/M{number:06d}",
                "space": f"spaces/{space}",
                "text": text,
                "threadKey": thread_key,
                "thread": thread_name,
                "requestId": request_id,
                "messageReplyOption": option,
                "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            }
            self.messages.append(message)
            if request_id:
                self.by_request[(space, request_id)] = message
            return _answer(message)

    def fail(self, body: Json) -> Json:
        status, times = body.get("status", 500), body.get("times", 1)
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise ApiError(400, "status must be an HTTP error status (400-599)")
        if not isinstance(times, int) or not 0 <= times <= 1000:
            raise ApiError(400, "times must be an integer between 0 and 1000")
        with self.lock:
            self.failures = [status] * times
            return {"failing": len(self.failures), "status": status}

    def reset(self) -> None:
        with self.lock:
            self.messages.clear()
            self.by_request.clear()
            self.threads.clear()
            self.failures.clear()
            self.posts_by_request.clear()
            self.posts = 0

    def snapshot(self) -> list[Json]:
        with self.lock:
            return [dict(m) for m in self.messages]


def _failure_message(code: int) -> str:
    if code == 429:
        return "Resource has been exhausted (e.g. check quota)."
    if code >= 500:
        return "The service is currently unavailable."
    return "Injected failure."


def _message_body(raw: bytes) -> Json:
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise ApiError(400, f"Invalid JSON payload received. {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid JSON payload received. Expected an object.")
    return body


def _answer(message: Json) -> Json:
    """What Chat answers a webhook: the message's name, its text and thread name."""
    return {
        "name": message["name"],
        "text": message["text"],
        "thread": {"name": message["thread"]},
    }


def _space(path: str) -> str | None:
    parts = path.split("/")
    # ["", "v1", "spaces", SPACE, "messages"]
    if len(parts) == 5 and parts[:3] == ["", "v1", "spaces"] and parts[4] == "messages":
        return parts[3] or None
    return None


class StubServer(ThreadingHTTPServer):
    daemon_threads = True
    store: Store


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: StubServer

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def log_message(self, format: str, *args: Any) -> None:
        # The request line holds the webhook's key and token: never logged.
        line = format % args
        for secret in (self.server.store.key, self.server.store.token):
            if secret:
                line = line.replace(secret, "[redacted]")
        log.debug("%s %s", self.address_string(), line)

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        store = self.server.store
        status, payload = 200, {}
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                raise ApiError(413, "Request body too large.")
            raw = self.rfile.read(length)  # always drained: keep-alive stays in sync
            space = _space(url.path)
            if space is not None:
                if method != "POST":
                    raise ApiError(404, f"Method not found: {method} {url.path}")
                query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
                payload = store.create(space, query, raw)
            else:
                payload = self._control(method, url.path, raw)
        except ApiError as exc:
            status, payload = exc.code, exc.payload()
        except Exception:  # a stub bug must still answer, or the client hangs
            log.exception("internal error on %s %s", method, url.path)
            status, payload = 500, ApiError(500, "Internal error in chat stub.").payload()
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _control(self, method: str, path: str, raw: bytes) -> Json:
        store = self.server.store
        if (method, path) == ("GET", "/_healthz"):
            return {"ok": True}
        if (method, path) == ("GET", "/_messages"):
            return {"messages": store.snapshot()}
        if (method, path) == ("GET", "/_posts"):
            with store.lock:
                return {"posts": store.posts, "by_request_id": dict(store.posts_by_request)}
        if (method, path) == ("POST", "/_fail"):
            return store.fail(_message_body(raw))
        if (method, path) == ("POST", "/_reset"):
            store.reset()
            return {"ok": True}
        raise ApiError(404, f"Unknown path: {method} {path}")


def make_server(
    host: str = "127.0.0.1", port: int = 0, key: str = DEFAULT_KEY, token: str = DEFAULT_TOKEN
) -> StubServer:
    """Build (not start) the stub server; call ``serve_forever`` on it."""
    server = StubServer((host, port), _Handler)
    server.store = Store(key=key, token=token)
    return server


def base_url(server: StubServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


def webhook_url(
    base: str, space: str = DEFAULT_SPACE, key: str = DEFAULT_KEY, token: str = DEFAULT_TOKEN
) -> str:
    """The incoming-webhook URL of ``space`` on the stub at ``base``."""
    return (
        f"{base.rstrip('/')}/v1/spaces/{space}/messages?{urlencode({'key': key, 'token': token})}"
    )


@contextlib.contextmanager
def serving(key: str = DEFAULT_KEY, token: str = DEFAULT_TOKEN) -> Iterator[StubServer]:
    """The stub on a free loopback port, served on a thread until the block ends;
    its address is ``base_url(server)``, its state ``server.store``."""
    with running(make_server("127.0.0.1", 0, key, token)) as server:
        yield server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.chat_stub",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--key", default=DEFAULT_KEY, help="the webhook URL's key parameter")
    parser.add_argument("--token", default=DEFAULT_TOKEN, help="the webhook URL's token")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    server = make_server(args.host, args.port, args.key, args.token)

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever, which runs on this very thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"chat stub listening on {base_url(server)}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


__all__ = [
    "DEFAULT_KEY",
    "DEFAULT_SPACE",
    "DEFAULT_TOKEN",
    "StubServer",
    "base_url",
    "main",
    "make_server",
    "serving",
    "webhook_url",
]


if __name__ == "__main__":
    sys.exit(main())
