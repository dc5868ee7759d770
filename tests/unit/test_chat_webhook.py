"""ChatWebhook (TeamChannel) against the Chat webhook stub served on a free port."""

from __future__ import annotations

import json
import logging
import socket
import traceback
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from devstack.chat_stub import StubServer, base_url, serving, webhook_url
from shared.adapters.chat import (
    MAX_TEXT_BYTES,
    TRUNCATED,
    ChatWebhook,
    chat_request_id,
    truncate_utf8,
)
from shared.domain.errors import ConfigError, PermanentError, TransientError
from shared.services.ports import TeamChannel

# Long enough to be scrubbed, distinctive enough to be found anywhere they leak.
KEY = "AIzaSy-test-key-0123456789abcdefghijklmnop"
TOKEN = "tok-SECRET-9f8e7d6c5b4a3210-zyxwvutsrqponm"
REPLY = "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"


class RecordingSession(requests.Session):
    """A real session that also keeps each request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.sent.append(request)
        return super().send(request, **kwargs)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with serving(key=KEY, token=TOKEN) as server:
        yield server


def url_of(server: StubServer, key: str = KEY, token: str = TOKEN) -> str:
    return webhook_url(base_url(server), "SPACE1", key, token)


def stored(server: StubServer) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = requests.get(f"{base_url(server)}/_messages", timeout=5).json()[
        "messages"
    ]
    return found


def posts(server: StubServer) -> int:
    return int(requests.get(f"{base_url(server)}/_posts", timeout=5).json()["posts"])


def fail_next(server: StubServer, status: int, times: int = 1) -> None:
    requests.post(
        f"{base_url(server)}/_fail", json={"status": status, "times": times}, timeout=5
    ).raise_for_status()


def assert_no_secret(exc: BaseException) -> None:
    """Neither the error nor anything chained to it (as a log would print it) names
    the key, the token or the URL."""
    text = "".join(traceback.format_exception(exc)) + repr(exc)
    for secret in (KEY, TOKEN):
        assert secret not in text, text


def test_it_is_a_team_channel(stub: StubServer) -> None:
    channel: TeamChannel = ChatWebhook(url_of(stub))
    channel.post("hello", "batch:bat_1:ended", "bat_1")
    assert len(stored(stub)) == 1


def test_the_request_keeps_the_webhook_query_and_adds_ours(stub: StubServer) -> None:
    session = RecordingSession()
    ChatWebhook(url_of(stub), session=session).post(
        "Batch bat_1 is done", "batch:bat_1:ended", "bat_1"
    )
    (sent,) = session.sent
    assert sent.method == "POST"
    parts = urlsplit(sent.url or "")
    assert parts.path == "/v1/spaces/SPACE1/messages"
    assert sorted(parse_qsl(parts.query)) == sorted(
        [
            ("key", KEY),
            ("token", TOKEN),
            ("requestId", chat_request_id("batch:bat_1:ended")),
            ("messageReplyOption", REPLY),
        ]
    )
    assert "application/json" in sent.headers["Content-Type"]
    assert json.loads(sent.body or b"") == {
        "text": "Batch bat_1 is done",
        "thread": {"threadKey": "bat_1"},
    }
    (message,) = stored(stub)
    assert message["text"] == "Batch bat_1 is done"
    assert message["threadKey"] == "bat_1"
    assert message["requestId"] == chat_request_id("batch:bat_1:ended")
    assert message["messageReplyOption"] == REPLY


def test_the_webhook_query_is_sent_as_google_wrote_it() -> None:
    """Chat's tokens end in a percent-encoded "=": the query goes out verbatim."""
    token = TOKEN + "="
    with serving(key=KEY, token=token) as server:
        url = url_of(server, token=token)
        assert f"token={TOKEN}%3D" in url
        session = RecordingSession()
        ChatWebhook(url, session=session).post("hi", "batch:bat_1:ended", "bat_1")
        assert f"?key={KEY}&token={TOKEN}%3D&requestId=" in (session.sent[0].url or "")
        assert len(stored(server)) == 1  # the stub read the token back as written


