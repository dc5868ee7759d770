"""The Chat webhook stub answers as a Chat space's incoming webhook does, and counts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.chat_stub import StubServer, base_url, serving, webhook_url

REPO = Path(__file__).resolve().parents[2]
REPLY = "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with serving(key="k-123456789", token="t-123456789") as server:
        yield server


def url(server: StubServer, **changes: str) -> str:
    parts = {"key": "k-123456789", "token": "t-123456789", **changes}
    return webhook_url(base_url(server), "SPACE1", parts["key"], parts["token"])


def post(
    server: StubServer,
    text: str = "hello",
    request_id: str | None = None,
    thread_key: str | None = "bat_1",
    option: str | None = REPLY,
    **url_changes: str,
) -> requests.Response:
    params = {}
    if request_id is not None:
        params["requestId"] = request_id
    if option is not None:
        params["messageReplyOption"] = option
    body: dict[str, Any] = {"text": text}
    if thread_key is not None:
        body["thread"] = {"threadKey": thread_key}
    return requests.post(url(server, **url_changes), params=params, json=body, timeout=5)


def messages(server: StubServer) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = requests.get(f"{base_url(server)}/_messages", timeout=5).json()[
        "messages"
    ]
    return found


def posts(server: StubServer) -> int:
    return int(requests.get(f"{base_url(server)}/_posts", timeout=5).json()["posts"])


def test_a_post_is_stored_and_answered_as_chat_does(stub: StubServer) -> None:
    answer = post(stub, "Batch bat_1 is done", request_id="r-1")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["name"].startswith("spaces/SPACE1/messages/")
    assert body["thread"]["name"].startswith("spaces/SPACE1/threads/")
    (stored,) = messages(stub)
    assert stored["text"] == "Batch bat_1 is done"
    assert (stored["threadKey"], stored["requestId"]) == ("bat_1", "r-1")
    assert stored["messageReplyOption"] == REPLY
    assert (stored["name"], stored["thread"]) == (body["name"], body["thread"]["name"])
    assert stored["time"].endswith("Z")
    assert posts(stub) == 1


def test_a_repeated_request_id_returns_the_first_message_and_stores_nothing(
    stub: StubServer,
) -> None:
    first = post(stub, "ended", request_id="same").json()
    again = post(stub, "ended, said again", request_id="same")
    assert again.status_code == 200
    assert again.json() == first
    assert [m["text"] for m in messages(stub)] == ["ended"]
    assert posts(stub) == 2  # every POST counts, repeats included
    # Another id is another message.
    post(stub, "other", request_id="other")
    assert len(messages(stub)) == 2


def test_one_thread_per_thread_key_when_replying(stub: StubServer) -> None:
    a = post(stub, "one", request_id="1", thread_key="bat_a").json()
    b = post(stub, "two", request_id="2", thread_key="bat_a").json()
    c = post(stub, "three", request_id="3", thread_key="bat_b").json()
    assert a["thread"] == b["thread"] != c["thread"]
    assert a["name"] != b["name"]


def test_without_a_reply_option_every_message_starts_a_thread(stub: StubServer) -> None:
    a = post(stub, "one", request_id="1", option=None).json()
    b = post(stub, "two", request_id="2", option=None).json()
    assert a["thread"] != b["thread"]


@pytest.mark.parametrize(
    "changes", [{"token": "wrong-token"}, {"key": "wrong-key"}, {"key": "", "token": ""}]
)
def test_a_wrong_key_or_token_is_refused_with_403(
    stub: StubServer, changes: dict[str, str]
) -> None:
    answer = post(stub, request_id="r", **changes)
    assert answer.status_code == 403
    assert answer.json()["error"]["status"] == "PERMISSION_DENIED"
    assert messages(stub) == []
    assert posts(stub) == 1


def test_injected_failures_answer_the_next_posts_then_stop(stub: StubServer) -> None:
    armed = requests.post(f"{base_url(stub)}/_fail", json={"status": 500, "times": 2}, timeout=5)
    assert armed.json() == {"failing": 2, "status": 500}
    codes = [post(stub, request_id="r").status_code for _ in range(3)]
    assert codes == [500, 500, 200]
    requests.post(f"{base_url(stub)}/_fail", json={"status": 429}, timeout=5)
    answer = post(stub, request_id="r2")
    assert answer.status_code == 429
    assert answer.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert [m["requestId"] for m in messages(stub)] == ["r"]
    assert posts(stub) == 4


@pytest.mark.parametrize("body", [{"status": 200}, {"status": 500, "times": -1}, {"times": "x"}])
def test_a_bad_failure_script_is_refused(stub: StubServer, body: dict[str, Any]) -> None:
    answer = requests.post(f"{base_url(stub)}/_fail", json=body, timeout=5)
    assert answer.status_code == 400


def test_what_chat_refuses_is_refused(stub: StubServer) -> None:
    assert post(stub, "", request_id="empty").status_code == 400
    assert post(stub, "x" * 32_001, request_id="long").status_code == 400
    assert post(stub, "é" * 16_000, request_id="fits").status_code == 200  # 32,000 bytes
    assert post(stub, "hi", request_id="opt", option="REPLY_SOMEHOW").status_code == 400
    not_json = requests.post(url(stub), data=b"{not json", timeout=5)
    assert not_json.status_code == 400
    assert not_json.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert [m["requestId"] for m in messages(stub)] == ["fits"]


def test_unknown_paths_and_methods_are_404(stub: StubServer) -> None:
    assert requests.get(url(stub), timeout=5).status_code == 404
    assert (
        requests.post(f"{base_url(stub)}/v1/spaces/S/other", json={}, timeout=5).status_code == 404
    )
    assert requests.get(f"{base_url(stub)}/_nothing", timeout=5).status_code == 404


def test_reset_forgets_messages_counts_and_failures(stub: StubServer) -> None:
    post(stub, request_id="r")
    requests.post(f"{base_url(stub)}/_fail", json={"status": 503, "times": 5}, timeout=5)
    requests.post(f"{base_url(stub)}/_reset", timeout=5)
    assert (messages(stub), posts(stub)) == ([], 0)
    assert post(stub, request_id="r").status_code == 200  # the id is free again, no failure
    assert len(messages(stub)) == 1


def test_main_serves_on_a_free_port_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack.chat_stub", "--port", "0", "--key", "a", "--token", "b"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("chat stub listening on http://127.0.0.1:"), line
        base = line.split(" on ", 1)[1].strip()
        assert requests.get(f"{base}/_healthz", timeout=5).json() == {"ok": True}
        answer = requests.post(
            webhook_url(base, key="a", token="b"),
            params={"requestId": "x"},
            data=json.dumps({"text": "hi"}),
            timeout=5,
        )
        assert answer.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_local_stack_starts_the_stub_on_loopback_and_stops_it(tmp_path: Path) -> None:
    from devstack.stack import Stack, StackConfig
    from shared.adapters.chat import ChatWebhook

    stack = Stack(StackConfig(state_dir=tmp_path, startup_timeout_s=30))
    (tmp_path / "logs").mkdir()
    try:
        stack._start_chat_stub()
        assert stack.chat_url.startswith("http://127.0.0.1:")
        assert stack.chat_webhook_url == webhook_url(stack.chat_url)
        ChatWebhook(stack.chat_webhook_url).post("hello", "batch:bat_1:ended", "bat_1")
        found = requests.get(f"{stack.chat_url}/_messages", timeout=5).json()["messages"]
        assert [m["text"] for m in found] == ["hello"]
    finally:
        stack.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{stack.chat_url}/_healthz", timeout=2)
