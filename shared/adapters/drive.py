"""DriveFolder on the Google Drive API v3, with ``requests``.

The team shares a folder with the export function's service account, which
writes into it as itself (no domain-wide delegation):

- ``check_folder``: ``files.get`` of the folder (``fields=id,name,mimeType,
  trashed,driveId,capabilities(canAddChildren)``): it must exist and be visible
  to us (404 otherwise), be a folder, not be trashed, and let us add files.
- ``find``: ``files.list`` with ``q = '<folder>' in parents and appProperties
  has { key='pipeline_key' and value='<key>' } and trashed = false`` (quotes and
  backslashes in the values escaped as Drive's query language wants),
  ``fields=files(id,name,size)``.
- ``upload``: a resumable upload. ``POST /upload/drive/v3/files?uploadType=
  resumable`` with the file's metadata (``name``, ``parents``, ``mimeType``,
  ``appProperties.pipeline_key``, ``description``) answers a session URI
  (``Location``). ``write`` is given an append-only sink; every full chunk of
  ``chunk_bytes`` (a multiple of 256 KiB, as Drive requires of every chunk but
  the last) is sent as ``PUT <session>`` with ``Content-Range: bytes a-b/*``,
  and the last one with the total (``bytes a-b/total``). Drive answers ``308
  Resume Incomplete`` with ``Range: bytes=0-n`` (what it kept, which may be
  less than was sent: the rest is sent again) until the last chunk, then 200
  or 201 with the file. After a connection failure, a timeout, a 5xx, a 429 or
  a rate-limit 403 in the middle, the session is asked what it kept (an empty
  ``PUT`` with ``Content-Range: bytes */*``, or ``bytes */total`` once the
  total is known) and the upload goes on from there, ``resume_attempts``
  times at most. Memory: one chunk (and its copy while it is sent).
  The file Drive made is checked against what was sent (size, MD5); one that
  differs is put in the trash (so ``find`` never returns it) and the upload
  fails as transient.

Every request carries ``supportsAllDrives=true`` (and ``files.list``
``includeItemsFromAllDrives=true``): without them Drive answers 404 for the
items of shared drives. Every request has a connect and a read timeout.

Errors: timeouts, connection failures, 408, 429, 5xx and a 403 whose reason is
``rateLimitExceeded`` or ``userRateLimitExceeded`` are ``TransientError``; any
other refusal is ``PermanentError`` with the status, Drive's reason and its
message. A folder not found (404) is a ``PermanentError`` that names it and
says to share it. A 403 ``storageQuotaExceeded`` is a ``PermanentError`` that
says what Google documents: a service account has no storage quota and owns
nothing in a person's My Drive, so it can only deliver into a shared drive
(Google Workspace), where files belong to the organisation.

Scope: ``https://www.googleapis.com/auth/drive``. The narrower ``drive.file``
reaches only files the app created or that a user opened with it through the
Google Picker, so a folder shared through Drive's Share dialog answers 404
under it; with ``drive`` the service account still sees only what is shared
with it. ``drive_session`` builds the session: Application Default
Credentials with that scope, or no credentials at all for a local stub on
loopback (``DRIVE_API_URL``).
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any, BinaryIO, cast
from urllib.parse import quote, urljoin, urlsplit

import requests

from shared.domain.errors import ConfigError, PermanentError, PipelineError, TransientError
from shared.services.ports import DriveFile

log = logging.getLogger(__name__)

GOOGLE_APIS_URL = "https://www.googleapis.com"
DRIVE_SCOPE = "https://www.googleapis.com/auth/drive"
FOLDER_MIME = "application/vnd.google-apps.folder"
# The app property that tags each delivered file with the caller's key.
KEY_PROPERTY = "pipeline_key"
# Drive: at most 124 bytes (UTF-8) for a property's key and value together.
MAX_PROPERTY_BYTES = 124
MAX_KEY_BYTES = MAX_PROPERTY_BYTES - len(KEY_PROPERTY.encode("utf-8"))
# Every chunk of a resumable upload but the last is a multiple of this.
CHUNK_UNIT = 256 * 1024
DEFAULT_CHUNK_BYTES = 8 * CHUNK_UNIT
RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
SETTING = "DRIVE_API_URL"
SHARE_HINT = (
    "share it with the export function's service account "
    "(Content manager of a shared drive, or Editor of the folder)"
)
QUOTA_HINT = (
    "a service account has no Drive storage of its own and cannot own files in a "
    "person's My Drive: deliver into a folder of a shared drive (Google Workspace), "
    "with the export function's service account as Content manager"
)
_RANGE = re.compile(r"bytes=0-(\d+)")
_LOOPBACK_NAMES = frozenset({"localhost"})

Json = dict[str, Any]


def drive_session(base_url: str = "") -> requests.Session:
    """The HTTP session for ``GoogleDriveFolder(session, base_url)``.

    Google's endpoint (``base_url`` empty, or https on ``*.googleapis.com``): an
    ``AuthorizedSession`` with Application Default Credentials (the function's
    service account) and the ``drive`` scope. A local stub (http on loopback):
    a plain session, so that no Google credentials are sent to it. Anything
    else is a ``ConfigError``: a bearer token must not reach a stranger.
    """
    parts = urlsplit(base_url or GOOGLE_APIS_URL)
    host = parts.hostname or ""
    if parts.scheme == "http" and _is_loopback(host):
        return requests.Session()
    google = host == "googleapis.com" or host.endswith(".googleapis.com")
    if parts.scheme != "https" or not google:
        raise ConfigError(
            f"{SETTING} must be Google's (https://www.googleapis.com, or unset) or a local "
            "stand-in on loopback (http://127.0.0.1:PORT)"
        )
    from google.auth import default
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = default(scopes=[DRIVE_SCOPE])
    return AuthorizedSession(credentials)


def escape_query_value(value: str) -> str:
    """``value`` inside a single-quoted string of Drive's query language
    (``q``): backslashes and single quotes escaped with a backslash."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def key_query(folder_id: str, key: str) -> str:
    """The ``q`` of ``find``: the folder's untrashed files tagged with ``key``."""
    return (
        f"'{escape_query_value(folder_id)}' in parents"
        f" and appProperties has {{ key='{KEY_PROPERTY}' and value='{escape_query_value(key)}' }}"
        " and trashed = false"
    )