def test_a_request_id_in_the_url_is_replaced_not_doubled(stub: StubServer) -> None:
    session = RecordingSession()
    url = url_of(stub) + "&requestId=stale&messageReplyOption=MESSAGE_REPLY_OPTION_UNSPECIFIED"
    ChatWebhook(url, session=session).post("hi", "batch:bat_2:ended", "bat_2")
    query = parse_qsl(urlsplit(session.sent[0].url or "").query)
    assert [v for k, v in query if k == "requestId"] == [chat_request_id("batch:bat_2:ended")]
    assert [v for k, v in query if k == "messageReplyOption"] == [REPLY]


def test_the_same_request_id_makes_one_message(stub: StubServer) -> None:
    channel = ChatWebhook(url_of(stub))
    for _ in range(3):  # a redelivery, a second instance, a lost answer
        channel.post("Batch bat_1 is done", "batch:bat_1:ended", "bat_1")
    assert posts(stub) == 3
    assert [m["text"] for m in stored(stub)] == ["Batch bat_1 is done"]


def test_a_batch_s_events_share_its_thread(stub: StubServer) -> None:
    channel = ChatWebhook(url_of(stub))
    channel.post("failures", "batch:bat_1:failures", "bat_1")
    channel.post("ended", "batch:bat_1:ended", "bat_1")
    channel.post("other batch", "batch:bat_2:ended", "bat_2")
    first, second, other = stored(stub)
    assert first["thread"] == second["thread"] != other["thread"]


def test_the_chat_request_id_is_a_stable_uuid_of_the_caller_s_id() -> None:
    made = chat_request_id("batch:bat_x:ended")
    assert uuid.UUID(made).version == 5
    assert made == chat_request_id("batch:bat_x:ended")  # every instance, every redelivery
    assert made != chat_request_id("batch:bat_x:failures")
    assert made != chat_request_id("batch:bat_y:ended")
    # Fixed forever: a new namespace would let a redelivered post make a second message.
    assert made == str(
        uuid.uuid5(uuid.UUID("5b0f5d0e-2f7c-4c55-9a43-6c1f0a2e7d11"), "batch:bat_x:ended")
    )


def test_text_beyond_chat_s_limit_is_cut_between_characters(stub: StubServer) -> None:
    # 4-byte characters after one ASCII byte: the cut falls inside a character.
    text = "a" + "😀" * 10_000  # 40,001 bytes
    ChatWebhook(url_of(stub)).post(text, "batch:bat_1:ended", "bat_1")
    (message,) = stored(stub)  # the stub refuses text over 32,000 bytes
    kept = message["text"]
    assert kept.endswith(TRUNCATED)
    assert len(kept.encode("utf-8")) <= MAX_TEXT_BYTES
    body = kept.removesuffix(TRUNCATED)
    assert text.startswith(body)
    assert len(body.encode("utf-8")) > MAX_TEXT_BYTES - len(TRUNCATED.encode()) - 4


