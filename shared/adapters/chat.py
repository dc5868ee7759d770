"""TeamChannel on a Google Chat incoming webhook, with ``requests``.

One ``POST`` per message to the webhook URL (``https://chat.googleapis.com/v1/
spaces/SPACE/messages?key=KEY&token=TOKEN``) with ``{"text", "thread":
{"threadKey"}}``, the URL's own query kept and two parameters added:

- ``messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD``: the message goes
  into the thread of its ``threadKey`` (the first one starts it), so one batch
  is one thread;
- ``requestId``: Chat returns the message created with an existing request ID
  instead of creating another, so a post repeated after a redelivery, or after
  an answer lost on the way back, shows once. Chat documents no format for it
  and recommends a UUID, so the caller's id (``batch:bat_x:ended``) is sent as
  ``uuid5(REQUEST_ID_NAMESPACE, request_id)`` (``chat_request_id``): the same
  id always gives the same UUID, and no character of the caller's reaches Chat.

Text beyond Chat's 32,000 bytes is cut at a character boundary (UTF-8) and
marked. No retries here: the caller's delivery is the retry. Errors:
timeouts, connection failures, 408, 429 and 5xx are ``TransientError``; any other
answer but a 2xx is ``PermanentError`` with the status and Chat's message.

The webhook URL is a credential (its key and token let anyone post to the
space): it appears in no exception, no log line and no ``repr``; the
exceptions of ``requests``, which name it, are never chained, and a filter
scrubs it from urllib3's debug log.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import uuid
from typing import Any
from urllib.parse import unquote_plus, urlencode, urlsplit, urlunsplit

import requests

from shared.domain.errors import ConfigError, PermanentError, TransientError

log = logging.getLogger(__name__)

# Chat's largest message, text and cards included (spaces.messages.create).
MAX_TEXT_BYTES = 32_000
TRUNCATED = "\n… (cut: the message was longer than Google Chat takes)"
REPLY_OPTION = "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"
OUR_PARAMETERS = frozenset({"requestId", "messageReplyOption"})
# Fixed forever: changing it would let a redelivered post make a second message.
REQUEST_ID_NAMESPACE = uuid.UUID("5b0f5d0e-2f7c-4c55-9a43-6c1f0a2e7d11")
# The setting the URL comes from, named in errors instead of the URL.
SETTING = "CHAT_WEBHOOK_URL"
_LOOPBACK_NAMES = frozenset({"localhost"})
# Query values this long are scrubbed from errors and logs (Chat's key and token
# are about 40 characters; a local stub's "local" is no secret, and scrubbing
# short words would maim unrelated text).
MIN_SECRET = 8


def chat_request_id(request_id: str) -> str:
    """The ``requestId`` Chat is sent for the caller's ``request_id``: a UUID
    (version 5) derived from it, the same for the same id."""
    return str(uuid.uuid5(REQUEST_ID_NAMESPACE, request_id))


def truncate_utf8(text: str, limit: int = MAX_TEXT_BYTES, marker: str = TRUNCATED) -> str:
    """``text`` if its UTF-8 fits ``limit`` bytes; else its longest prefix that
    fits with ``marker`` after it, cut between characters."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    room = limit - len(marker.encode("utf-8"))
    if room <= 0:
        raise ValueError("the marker does not fit the limit")
    # A cut inside a multi-byte character leaves an incomplete tail: drop it.
    return data[:room].decode("utf-8", errors="ignore") + marker


class _Scrub(logging.Filter):
    """Replaces the webhook's secrets in log records that mention them (urllib3
    logs each request's URL, query included, at DEBUG)."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, *secrets: str) -> None:
        with self._lock:
            self._secrets.update(s for s in secrets if len(s) >= MIN_SECRET)

    def redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "[redacted]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to fix
            return True
        scrubbed = self.redact(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


_SCRUB = _Scrub()
for _name in ("urllib3.connectionpool", "urllib3.util.retry", "requests"):
    logging.getLogger(_name).addFilter(_SCRUB)


class ChatWebhook:
    """Posts a batch's news to a Google Chat space through its incoming webhook."""

    def __init__(
        self, url: str, timeout_s: float = 10.0, session: requests.Session | None = None
    ) -> None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme not in ("https", "http") or not host or parts.fragment:
            raise ConfigError(f"{SETTING} must be an https URL (a Chat space's incoming webhook)")
        if parts.scheme == "http" and not _is_loopback(host):
            raise ConfigError(f"{SETTING} must use https (http only for a local stub on loopback)")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        # The URL's own query (key, token) is kept as Google wrote it (the token
        # is percent-encoded); ours is added per post, replacing any in the URL.
        self._query = [
            piece
            for piece in parts.query.split("&")
            if piece and unquote_plus(piece.partition("=")[0]) not in OUR_PARAMETERS
        ]
        values = [piece.partition("=")[2] for piece in self._query]
        self._secrets = tuple(
            s
            for s in {*values, *(unquote_plus(v) for v in values), parts.query}
            if len(s) >= MIN_SECRET
        )
        _SCRUB.add(*self._secrets)
        self._timeout_s = timeout_s
        self._session = session if session is not None else requests.Session()

    def __repr__(self) -> str:
        return f"ChatWebhook(<{SETTING}>, timeout_s={self._timeout_s:g})"

    def post(self, text: str, request_id: str, thread_key: str) -> None:
        """One message in the thread ``thread_key``; the same ``request_id``
        again makes no second message. Raises TransientError or PermanentError."""
        ours = urlencode(
            [("requestId", chat_request_id(request_id)), ("messageReplyOption", REPLY_OPTION)]
        )
        query = "&".join([*self._query, ours])
        body = {"text": truncate_utf8(text), "thread": {"threadKey": thread_key}}
        try:
            answer = self._session.post(
                f"{self._base}?{query}",
                data=json.dumps(body, ensure_ascii=False).encode("utf-8"),
                headers={"Content-Type": "application/json; charset=UTF-8"},
                timeout=self._timeout_s,
                allow_redirects=False,
            )
        except requests.Timeout:
            # Never chain requests' exception: its text names the URL.
            raise TransientError(
                f"Google Chat webhook: no answer within {self._timeout_s:g} s"
            ) from None
        except requests.RequestException as exc:
            raise TransientError(
                f"Google Chat webhook unreachable ({type(exc).__name__})"
            ) from None
        status = answer.status_code
        if 200 <= status < 300:
            log.debug("chat message posted for %s", request_id)
            return
        reason = self._reason(answer)
        if status in (408, 429) or status >= 500:
            raise TransientError(f"Google Chat webhook answered {status}: {reason}")
        raise PermanentError(f"Google Chat webhook refused the message ({status}): {reason}")

    def _reason(self, answer: requests.Response) -> str:
        """Chat's error message (Google's JSON error format), without the secrets."""
        try:
            payload: Any = answer.json()
        except ValueError:
            payload = None
        message = ""
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            error = payload["error"]
            message = str(error.get("message") or error.get("status") or "")
        if not message:
            message = answer.reason or "no message"
        if 300 <= answer.status_code < 400:
            message = f"a redirect ({message})"
        return _SCRUB.redact(self._redact(message))[:500]

    def _redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "[redacted]")
        return text


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = ["MAX_TEXT_BYTES", "ChatWebhook", "chat_request_id", "truncate_utf8"]