class GoogleDriveFolder:
    """Delivers files into Drive folders shared with the service account."""

    def __init__(
        self,
        session: requests.Session,
        base_url: str = GOOGLE_APIS_URL,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        *,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        resume_attempts: int = 5,
        backoff_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if chunk_bytes <= 0 or chunk_bytes % CHUNK_UNIT:
            raise ValueError(f"chunk_bytes must be a positive multiple of {CHUNK_UNIT}")
        if connect_timeout_s <= 0 or read_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if resume_attempts < 0 or backoff_s < 0:
            raise ValueError("resume_attempts and backoff_s must not be negative")
        self._session = session
        self._base = (base_url or GOOGLE_APIS_URL).rstrip("/")
        self._chunk_bytes = chunk_bytes
        self._timeout = (connect_timeout_s, read_timeout_s)
        self._resume_attempts = resume_attempts
        self._backoff_s = backoff_s
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"GoogleDriveFolder({self._base!r}, chunk_bytes={self._chunk_bytes})"

    # ------------------------------------------------------------------ port
    def check_folder(self, folder_id: str) -> None:
        if not folder_id:
            raise PermanentError("no Google Drive folder was named")
        answer = self._call(
            "GET",
            f"{self._base}/drive/v3/files/{quote(folder_id, safe='')}",
            f"reading the Drive folder {folder_id!r}",
            params={
                "fields": "id,name,mimeType,trashed,driveId,capabilities(canAddChildren)",
                "supportsAllDrives": "true",
            },
        )
        if answer.status_code == 404:
            raise PermanentError(
                f"Google Drive folder {folder_id!r} was not found: it does not exist or is "
                f"not shared with us; {SHARE_HINT}"
            )
        if answer.status_code != 200:
            raise self._error(answer, f"reading the Drive folder {folder_id!r}")
        item = _json(answer, "files.get")
        name = item.get("name", "")
        if item.get("mimeType") != FOLDER_MIME:
            raise PermanentError(
                f"Google Drive item {folder_id!r} ({name!r}) is not a folder but "
                f"{item.get('mimeType')!r}: name a folder"
            )
        if item.get("trashed"):
            raise PermanentError(
                f"Google Drive folder {folder_id!r} ({name!r}) is in the trash: restore it "
                "or name another"
            )
        capabilities = item.get("capabilities")
        if not (isinstance(capabilities, dict) and capabilities.get("canAddChildren")):
            raise PermanentError(
                f"Google Drive folder {folder_id!r} ({name!r}) is shared with us read-only: "
                f"{SHARE_HINT}"
            )
        if not item.get("driveId"):
            # Not refused: with an account that has storage (or Google's rules
            # changing) it may work; an upload then says why if it does not.
            log.warning(
                "Drive folder %s is in a My Drive, not a shared drive: uploads by a service "
                "account there fail for lack of storage quota",
                folder_id,
            )

    def find(self, folder_id: str, key: str) -> DriveFile | None:
        _check_key(key)
        answer = self._call(
            "GET",
            f"{self._base}/drive/v3/files",
            f"searching the Drive folder {folder_id!r}",
            params={
                "q": key_query(folder_id, key),
                "fields": "files(id,name,size)",
                "supportsAllDrives": "true",
                "includeItemsFromAllDrives": "true",
                "pageSize": "10",
            },
        )
        if answer.status_code != 200:
            raise self._error(answer, f"searching the Drive folder {folder_id!r}")
        files = _json(answer, "files.list").get("files")
        if not isinstance(files, list) or not files:
            return None
        if len(files) > 1:
            log.warning("%d files in Drive folder %s carry the key %s", len(files), folder_id, key)
        return _drive_file(files[0])

    def upload(
        self,
        folder_id: str,
        name: str,
        mime_type: str,
        key: str,
        write: Callable[[BinaryIO], None],
        description: str = "",
    ) -> DriveFile:
        _check_key(key)
        metadata: Json = {
            "name": name,
            "parents": [folder_id],
            "mimeType": mime_type,
            "appProperties": {KEY_PROPERTY: key},
        }
        if description:
            metadata["description"] = description
        what = f"starting the upload of {name!r} to the Drive folder {folder_id!r}"
        answer = self._call(
            "POST",
            f"{self._base}/upload/drive/v3/files",
            what,
            params={
                "uploadType": "resumable",
                "supportsAllDrives": "true",
                "fields": "id,name,size,md5Checksum",
            },
            data=json.dumps(metadata, ensure_ascii=False).encode("utf-8"),
            headers={
                "Content-Type": "application/json; charset=UTF-8",
                "X-Upload-Content-Type": mime_type,
            },
        )
        if answer.status_code == 404:
            raise PermanentError(
                f"Google Drive folder {folder_id!r} was not found when uploading {name!r}: "
                f"{SHARE_HINT}"
            )
        if answer.status_code not in (200, 201):
            raise self._error(answer, what)
        sink = _ResumableUpload(self, self._session_uri(answer), name)
        write(cast(BinaryIO, sink))
        made = sink.finish()
        self._verify(made, sink, name)
        log.info("uploaded %s to Drive folder %s as %s", name, folder_id, made.get("id"))
        return _drive_file(made)

    # ------------------------------------------------------------------ HTTP
    def _call(self, method: str, url: str, what: str, **kwargs: Any) -> requests.Response:
        """One request; a timeout or a connection failure is a TransientError."""
        try:
            return self._session.request(
                method, url, timeout=self._timeout, allow_redirects=False, **kwargs
            )
        except requests.Timeout:
            # Not chained: an upload session's URI is a capability; keep it out of logs.
            raise TransientError(
                f"Google Drive: no answer within {self._timeout[1]:g} s ({what})"
            ) from None
        except requests.RequestException as exc:
            raise TransientError(
                f"Google Drive unreachable ({type(exc).__name__}) ({what})"
            ) from None

    def _error(self, answer: requests.Response, what: str) -> PipelineError:
        """The error for a refusal: transient or permanent (see the module doc)."""
        status = answer.status_code
        reason, message = _google_error(answer)
        said = f"{status}{' ' + reason if reason else ''}: {message}"
        if _transient(status, reason):
            return TransientError(f"Google Drive answered {said} ({what})")
        if status == 403 and reason == "storageQuotaExceeded":
            return PermanentError(
                f"Google Drive refused {what} for lack of storage quota ({message}): {QUOTA_HINT}"
            )
        return PermanentError(f"Google Drive refused {what} ({said})")

    def _session_uri(self, answer: requests.Response) -> str:
        location = answer.headers.get("Location", "")
        if not location:
            raise TransientError("Google Drive started an upload without a session URI")
        uri = urljoin(self._base + "/", location)
        ours, theirs = urlsplit(self._base), urlsplit(uri)
        host = theirs.hostname or ""
        same_origin = (theirs.scheme, theirs.netloc) == (ours.scheme, ours.netloc)
        google = theirs.scheme == "https" and host.endswith(".googleapis.com")
        if not (same_origin or google):
            # The session carries our credentials to whatever the URI names.
            raise PermanentError(f"Google Drive named an upload session on {host!r}: refused")
        return uri

    def _verify(self, made: Json, sink: _ResumableUpload, name: str) -> None:
        """The file Drive made holds what was sent, or it goes to the trash."""
        size, md5 = made.get("size"), made.get("md5Checksum")
        problems = []
        if size is not None and str(size) != str(sink.sent):
            problems.append(f"{size} bytes instead of {sink.sent}")
        if md5 is not None and md5 != sink.md5:
            problems.append(f"MD5 {md5} instead of {sink.md5}")
        if not problems:
            return
        file_id = str(made.get("id", ""))
        what = f"trashing the damaged upload {file_id!r}"
        answer = self._call(
            "PATCH",
            f"{self._base}/drive/v3/files/{quote(file_id, safe='')}",
            what,
            params={"supportsAllDrives": "true", "fields": "id,trashed"},
            data=json.dumps({"trashed": True}).encode("utf-8"),
            headers={"Content-Type": "application/json; charset=UTF-8"},
        )
        if answer.status_code != 200:
            raise PermanentError(
                f"Google Drive file {file_id!r} ({name!r}) differs from what was sent "
                f"({'; '.join(problems)}) and could not be put in the trash: "
                f"{self._error(answer, what)}; remove it by hand"
            )
        raise TransientError(
            f"Google Drive kept {name!r} damaged ({'; '.join(problems)}); it was put in the "
            "trash and is uploaded again on the next try"
        )


class _ResumableUpload(io.RawIOBase):
    """The sink ``write`` is given: buffers one chunk and sends each full one.

    A full chunk is sent only once more bytes arrive, so the last one (sent by
    ``finish`` with the total) is never empty unless the file is.
    """

    def __init__(self, drive: GoogleDriveFolder, uri: str, name: str) -> None:
        super().__init__()
        self._drive = drive
        self._uri = uri
        self._name = name
        self._chunk = drive._chunk_bytes
        self._buffer = bytearray()
        self._offset = 0  # bytes Drive acknowledged: where the buffer starts
        self._written = 0
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._done = False

    @property
    def sent(self) -> int:
        return self._written

    @property
    def md5(self) -> str:
        return self._md5.hexdigest()

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written

    def write(self, data: Any) -> int:
        if self._done or self.closed:
            raise ValueError("write to a finished Drive upload")
        view = memoryview(data).cast("B")
        count = len(view)
        self._md5.update(view)
        self._written += count
        while view:
            if len(self._buffer) >= self._chunk:
                self._transfer(final=False)
            room = self._chunk - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
        return count

    def finish(self) -> Json:
        """Send the rest with the total; the file Drive made."""
        if self._done:
            raise ValueError("the Drive upload is already finished")
        made = self._transfer(final=True)
        self._done = True
        if made is None:  # pragma: no cover - _transfer(final=True) returns or raises
            raise TransientError(f"Google Drive did not finish the upload of {self._name!r}")
        return made

    # ------------------------------------------------------------------ protocol
    def _transfer(self, final: bool) -> Json | None:
        """Send the buffer (a full chunk, or everything with the total) until Drive
        has it; resume after failures. The file when Drive finished the upload."""
        failures = 0
        ask_first = False
        last = ""
        while True:
            if not final and len(self._buffer) < self._chunk:
                return None  # Drive kept part of the chunk: wait for more bytes
            query = ask_first
            if query:
                headers = {"Content-Range": f"bytes */{self._written if final else '*'}"}
                body = b""
            else:
                headers, body = self._chunk_request(final)
            failed: str
            try:
                answer = self._drive._call(
                    "PUT", self._uri, self._what(), data=body, headers=headers
                )
            except TransientError as exc:
                failed = str(exc)
            else:
                status = answer.status_code
                if status in (200, 201):
                    if not final:
                        raise PermanentError(
                            f"Google Drive ended the upload of {self._name!r} before its last chunk"
                        )
                    return _json(answer, "the upload's last chunk")
                if status == 308:
                    progressed = self._acknowledge(answer)
                    ask_first = False
                    if query or progressed:
                        continue
                    failed = "Drive kept none of the chunk"
                elif status in (404, 410):
                    raise TransientError(
                        f"Google Drive's upload session for {self._name!r} expired or was lost "
                        f"({status}): the upload starts again on the next try"
                    )
                else:
                    error = self._drive._error(answer, self._what())
                    if isinstance(error, PermanentError):
                        raise error
                    failed = str(error)
            failures += 1
            last = failed
            if failures > self._drive._resume_attempts:
                raise TransientError(
                    f"Google Drive upload of {self._name!r} stopped at byte {self._offset} "
                    f"after {failures} failed attempts; last: {last}"
                )
            log.info("Drive upload of %s interrupted (%s); resuming", self._name, failed)
            self._drive._sleep(min(self._drive._backoff_s * 2 ** (failures - 1), 30.0))
            ask_first = True

    def _chunk_request(self, final: bool) -> tuple[dict[str, str], bytes]:
        if final:
            body = bytes(self._buffer)
            total = str(self._written)
        else:
            body = bytes(self._buffer[: self._chunk])
            total = "*"
        if not body:
            return {"Content-Range": f"bytes */{total}"}, b""
        end = self._offset + len(body) - 1
        return {"Content-Range": f"bytes {self._offset}-{end}/{total}"}, body

    def _acknowledge(self, answer: requests.Response) -> bool:
        """Drop what Drive says it kept (its ``Range``); whether that moved on."""
        header = answer.headers.get("Range", "")
        if header:
            match = _RANGE.fullmatch(header.strip())
            if match is None:
                raise TransientError(f"Google Drive answered an unreadable Range {header!r}")
            kept = int(match.group(1)) + 1
        else:
            kept = 0  # nothing received yet
        if kept < self._offset:
            # Bytes it had acknowledged are gone, and no longer here either.
            raise TransientError(
                f"Google Drive lost part of the upload of {self._name!r} (now {kept} bytes, "
                f"had {self._offset}): the upload starts again on the next try"
            )
        if kept > self._offset + len(self._buffer):
            raise TransientError(
                f"Google Drive claims {kept} bytes of {self._name!r}; only "
                f"{self._offset + len(self._buffer)} were sent"
            )
        moved = kept - self._offset
        del self._buffer[:moved]
        self._offset = kept
        return moved > 0

    def _what(self) -> str:
        return f"uploading {self._name!r}"


def _transient(status: int, reason: str) -> bool:
    return status in (408, 429) or status >= 500 or (status == 403 and reason in RATE_LIMIT_REASONS)


def _google_error(answer: requests.Response) -> tuple[str, str]:
    """Drive's reason (``error.errors[0].reason``) and message, as far as given."""
    try:
        payload: Any = answer.json()
    except ValueError:
        payload = None
    reason = message = ""
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        message = str(error.get("message") or error.get("status") or "")
        errors = error.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            reason = str(errors[0].get("reason") or "")
            message = message or str(errors[0].get("message") or "")
    return reason, (message or answer.reason or "no message")[:500]


def _json(answer: requests.Response, what: str) -> Json:
    try:
        body: Any = answer.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise TransientError(f"Google Drive answered {what} with no JSON object")
    return body


def _drive_file(item: Json) -> DriveFile:
    size = item.get("size")
    return DriveFile(
        file_id=str(item.get("id", "")),
        name=str(item.get("name", "")),
        size=int(size) if size is not None else None,
    )


def _check_key(key: str) -> None:
    if not key:
        raise PermanentError("a Drive delivery needs a key (app property pipeline_key)")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise PermanentError(
            f"Drive key {key[:40]!r}... is longer than {MAX_KEY_BYTES} bytes: Drive keeps at most "
            f"{MAX_PROPERTY_BYTES} bytes per app property, its name ({KEY_PROPERTY}) included"
        )


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = [
    "CHUNK_UNIT",
    "DEFAULT_CHUNK_BYTES",
    "DRIVE_SCOPE",
    "GOOGLE_APIS_URL",
    "KEY_PROPERTY",
    "MAX_KEY_BYTES",
    "GoogleDriveFolder",
    "drive_session",
    "escape_query_value",
    "key_query",
]