def test_truncation_at_the_boundary() -> None:
    exact = "é" * (MAX_TEXT_BYTES // 2)
    assert truncate_utf8(exact) == exact
    over = exact + "x"
    cut = truncate_utf8(over)
    assert cut.endswith(TRUNCATED) and len(cut.encode()) <= MAX_TEXT_BYTES
    assert truncate_utf8("short") == "short"
    assert truncate_utf8("ééé", limit=4, marker="…") == "…"  # "…" is 3 bytes, 1 left: no "é"
    assert truncate_utf8("ééé", limit=5, marker="…") == "é…"
    assert truncate_utf8("abcdef", limit=4, marker="…") == "a…"


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_429_and_5xx_are_transient(stub: StubServer, status: int) -> None:
    fail_next(stub, status)
    with pytest.raises(TransientError) as caught:
        ChatWebhook(url_of(stub)).post("hi", "batch:bat_1:ended", "bat_1")
    assert str(status) in str(caught.value)
    assert_no_secret(caught.value)
    assert stored(stub) == []


def test_a_retry_after_a_transient_failure_posts_once(stub: StubServer) -> None:
    fail_next(stub, 503, times=2)
    channel = ChatWebhook(url_of(stub))
    for _ in range(2):
        with pytest.raises(TransientError):
            channel.post("ended", "batch:bat_1:ended", "bat_1")
    channel.post("ended", "batch:bat_1:ended", "bat_1")
    channel.post("ended", "batch:bat_1:ended", "bat_1")  # a late redelivery
    assert posts(stub) == 4
    assert len(stored(stub)) == 1


def test_a_refused_webhook_is_permanent_with_status_and_chat_s_message(stub: StubServer) -> None:
    with pytest.raises(PermanentError) as caught:
        ChatWebhook(url_of(stub, token=TOKEN + "-revoked")).post("hi", "r", "t")
    message = str(caught.value)
    assert "403" in message and "The caller does not have permission" in message
    assert_no_secret(caught.value)
    assert TOKEN + "-revoked" not in message


@pytest.mark.parametrize("status", [400, 404])
def test_other_4xx_are_permanent(stub: StubServer, status: int) -> None:
    fail_next(stub, status)
    with pytest.raises(PermanentError) as caught:
        ChatWebhook(url_of(stub)).post("hi", "r", "t")
    assert not isinstance(caught.value, TransientError)
    assert str(status) in str(caught.value)
    assert_no_secret(caught.value)


def test_a_timeout_is_transient_and_names_no_secret() -> None:
    # A listener that never accepts: the connection opens, no answer comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        url = webhook_url(f"http://127.0.0.1:{port}", "S", KEY, TOKEN)
        with pytest.raises(TransientError) as caught:
            ChatWebhook(url, timeout_s=0.3).post("hi", "r", "t")
    assert "0.3 s" in str(caught.value)
    assert_no_secret(caught.value)


def test_a_connection_refused_is_transient_and_names_no_secret() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = webhook_url(f"http://127.0.0.1:{port}", "S", KEY, TOKEN)
    with pytest.raises(TransientError) as caught:
        ChatWebhook(url, timeout_s=2).post("hi", "r", "t")
    assert_no_secret(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


class Redirecting(requests.Session):
    """Answers every request with a redirect to elsewhere (recorded, not sent)."""

    def __init__(self) -> None:
        super().__init__()
        self.kwargs: list[dict[str, Any]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.kwargs.append(kwargs)
        response = requests.Response()
        response.status_code = 302
        response.headers["Location"] = "https://elsewhere.example/collect"
        response.request = request
        response.url = request.url or ""
        response._content = b""
        return response


def test_a_redirect_is_not_followed_and_is_permanent(stub: StubServer) -> None:
    session = Redirecting()
    with pytest.raises(PermanentError) as caught:
        ChatWebhook(url_of(stub), session=session).post("hi", "r", "t")
    assert len(session.kwargs) == 1
    assert "302" in str(caught.value)
    assert_no_secret(caught.value)


def test_the_urllib3_debug_log_never_shows_the_secrets(
    stub: StubServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        ChatWebhook(url_of(stub)).post("hi", "batch:bat_1:ended", "bat_1")
    assert any("POST /v1/spaces/SPACE1/messages" in r.getMessage() for r in caplog.records)
    assert KEY not in caplog.text and TOKEN not in caplog.text, caplog.text


@pytest.mark.parametrize(
    "url",
    [
        "http://chat.example.com/v1/spaces/S/messages?key=" + KEY,  # http beyond loopback
        "ftp://chat.googleapis.com/v1/spaces/S/messages?key=" + KEY,
        "chat.googleapis.com/v1/spaces/S/messages?key=" + KEY,
    ],
)
def test_a_url_that_is_no_webhook_is_a_config_error_naming_the_setting(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ChatWebhook(url)
    assert "CHAT_WEBHOOK_URL" in str(caught.value)
    assert KEY not in str(caught.value)


def test_https_and_loopback_http_are_accepted_and_repr_hides_the_url() -> None:
    channel = ChatWebhook(
        f"https://chat.googleapis.com/v1/spaces/S/messages?key={KEY}&token={TOKEN}"
    )
    assert KEY not in repr(channel) and TOKEN not in repr(channel)
    ChatWebhook(f"http://localhost:9/v1/spaces/S/messages?key={KEY}")
    ChatWebhook(f"http://[::1]:9/v1/spaces/S/messages?key={KEY}")
