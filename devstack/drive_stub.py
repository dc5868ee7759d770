"""Local protocol stub of the Google Drive API v3, for the dev stack and tests.

Google ships no Drive emulator, so this answers, with Drive's request and
response shapes, the calls ``shared/adapters/drive.py`` makes:

- ``GET /drive/v3/files/{id}`` (``files.get``): the item's resource, cut to
  ``fields`` (``id,name,mimeType,capabilities(canAddChildren),...``; an unknown
  field is a 400); ``alt=media`` answers a file's bytes. Unknown id: 404
  ``notFound``. Items of a shared drive answer 404 unless the request says
  ``supportsAllDrives=true``, as Drive does.
- ``GET /drive/v3/files`` (``files.list``): ``q`` in the subset the adapter
  sends, terms joined by ``and``: ``'<id>' in parents``, ``appProperties has
  { key='k' and value='v' }``, ``trashed = false`` (or ``true``); strings in
  single quotes with ``\\'`` and ``\\\\`` escapes. Anything else is a 400
  ``invalid``. Shared-drive items are listed only with
  ``includeItemsFromAllDrives=true`` and ``supportsAllDrives=true``. One page
  (``pageSize``, default 100); no ``nextPageToken``.
- ``PATCH /drive/v3/files/{id}`` (``files.update``): ``trashed``, ``name``,
  ``description``.
- ``POST /upload/drive/v3/files?uploadType=resumable`` with the metadata
  (``name``, ``parents``: one folder, ``mimeType``, ``appProperties``,
  ``description``): 200 with ``Location: <stub>/upload/drive/v3/files?
  uploadType=resumable&upload_id=X``. The parent must exist and be a folder
  (404 otherwise); a read-only folder answers 403 ``insufficientFilePermissions``;
  a folder in a My Drive (``my_drive``), or no parent at all, answers what Drive
  answers a service account there: 403 ``storageQuotaExceeded``. An app
  property over 124 bytes (key and value, UTF-8) is a 403
  ``propertyLengthLimitExceeded``, as in Drive.
- ``PUT <Location>`` with ``Content-Range: bytes a-b/*`` or ``bytes a-b/total``:
  offsets must be contiguous (a start past what was received is a 400; bytes
  sent again are skipped), every chunk but the last a multiple of 256 KiB
  (400 otherwise); answers ``308`` with ``Range: bytes=0-n`` (no ``Range``
  while nothing is kept) until the total is in, then 200 with the file
  (``fields`` as the upload's start asked). ``Content-Range: bytes */*`` or
  ``bytes */total`` with no body asks the status (and ``*/total`` completes an
  upload that has every byte: an empty file is ``bytes */0``). Unknown session: 404.

Files keep name, parents, mimeType, appProperties, description, bytes, size and
md5Checksum in memory. Requests may carry an ``Authorization`` header (never
checked: loopback only).

Control endpoints (JSON; never in Drive):

- ``POST /_folders`` ``{"name", "my_drive"?: false, "read_only"?: false}`` ->
  ``{"id", "name"}``: a folder shared with us (of a shared drive unless
  ``my_drive``); ``GET /_folders`` lists them;
- ``GET /_files``: ``{"files": [{"id", "name", "parents", "mimeType",
  "appProperties", "description", "size", "md5Checksum", "trashed"}]}``;
- ``POST /_fail`` ``{"status", "times", "on"?: "put", "after_bytes"?, "reason"?}``:
  the next ``times`` requests of a kind (``put``: every PUT to an upload
  session; ``start``, ``get``, ``list``, ``update``) answer ``status`` in
  Drive's error format (``reason`` as given, else the usual one for the
  status). With ``after_bytes``, a failure waits for a chunk that reaches past
  that byte of its upload, keeps the chunk's bytes before it (whole 256 KiB
  blocks, as Drive keeps them) and then fails: a connection lost mid-chunk;
- ``POST /_config`` ``{"accept_at_most"?: bytes, "corrupt"?: bool}``: keep at
  most that many new bytes of each chunk (whole 256 KiB blocks; 0: all), so
  ``308`` acknowledges less than was sent; store the next uploads with their
  first byte changed (a damaged upload);
- ``GET /_stats``: requests by kind (``files.get``, ``files.get_media``,
  ``files.list``, ``files.update``, ``upload.start``, ``upload.chunk``,
  ``upload.query``), ``failed`` (injected), ``authorized`` (requests with an
  ``Authorization`` header), ``bytes_received``;
- ``POST /_reset``: forgets files, upload sessions, failures, configuration and
  counts (folders stay); ``GET /_healthz``: ``{"ok": true, "default_folder_id"}``.

Run: ``python -m devstack.drive_stub --port 0 [--host 127.0.0.1] [--folder NAME]``
(``--folder`` creates a folder at start, printed and in ``/_healthz``). Dev and
test use only; never deploy it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import hashlib
import json
import logging
import re
import secrets
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from devstack.serving import running

log = logging.getLogger("drive_stub")

Json = dict[str, Any]

FOLDER_MIME = "application/vnd.google-apps.folder"
CHUNK_UNIT = 256 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_PROPERTY_BYTES = 124
SHARED_DRIVE_ID = "0ALocalSharedDrive"
FILE_FIELDS = frozenset(
    {
        "kind",
        "id",
        "name",
        "mimeType",
        "parents",
        "appProperties",
        "description",
        "trashed",
        "size",
        "md5Checksum",
        "driveId",
        "capabilities",
        "createdTime",
    }
)
LIST_FIELDS = frozenset({"kind", "files", "nextPageToken", "incompleteSearch"})
DEFAULT_GET_FIELDS = "kind,id,name,mimeType"
DEFAULT_LIST_FIELDS = "kind,incompleteSearch,files(kind,id,name,mimeType)"
FAIL_KINDS = frozenset({"put", "start", "get", "list", "update"})
QUOTA_MESSAGE = (
    "Service Accounts do not have storage quota. Leverage shared drives "
    "(https://developers.google.com/workspace/drive/api/guides/about-shareddrives), "
    "or use OAuth delegation (http://support.google.com/a/answer/7281227) instead."
)
_DEFAULT_REASON = {
    400: "badRequest",
    401: "authError",
    403: "forbidden",
    404: "notFound",
    408: "requestTimeout",
    409: "conflict",
    413: "uploadTooLarge",
    429: "rateLimitExceeded",
}
_CONTENT_RANGE = re.compile(r"bytes (?:\*|(\d+)-(\d+))/(\*|\d+)")


class ApiError(Exception):
    """An error answered in Drive's JSON error format."""

    def __init__(self, code: int, message: str, reason: str = "", location: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _DEFAULT_REASON.get(code, "backendError")
        self.location = location

    def payload(self) -> Json:
        detail: Json = {"domain": "global", "reason": self.reason, "message": self.message}
        if self.location:
            detail |= {"locationType": "parameter", "location": self.location}
        return {"error": {"code": self.code, "message": self.message, "errors": [detail]}}


def not_found(item_id: str) -> ApiError:
    return ApiError(404, f"File not found: {item_id}.", "notFound", "fileId")


@dataclass
class Item:
    """A folder or a file."""

    id: str
    name: str
    mime_type: str
    parents: list[str] = field(default_factory=list)
    app_properties: dict[str, str] = field(default_factory=dict)
    description: str = ""
    data: bytes = b""
    trashed: bool = False
    drive_id: str | None = SHARED_DRIVE_ID
    read_only: bool = False
    created: str = ""

    @property
    def is_folder(self) -> bool:
        return self.mime_type == FOLDER_MIME

    def resource(self) -> Json:
        """Every field of the item, as Drive names them."""
        found: Json = {
            "kind": "drive#file",
            "id": self.id,
            "name": self.name,
            "mimeType": self.mime_type,
            "parents": list(self.parents),
            "appProperties": dict(self.app_properties),
            "description": self.description,
            "trashed": self.trashed,
            "createdTime": self.created,
            "capabilities": {
                "canAddChildren": self.is_folder and not self.read_only,
                "canEdit": not self.read_only,
                "canTrash": not self.read_only,
            },
        }
        if not self.is_folder:
            # int64 values are JSON strings in Google's APIs.
            found["size"] = str(len(self.data))
            found["md5Checksum"] = hashlib.md5(self.data, usedforsecurity=False).hexdigest()
        if self.drive_id:
            found["driveId"] = self.drive_id
        return found


@dataclass
class UploadSession:
    id: str
    metadata: Json
    fields: str
    received: bytearray = field(default_factory=bytearray)
    total: int | None = None
    file_id: str | None = None


@dataclass
class Failure:
    status: int
    on: str
    after_bytes: int | None
    reason: str


@dataclass
class Store:
    """Folders, files, upload sessions and the counters tests read; one lock for all."""

    items: dict[str, Item] = field(default_factory=dict)
    sessions: dict[str, UploadSession] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    accept_at_most: int = 0
    corrupt: bool = False
    default_folder_id: str = ""
    # Reentrant: a request's handler takes the injected failures under it too.
    lock: Any = field(default_factory=threading.RLock)

    # ------------------------------------------------------------------ control
    def add_folder(self, name: str, my_drive: bool = False, read_only: bool = False) -> Item:
        with self.lock:
            folder = Item(
                id=_new_id(),
                name=name,
                mime_type=FOLDER_MIME,
                drive_id=None if my_drive else SHARED_DRIVE_ID,
                read_only=read_only,
                created=_now(),
            )
            self.items[folder.id] = folder
            return folder

    def fail(self, body: Json) -> Json:
        status, times = body.get("status", 503), body.get("times", 1)
        on, after, reason = body.get("on", "put"), body.get("after_bytes"), body.get("reason", "")
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise ApiError(400, "status must be an HTTP error status (400-599)")
        if not isinstance(times, int) or not 0 <= times <= 1000:
            raise ApiError(400, "times must be an integer between 0 and 1000")
        if on not in FAIL_KINDS:
            raise ApiError(400, f"on must be one of {sorted(FAIL_KINDS)}")
        if after is not None and (not isinstance(after, int) or after < 0 or on != "put"):
            raise ApiError(400, "after_bytes must be a non-negative integer, with on = put")
        if not isinstance(reason, str):
            raise ApiError(400, "reason must be a string")
        with self.lock:
            self.failures += [Failure(status, on, after, reason)] * times
            return {"failing": len(self.failures)}

    def configure(self, body: Json) -> Json:
        with self.lock:
            if "accept_at_most" in body:
                limit = body["accept_at_most"]
                if not isinstance(limit, int) or limit < 0:
                    raise ApiError(400, "accept_at_most must be a non-negative integer")
                self.accept_at_most = limit
            if "corrupt" in body:
                self.corrupt = bool(body["corrupt"])
            return {"accept_at_most": self.accept_at_most, "corrupt": self.corrupt}

    def reset(self) -> None:
        with self.lock:
            for item_id in [i for i, item in self.items.items() if not item.is_folder]:
                del self.items[item_id]
            self.sessions.clear()
            self.failures.clear()
            self.stats.clear()
            self.accept_at_most = 0
            self.corrupt = False

    def files(self) -> list[Json]:
        with self.lock:
            keep = [*("id", "name", "parents", "mimeType", "appProperties", "description")]
            keep += ["size", "md5Checksum", "trashed"]
            return [
                {name: item.resource()[name] for name in keep}
                for item in self.items.values()
                if not item.is_folder
            ]

    def folders(self) -> list[Json]:
        with self.lock:
            return [
                {
                    "id": item.id,
                    "name": item.name,
                    "my_drive": item.drive_id is None,
                    "read_only": item.read_only,
                }
                for item in self.items.values()
                if item.is_folder
            ]

    def take_failure(self, on: str, reaching: int | None = None) -> Failure | None:
        """The next injected failure for a request of kind ``on`` (a chunk
        reaching byte ``reaching`` of its upload, for ``after_bytes``)."""
        with self.lock:
            for index, failure in enumerate(self.failures):
                if failure.on != on:
                    continue
                if failure.after_bytes is not None and (
                    reaching is None or reaching <= failure.after_bytes
                ):
                    continue
                del self.failures[index]
                self.stats["failed"] += 1
                return failure
            return None

    # ------------------------------------------------------------------ Drive
    def visible(self, item_id: str, all_drives: bool) -> Item:
        item = self.items.get(item_id)
        if item is None or (item.drive_id and not all_drives):
            raise not_found(item_id)
        return item

    def get(self, item_id: str, params: dict[str, str]) -> Json | bytes:
        with self.lock:
            media = params.get("alt") == "media"
            self.stats["files.get_media" if media else "files.get"] += 1
            self._inject("get")
            item = self.visible(item_id, _true(params, "supportsAllDrives"))
            if media:
                if item.is_folder:
                    raise ApiError(
                        403,
                        "Only files with binary content can be downloaded.",
                        "fileNotDownloadable",
                    )
                return item.data
            return select(item.resource(), params.get("fields") or DEFAULT_GET_FIELDS, FILE_FIELDS)

    def list(self, params: dict[str, str]) -> Json:
        with self.lock:
            self.stats["files.list"] += 1
            self._inject("list")
            terms = parse_query(params.get("q", ""))
            all_drives = _true(params, "supportsAllDrives") and _true(
                params, "includeItemsFromAllDrives"
            )
            page_size = _int_param(params, "pageSize", 100, 1, 1000)
            found = [
                item.resource()
                for item in self.items.values()
                if (all_drives or not item.drive_id) and all(term(item) for term in terms)
            ][:page_size]
            answer = {"kind": "drive#fileList", "incompleteSearch": False, "files": found}
            return select(answer, params.get("fields") or DEFAULT_LIST_FIELDS, LIST_FIELDS)

    def update(self, item_id: str, params: dict[str, str], raw: bytes) -> Json:
        with self.lock:
            self.stats["files.update"] += 1
            self._inject("update")
            item = self.visible(item_id, _true(params, "supportsAllDrives"))
            body = _json_object(raw)
            unknown = set(body) - {"trashed", "name", "description"}
            if unknown:
                raise ApiError(
                    400, f"Invalid JSON payload received. Unknown name {sorted(unknown)}"
                )
            if item.read_only:
                raise ApiError(
                    403,
                    f"The user does not have sufficient permissions for file {item_id}.",
                    "insufficientFilePermissions",
                )
            if "trashed" in body:
                item.trashed = bool(body["trashed"])
            if isinstance(body.get("name"), str):
                item.name = body["name"]
            if isinstance(body.get("description"), str):
                item.description = body["description"]
            return select(item.resource(), params.get("fields") or DEFAULT_GET_FIELDS, FILE_FIELDS)

    def start_upload(self, params: dict[str, str], raw: bytes, headers: Any) -> str:
        """A new resumable upload session; its id."""
        with self.lock:
            self.stats["upload.start"] += 1
            self._inject("start")
            if params.get("uploadType") != "resumable":
                raise ApiError(
                    400, "This stub speaks only uploadType=resumable.", "invalid", "uploadType"
                )
            metadata = _upload_metadata(_json_object(raw), headers)
            parents = metadata["parents"]
            if not parents:
                # The service account's own My Drive: no storage quota.
                raise ApiError(403, QUOTA_MESSAGE, "storageQuotaExceeded")
            if len(parents) > 1:
                raise ApiError(
                    403,
                    "Increasing the number of parents is not allowed.",
                    "cannotAddParent",
                )
            parent = self.items.get(parents[0])
            all_drives = _true(params, "supportsAllDrives")
            if parent is None or not parent.is_folder or (parent.drive_id and not all_drives):
                raise not_found(parents[0])
            if parent.read_only:
                raise ApiError(
                    403,
                    f"The user does not have sufficient permissions for file {parent.id}.",
                    "insufficientFilePermissions",
                )
            if parent.drive_id is None:
                raise ApiError(403, QUOTA_MESSAGE, "storageQuotaExceeded")
            session = UploadSession(_new_id(), metadata, params.get("fields") or DEFAULT_GET_FIELDS)
            self.sessions[session.id] = session
            return session.id

    def put(self, upload_id: str, content_range: str | None, raw: bytes) -> tuple[int, Json, int]:
        """One PUT to an upload session: (status, body, bytes kept so far)."""
        with self.lock:
            session = self.sessions.get(upload_id)
            query = content_range is not None and content_range.startswith("bytes */")
            self.stats["upload.query" if query else "upload.chunk"] += 1
            start, end, total = _parse_range(content_range, len(raw))
            reaching = None if start is None or end is None else end + 1
            failure = self.take_failure("put", reaching)
            if failure is not None:
                if session is not None and failure.after_bytes is not None and start is not None:
                    self._keep(session, start, raw, failure.after_bytes)
                raise ApiError(failure.status, _failure_message(failure.status), failure.reason)
            if session is None:
                raise ApiError(404, "Not Found", "notFound")
            if session.file_id is not None:
                return 200, self._finished(session), len(session.received)
            if total is not None and session.total is not None and session.total != total:
                raise ApiError(
                    400,
                    f"Invalid request. The total size {total} differs from the "
                    f"{session.total} given before.",
                    "badContent",
                )
            if start is None or end is None:  # a status query
                if raw:
                    raise ApiError(400, "Invalid request. A status query has no body.")
                if total is not None and total < len(session.received):
                    raise ApiError(
                        400, "Invalid request. More bytes were sent than the total size."
                    )
            else:
                if len(raw) != end - start + 1:
                    raise ApiError(
                        400,
                        f"Invalid request. Content-Range names {end - start + 1} bytes; the "
                        f"body has {len(raw)}.",
                    )
                if start > len(session.received):
                    raise ApiError(
                        400,
                        f"Invalid request. According to the Content-Range header, the upload "
                        f"offset is {start} byte(s), which exceeds already uploaded size of "
                        f"{len(session.received)} byte(s).",
                    )
                if total is not None and (end >= total or total < len(session.received)):
                    raise ApiError(400, "Invalid request. The range ends past the total size.")
                last = total is not None and end + 1 == total
                if not last and len(raw) % CHUNK_UNIT:
                    raise ApiError(
                        400,
                        f"Invalid request. Every chunk but the last must be a multiple of "
                        f"{CHUNK_UNIT} bytes; this one has {len(raw)}.",
                    )
            # Only a valid request fixes the total.
            if total is not None:
                session.total = total
            if start is not None:
                have = len(session.received)
                self._keep(session, start, raw, have + (self.accept_at_most or len(raw)))
            if session.total is not None and len(session.received) == session.total:
                return 200, self._finish(session), len(session.received)
            return 308, {}, len(session.received)

    # ------------------------------------------------------------------ helpers
    def _inject(self, on: str) -> None:
        failure = self.take_failure(on)
        if failure is not None:
            raise ApiError(failure.status, _failure_message(failure.status), failure.reason)

    def _keep(self, session: UploadSession, start: int, raw: bytes, upto: int) -> None:
        """Keep the chunk's new bytes (those past what the session has) up to
        byte ``upto`` of the upload: whole 256 KiB blocks, unless they complete it."""
        have = len(session.received)
        if start > have:
            return  # a gap: nothing of it can be kept
        new = raw[have - start :]
        take = max(0, min(upto - have, len(new)))
        if not (session.total is not None and have + take == session.total):
            take -= take % CHUNK_UNIT
        session.received += new[:take]
        self.stats["bytes_received"] += take

    def _finish(self, session: UploadSession) -> Json:
        metadata = session.metadata
        parent = self.items.get(metadata["parents"][0])
        if parent is None or not parent.is_folder:
            raise not_found(metadata["parents"][0])
        data = bytes(session.received)
        if self.corrupt and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        item = Item(
            id=_new_id(),
            name=metadata["name"],
            mime_type=metadata["mimeType"],
            parents=[parent.id],
            app_properties=dict(metadata["appProperties"]),
            description=metadata["description"],
            data=data,
            drive_id=parent.drive_id,
            created=_now(),
        )
        self.items[item.id] = item
        session.file_id = item.id
        return self._finished(session)

    def _finished(self, session: UploadSession) -> Json:
        item = self.items[session.file_id or ""]
        return select(item.resource(), session.fields, FILE_FIELDS)


# ---------------------------------------------------------------------- fields
_FIELD = re.compile(r"\s*([A-Za-z][A-Za-z0-9]*)\s*")


def parse_fields(text: str) -> dict[str, Any]:
    """``a,b(c,d)`` -> ``{"a": None, "b": {"c": None, "d": None}}``."""
    position = 0

    def parse_list() -> dict[str, Any]:
        nonlocal position
        found: dict[str, Any] = {}
        while True:
            match = _FIELD.match(text, position)
            if match is None:
                raise ApiError(400, f"Invalid field selection {text}", "invalidParameter", "fields")
            position = match.end()
            sub: Any = None
            if text.startswith("(", position):
                position += 1
                sub = parse_list()
                if not text.startswith(")", position):
                    raise ApiError(
                        400, f"Invalid field selection {text}", "invalidParameter", "fields"
                    )
                position += 1
            found[match.group(1)] = sub
            if text.startswith(",", position):
                position += 1
                continue
            return found

    parsed = parse_list()
    if text[position:].strip():
        raise ApiError(400, f"Invalid field selection {text}", "invalidParameter", "fields")
    return parsed


def select(resource: Json, fields: str, known: frozenset[str]) -> Json:
    """``resource`` cut to ``fields`` (Drive's partial response)."""
    wanted = parse_fields(fields)
    unknown = set(wanted) - known
    if isinstance(wanted.get("files"), dict):
        unknown |= set(wanted["files"]) - FILE_FIELDS
    if unknown:
        raise ApiError(
            400, f"Invalid field selection {sorted(unknown)[0]}", "invalidParameter", "fields"
        )
    cut: Json = _cut(resource, wanted)
    return cut


def _cut(value: Any, wanted: dict[str, Any] | None) -> Any:
    if wanted is None:
        return copy.deepcopy(value)
    if isinstance(value, list):
        return [_cut(entry, wanted) for entry in value]
    if isinstance(value, dict):
        return {name: _cut(value[name], sub) for name, sub in wanted.items() if name in value}
    return value


# ---------------------------------------------------------------------- q
_TOKEN = re.compile(r"\s*(?:(')|([A-Za-z]+)|(\{|\}|=))")


def _tokens(text: str) -> list[tuple[str, str]]:
    """``("str", value)``, ``("word", w)`` and ``("op", o)`` tokens of a query."""
    found: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        if not text[position:].strip():
            break
        match = _TOKEN.match(text, position)
        if match is None:
            raise _invalid_query()
        position = match.end()
        if match.group(1):
            value, position = _string(text, position)
            found.append(("str", value))
        elif match.group(2):
            found.append(("word", match.group(2)))
        else:
            found.append(("op", match.group(3)))
    return found


def _string(text: str, position: int) -> tuple[str, int]:
    """The quoted string starting at ``position`` (after its quote); unescaped."""
    out = []
    while position < len(text):
        char = text[position]
        if char == "\\":
            if position + 1 >= len(text) or text[position + 1] not in "\\'":
                raise _invalid_query()
            out.append(text[position + 1])
            position += 2
        elif char == "'":
            return "".join(out), position + 1
        else:
            out.append(char)
            position += 1
    raise _invalid_query()


Term = Callable[[Item], bool]


def _in_parents(parent: str, item: Item) -> bool:
    return parent in item.parents


def _has_property(key: str, wanted: str, item: Item) -> bool:
    return item.app_properties.get(key) == wanted


def _trashed(flag: bool, item: Item) -> bool:
    return item.trashed == flag


def parse_query(text: str) -> list[Term]:
    """The terms of ``q`` (each a predicate on an Item); 400 for anything else
    than the subset the module doc lists."""
    if not text.strip():
        return []
    tokens = _tokens(text)
    terms: list[Term] = []
    index = 0

    def expect(kind: str, value: str | None = None) -> str:
        nonlocal index
        if index >= len(tokens):
            raise _invalid_query()
        got_kind, got = tokens[index]
        if got_kind != kind or (value is not None and got != value):
            raise _invalid_query()
        index += 1
        return got

    while True:
        kind, value = tokens[index] if index < len(tokens) else ("", "")
        if kind == "str":
            parent = expect("str")
            expect("word", "in")
            expect("word", "parents")
            terms.append(functools.partial(_in_parents, parent))
        elif (kind, value) == ("word", "appProperties"):
            expect("word", "appProperties")
            expect("word", "has")
            expect("op", "{")
            expect("word", "key")
            expect("op", "=")
            key = expect("str")
            expect("word", "and")
            expect("word", "value")
            expect("op", "=")
            wanted = expect("str")
            expect("op", "}")
            terms.append(functools.partial(_has_property, key, wanted))
        elif (kind, value) == ("word", "trashed"):
            expect("word", "trashed")
            expect("op", "=")
            flag = expect("word")
            if flag not in ("true", "false"):
                raise _invalid_query()
            terms.append(functools.partial(_trashed, flag == "true"))
        else:
            raise _invalid_query()
        if index == len(tokens):
            return terms
        expect("word", "and")


def _invalid_query() -> ApiError:
    return ApiError(400, "Invalid Value", "invalid", "q")


# ---------------------------------------------------------------------- requests
def _parse_range(header: str | None, length: int) -> tuple[int | None, int | None, int | None]:
    """(start, end, total) of a Content-Range; None for ``*``. No header: the body
    is the whole file."""
    if header is None:
        return (0, length - 1, length) if length else (None, None, 0)
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if match is None:
        raise ApiError(400, f"Invalid request. Unreadable Content-Range {header!r}.")
    start = int(match.group(1)) if match.group(1) is not None else None
    end = int(match.group(2)) if match.group(2) is not None else None
    total = None if match.group(3) == "*" else int(match.group(3))
    if start is not None and end is not None and end < start:
        raise ApiError(400, f"Invalid request. Empty range in {header!r}.")
    return start, end, total


def _upload_metadata(body: Json, headers: Any) -> Json:
    unknown = set(body) - {"name", "parents", "mimeType", "appProperties", "description"}
    if unknown:
        raise ApiError(400, f"Invalid JSON payload received. Unknown name {sorted(unknown)}")
    parents = body.get("parents", [])
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ApiError(400, "Invalid value for parents.", "invalid", "parents")
    properties = body.get("appProperties", {})
    if not isinstance(properties, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in properties.items()
    ):
        raise ApiError(400, "Invalid value for appProperties.", "invalid", "appProperties")
    for key, value in properties.items():
        if len(key.encode("utf-8")) + len(value.encode("utf-8")) > MAX_PROPERTY_BYTES:
            raise ApiError(
                403,
                "Properties and app properties are limited to 124 bytes in UTF-8 encoding, "
                "counting both the key and the value.",
                "propertyLengthLimitExceeded",
            )
    name = body.get("name", "Untitled")
    mime = (
        body.get("mimeType") or headers.get("X-Upload-Content-Type") or "application/octet-stream"
    )
    description = body.get("description", "")
    if not all(isinstance(v, str) for v in (name, mime, description)):
        raise ApiError(400, "name, mimeType and description must be strings.")
    return {
        "name": name,
        "parents": parents,
        "mimeType": mime,
        "appProperties": properties,
        "description": description,
    }


def _json_object(raw: bytes) -> Json:
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise ApiError(400, f"Invalid JSON payload received. {exc}", "parseError") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid JSON payload received. Expected an object.", "parseError")
    return body


def _true(params: dict[str, str], name: str) -> bool:
    return params.get(name, "").lower() == "true"


def _int_param(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"Invalid value for {name}.", "invalid", name) from None
    if not low <= value <= high:
        raise ApiError(400, f"Invalid value for {name}.", "invalid", name)
    return value


def _failure_message(code: int) -> str:
    if code == 429 or code == 403:
        return "User rate limit exceeded."
    if code >= 500:
        return "Backend Error"
    return "Injected failure."


def _new_id() -> str:
    return "1" + secrets.token_urlsafe(24)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------- server
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

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        store = self.server.store
        status: int = 200
        payload: Json | bytes = {}
        headers: dict[str, str] = {}
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                raise ApiError(413, "Request body too large.")
            raw = self.rfile.read(length)  # always drained: keep-alive stays in sync
            if self.headers.get("Authorization"):
                with store.lock:
                    store.stats["authorized"] += 1
            status, payload, headers = self._route(method, url.path, params, raw)
        except ApiError as exc:
            status, payload = exc.code, exc.payload()
        except Exception:  # a stub bug must still answer, or the client hangs
            log.exception("internal error on %s %s", method, url.path)
            status, payload = 500, ApiError(500, "Internal error in drive stub.").payload()
        if isinstance(payload, bytes):
            data, content_type = payload, headers.pop("Content-Type", "application/octet-stream")
        elif status == 308 or (status == 200 and headers.get("Location")):
            data, content_type = b"", "text/plain; charset=utf-8"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json; charset=UTF-8"
        self.send_response(status, "Resume Incomplete" if status == 308 else None)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(
        self, method: str, path: str, params: dict[str, str], raw: bytes
    ) -> tuple[int, Json | bytes, dict[str, str]]:
        store = self.server.store
        if path == "/drive/v3/files" and method == "GET":
            return 200, store.list(params), {}
        if path.startswith("/drive/v3/files/") and method in ("GET", "PATCH"):
            item_id = unquote(path[len("/drive/v3/files/") :])
            if not item_id or "/" in item_id:
                raise ApiError(404, f"Unknown path: {method} {path}", "notFound")
            if method == "PATCH":
                return 200, store.update(item_id, params, raw), {}
            found = store.get(item_id, params)
            if isinstance(found, bytes):
                with store.lock:
                    mime = store.items[item_id].mime_type
                return 200, found, {"Content-Type": mime}
            return 200, found, {}
        if path == "/upload/drive/v3/files" and method == "POST":
            upload_id = store.start_upload(params, raw, self.headers)
            host = self.headers.get("Host") or base_url(self.server).split("//", 1)[1]
            location = (
                f"http://{host}/upload/drive/v3/files?uploadType=resumable&upload_id={upload_id}"
            )
            return 200, {}, {"Location": location, "X-GUploader-UploadID": upload_id}
        if path == "/upload/drive/v3/files" and method == "PUT":
            status, body, kept = store.put(
                params.get("upload_id", ""), self.headers.get("Content-Range"), raw
            )
            headers = {"Range": f"bytes=0-{kept - 1}"} if status == 308 and kept else {}
            return status, body, headers
        return 200, self._control(method, path, raw), {}

    def _control(self, method: str, path: str, raw: bytes) -> Json:
        store = self.server.store
        if (method, path) == ("GET", "/_healthz"):
            return {"ok": True, "default_folder_id": store.default_folder_id}
        if (method, path) == ("POST", "/_folders"):
            body = _json_object(raw)
            name = body.get("name")
            if not isinstance(name, str) or not name:
                raise ApiError(400, "a folder needs a name")
            folder = store.add_folder(
                name, bool(body.get("my_drive", False)), bool(body.get("read_only", False))
            )
            return {"id": folder.id, "name": folder.name}
        if (method, path) == ("GET", "/_folders"):
            return {"folders": store.folders()}
        if (method, path) == ("GET", "/_files"):
            return {"files": store.files()}
        if (method, path) == ("GET", "/_stats"):
            with store.lock:
                return dict(store.stats)
        if (method, path) == ("POST", "/_fail"):
            return store.fail(_json_object(raw))
        if (method, path) == ("POST", "/_config"):
            return store.configure(_json_object(raw))
        if (method, path) == ("POST", "/_reset"):
            store.reset()
            return {"ok": True}
        raise ApiError(404, f"Unknown path: {method} {path}", "notFound")


def make_server(host: str = "127.0.0.1", port: int = 0, folder: str | None = None) -> StubServer:
    """Build (not start) the stub server, with a folder named ``folder`` if given
    (``store.default_folder_id``); call ``serve_forever`` on it."""
    server = StubServer((host, port), _Handler)
    server.store = Store()
    if folder:
        server.store.default_folder_id = server.store.add_folder(folder).id
    return server


def base_url(server: StubServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


@contextlib.contextmanager
def serving(folder: str | None = "Deliveries") -> Iterator[StubServer]:
    """The stub on a free loopback port, served on a thread until the block ends;
    its address is ``base_url(server)``, its state ``server.store`` (the folder
    made at start: ``server.store.default_folder_id``)."""
    with running(make_server("127.0.0.1", 0, folder)) as server:
        yield server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.drive_stub",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--folder", default=None, help="create a folder of this name at start")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    server = make_server(args.host, args.port, args.folder)

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever, which runs on this very thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    folder = f" (folder {server.store.default_folder_id})" if args.folder else ""
    print(f"drive stub listening on {base_url(server)}{folder}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


__all__ = [
    "FOLDER_MIME",
    "QUOTA_MESSAGE",
    "StubServer",
    "base_url",
    "main",
    "make_server",
    "parse_query",
    "serving",
]


if __name__ == "__main__":
    sys.exit(main())
