"""GoogleDriveFolder against the Drive stub on a free loopback port: the folder
check, the key search, resumable uploads byte for byte (308, resuming after a
failure mid-upload), and which failures are transient."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import pytest
import requests

from devstack.drive_stub import StubServer, base_url, serving
from shared.adapters.drive import (
    CHUNK_UNIT,
    DRIVE_SCOPE,
    MAX_KEY_BYTES,
    GoogleDriveFolder,
    drive_session,
    escape_query_value,
    key_query,
)
from shared.domain.errors import ConfigError, PermanentError, TransientError
from shared.services.ports import DriveFile, DriveFolder


class Recording(requests.Session):
    """A session that records every request (and can fail some before sending)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []
        # Called with (method, url, kwargs) before each request; may raise.
        self.before: Callable[[str, str, dict[str, Any]], None] | None = None
        # Called with each answer; may change it.
        self.after: Callable[[requests.Response], None] | None = None

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        body = kwargs.get("data") or b""
        self.calls.append(
            {
                "method": method,
                "url": url,
                "timeout": kwargs.get("timeout"),
                "allow_redirects": kwargs.get("allow_redirects"),
                "headers": dict(kwargs.get("headers") or {}),
                "params": dict(kwargs.get("params") or {}),
                "size": len(body),
            }
        )
        if self.before is not None:
            self.before(method, url, kwargs)
        answer = super().request(method, url, *args, **kwargs)
        if self.after is not None:
            self.after(answer)
        return answer

    def puts(self) -> list[dict[str, Any]]:
        return [call for call in self.calls if call["method"] == "PUT"]


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with serving() as server:
        yield server


@pytest.fixture
def session() -> Recording:
    return Recording()


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make_drive(
    stub: StubServer, session: requests.Session, sleeps: list[float], **options: Any
) -> GoogleDriveFolder:
    options = {"chunk_bytes": CHUNK_UNIT, "backoff_s": 0.5, **options}
    return GoogleDriveFolder(session, base_url(stub), sleep=sleeps.append, **options)


@pytest.fixture
def drive(stub: StubServer, session: Recording, sleeps: list[float]) -> GoogleDriveFolder:
    return make_drive(stub, session, sleeps)


def folder(stub: StubServer) -> str:
    return stub.store.default_folder_id


def control(stub: StubServer, path: str, body: dict[str, Any] | None = None) -> Any:
    if body is None:
        answer = requests.get(f"{base_url(stub)}/{path}", timeout=5)
    else:
        answer = requests.post(f"{base_url(stub)}/{path}", json=body, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()


def stored(stub: StubServer) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = control(stub, "_files")["files"]
    return files


def stats(stub: StubServer) -> dict[str, int]:
    found: dict[str, int] = control(stub, "_stats")
    return found


def media(stub: StubServer, file_id: str) -> bytes:
    answer = requests.get(
        f"{base_url(stub)}/drive/v3/files/{file_id}",
        params={"alt": "media", "supportsAllDrives": "true"},
        timeout=5,
    )
    assert answer.status_code == 200, answer.text
    return answer.content


def writer(data: bytes, piece: int = 100_000) -> Callable[[BinaryIO], None]:
    def write(sink: BinaryIO) -> None:
        for start in range(0, len(data), piece):
            assert sink.write(data[start : start + piece]) == len(data[start : start + piece])

    return write


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def upload(drive: GoogleDriveFolder, stub: StubServer, data: bytes, key: str = "k1") -> DriveFile:
    return drive.upload(folder(stub), "scene-1.png", "image/png", key, writer(data), "kept image")


# ------------------------------------------------------------------ the port
def test_it_is_a_drive_folder(drive: GoogleDriveFolder) -> None:
    port: DriveFolder = drive
    assert port is drive


# ------------------------------------------------------------------ check_folder
def test_a_shared_folder_passes_the_check(
    drive: GoogleDriveFolder, stub: StubServer, session: Recording
) -> None:
    drive.check_folder(folder(stub))
    (call,) = session.calls
    # The stub hides shared-drive items unless asked as Drive does: this passes
    # only with supportsAllDrives.
    assert call["params"]["supportsAllDrives"] == "true"
    assert "capabilities(canAddChildren)" in call["params"]["fields"]
    assert stats(stub)["files.get"] == 1


def test_a_missing_folder_is_permanent_and_says_to_share_it(drive: GoogleDriveFolder) -> None:
    with pytest.raises(PermanentError, match=r"'nope'.*not found.*share it.*service account"):
        drive.check_folder("nope")


def test_no_folder_id_is_permanent(drive: GoogleDriveFolder, session: Recording) -> None:
    with pytest.raises(PermanentError, match="no Google Drive folder"):
        drive.check_folder("")
    assert session.calls == []


def test_a_file_is_not_a_folder(drive: GoogleDriveFolder, stub: StubServer) -> None:
    made = upload(drive, stub, b"png bytes")
    with pytest.raises(PermanentError, match=rf"{made.file_id}.*not a folder.*image/png"):
        drive.check_folder(made.file_id)


def test_a_read_only_folder_is_refused(drive: GoogleDriveFolder, stub: StubServer) -> None:
    made = control(stub, "_folders", {"name": "Viewer only", "read_only": True})
    with pytest.raises(PermanentError, match=r"read-only.*Content manager"):
        drive.check_folder(made["id"])


def test_a_trashed_folder_is_refused(drive: GoogleDriveFolder, stub: StubServer) -> None:
    made = control(stub, "_folders", {"name": "Old"})
    answer = requests.patch(
        f"{base_url(stub)}/drive/v3/files/{made['id']}",
        params={"supportsAllDrives": "true"},
        json={"trashed": True},
        timeout=5,
    )
    assert answer.status_code == 200, answer.text
    with pytest.raises(PermanentError, match="in the trash"):
        drive.check_folder(made["id"])


def test_a_my_drive_folder_passes_with_a_warning(
    drive: GoogleDriveFolder, stub: StubServer, caplog: pytest.LogCaptureFixture
) -> None:
    made = control(stub, "_folders", {"name": "Mine", "my_drive": True})
    drive.check_folder(made["id"])
    assert "not a shared drive" in caplog.text


# ------------------------------------------------------------------ find
def test_find_returns_the_file_an_upload_tagged_with_the_key(
    drive: GoogleDriveFolder, stub: StubServer, session: Recording
) -> None:
    assert drive.find(folder(stub), "k1") is None
    made = upload(drive, stub, b"x" * 1000, key="k1")
    assert made.size == 1000 and made.name == "scene-1.png"
    assert drive.find(folder(stub), "k1") == made
    assert drive.find(folder(stub), "k2") is None
    listing = [call for call in session.calls if call["url"].endswith("/drive/v3/files")]
    params = listing[-1]["params"]
    assert params["supportsAllDrives"] == params["includeItemsFromAllDrives"] == "true"
    assert params["fields"] == "files(id,name,size)"
    assert params["q"] == key_query(folder(stub), "k2")


def test_find_escapes_quotes_and_backslashes(drive: GoogleDriveFolder, stub: StubServer) -> None:
    key = "batch's \\ scene 'a'"
    made = upload(drive, stub, b"data", key=key)
    assert drive.find(folder(stub), key) == made
    assert escape_query_value("it's a \\ path") == "it\\'s a \\\\ path"


def test_find_looks_only_in_the_folder_and_skips_the_trash(
    drive: GoogleDriveFolder, stub: StubServer
) -> None:
    other = control(stub, "_folders", {"name": "Other"})["id"]
    drive.upload(other, "elsewhere.png", "image/png", "k1", writer(b"a"))
    assert drive.find(folder(stub), "k1") is None
    made = upload(drive, stub, b"b", key="k1")
    requests.patch(
        f"{base_url(stub)}/drive/v3/files/{made.file_id}",
        params={"supportsAllDrives": "true"},
        json={"trashed": True},
        timeout=5,
    ).raise_for_status()
    assert drive.find(folder(stub), "k1") is None


def test_a_key_drive_cannot_keep_is_refused_before_any_request(
    drive: GoogleDriveFolder, stub: StubServer, session: Recording
) -> None:
    longest = "é" * (MAX_KEY_BYTES // 2)
    assert drive.find(folder(stub), longest) is None  # fits: 124 bytes with the name
    too_long = longest + "x" * (MAX_KEY_BYTES % 2 + 1)
    calls = len(session.calls)
    with pytest.raises(PermanentError, match="124 bytes"):
        drive.find(folder(stub), too_long)
    with pytest.raises(PermanentError, match="124 bytes"):
        upload(drive, stub, b"x", key=too_long)
    with pytest.raises(PermanentError, match="needs a key"):
        upload(drive, stub, b"x", key="")
    assert len(session.calls) == calls


# ------------------------------------------------------------------ upload
def test_a_small_upload_is_stored_byte_for_byte_with_its_metadata(
    drive: GoogleDriveFolder, stub: StubServer, session: Recording
) -> None:
    data = os.urandom(5000)
    made = upload(drive, stub, data)
    (file,) = stored(stub)
    assert file["id"] == made.file_id
    assert (file["name"], file["mimeType"]) == ("scene-1.png", "image/png")
    assert file["parents"] == [folder(stub)]
    assert file["appProperties"] == {"pipeline_key": "k1"}
    assert file["description"] == "kept image"
    assert (file["size"], file["md5Checksum"]) == (str(len(data)), md5(data))
    assert media(stub, made.file_id) == data
    start = session.calls[0]
    assert start["params"]["uploadType"] == "resumable"
    assert start["params"]["supportsAllDrives"] == "true"
    assert start["headers"]["X-Upload-Content-Type"] == "image/png"
    (put,) = session.puts()
    assert put["headers"]["Content-Range"] == f"bytes 0-{len(data) - 1}/{len(data)}"


def test_a_multi_chunk_upload_streams_one_chunk_at_a_time(
    drive: GoogleDriveFolder, stub: StubServer, session: Recording
) -> None:
    data = os.urandom(5 * CHUNK_UNIT + 7)
    seen: list[int] = []

    def write(sink: BinaryIO) -> None:
        for start in range(0, len(data), 70_001):
            sink.write(data[start : start + 70_001])
            seen.append(stats(stub).get("upload.chunk", 0))
        assert sink.tell() == len(data)

    made = drive.upload(folder(stub), "big.png", "image/png", "big", write)
    assert media(stub, made.file_id) == data
    assert stored(stub)[0]["md5Checksum"] == md5(data)
    assert made.size == len(data)
    # Chunks leave while the writer still writes: memory holds one chunk.
    assert seen[len(seen) // 2] >= 2
    ranges = [put["headers"]["Content-Range"] for put in session.puts()]
    assert ranges == [
        *(f"bytes {i * CHUNK_UNIT}-{(i + 1) * CHUNK_UNIT - 1}/*" for i in range(5)),
        f"bytes {5 * CHUNK_UNIT}-{len(data) - 1}/{len(data)}",
    ]
    assert max(put["size"] for put in session.puts()) == CHUNK_UNIT


def test_an_exact_multiple_ends_with_its_last_full_chunk(
    drive: GoogleDriveFolder, stub: StubServer, session: Recording
) -> None:
    data = os.urandom(2 * CHUNK_UNIT)
    made = upload(drive, stub, data)
    assert media(stub, made.file_id) == data
    ranges = [put["headers"]["Content-Range"] for put in session.puts()]
    assert ranges == [
        f"bytes 0-{CHUNK_UNIT - 1}/*",
        f"bytes {CHUNK_UNIT}-{2 * CHUNK_UNIT - 1}/{2 * CHUNK_UNIT}",
    ]


def test_an_empty_file_is_uploaded(
    drive: GoogleDriveFolder, stub: StubServer, session: Recording
) -> None:
    made = drive.upload(folder(stub), "empty.json", "application/json", "e", lambda sink: None)
    assert made.size == 0
    assert stored(stub)[0]["md5Checksum"] == md5(b"")
    assert [put["headers"]["Content-Range"] for put in session.puts()] == ["bytes */0"]


def test_what_drive_did_not_keep_is_sent_again(
    stub: StubServer, session: Recording, sleeps: list[float]
) -> None:
    """308 with a Range short of what was sent: the rest goes again from there."""
    drive = make_drive(stub, session, sleeps, chunk_bytes=4 * CHUNK_UNIT)
    control(stub, "_config", {"accept_at_most": CHUNK_UNIT})
    data = os.urandom(9 * CHUNK_UNIT + 11)
    made = upload(drive, stub, data)
    assert media(stub, made.file_id) == data
    ranges = [put["headers"]["Content-Range"] for put in session.puts()]
    # Each PUT starts where Drive's Range ended.
    starts = [int(r.split()[1].split("-")[0]) for r in ranges]
    assert starts == [i * CHUNK_UNIT for i in range(10)]
    assert ranges[0] == f"bytes 0-{4 * CHUNK_UNIT - 1}/*"
    assert ranges[-1] == f"bytes {9 * CHUNK_UNIT}-{len(data) - 1}/{len(data)}"
    assert sleeps == []


def test_an_upload_resumes_after_a_503_mid_chunk(
    stub: StubServer, session: Recording, sleeps: list[float]
) -> None:
    drive = make_drive(stub, session, sleeps, chunk_bytes=2 * CHUNK_UNIT)
    data = os.urandom(5 * CHUNK_UNIT + 3)
    # The second chunk (bytes 512 KiB-1 MiB) is cut after its first 256 KiB.
    control(stub, "_fail", {"status": 503, "times": 1, "after_bytes": 3 * CHUNK_UNIT + 10})
    made = upload(drive, stub, data)
    assert media(stub, made.file_id) == data
    counts = stats(stub)
    assert (counts["failed"], counts["upload.query"]) == (1, 1)
    puts = session.puts()
    query = next(put for put in puts if put["size"] == 0)
    assert query["headers"]["Content-Range"] == "bytes */*"
    after = puts[puts.index(query) + 1]
    assert after["headers"]["Content-Range"].startswith(f"bytes {3 * CHUNK_UNIT}-")
    assert sleeps == [0.5]


def test_the_last_chunk_resumes_with_the_total(
    drive: GoogleDriveFolder, stub: StubServer, session: Recording, sleeps: list[float]
) -> None:
    data = os.urandom(CHUNK_UNIT + 5)
    control(stub, "_fail", {"status": 500, "times": 2, "after_bytes": CHUNK_UNIT + 1})
    made = upload(drive, stub, data)
    assert media(stub, made.file_id) == data
    queries = [put["headers"]["Content-Range"] for put in session.puts() if put["size"] == 0]
    assert queries == [f"bytes */{len(data)}"] * 2
    assert sleeps == [0.5, 1.0]


def test_an_upload_resumes_after_a_lost_connection(
    drive: GoogleDriveFolder, stub: StubServer, session: Recording, sleeps: list[float]
) -> None:
    data = os.urandom(3 * CHUNK_UNIT + 1)
    state = {"puts": 0}

    def drop_the_second_chunk(method: str, url: str, kwargs: dict[str, Any]) -> None:
        if method == "PUT" and kwargs.get("data"):
            state["puts"] += 1
            if state["puts"] == 2:
                raise requests.ConnectionError("connection reset by peer")

    session.before = drop_the_second_chunk
    made = upload(drive, stub, data)
    assert media(stub, made.file_id) == data
    assert stats(stub)["upload.query"] == 1
    assert len(sleeps) == 1


def test_an_upload_gives_up_after_its_resume_attempts(
    stub: StubServer, session: Recording, sleeps: list[float]
) -> None:
    drive = make_drive(stub, session, sleeps, resume_attempts=2)
    control(stub, "_fail", {"status": 503, "times": 50})
    with pytest.raises(TransientError, match=r"'scene-1.png' stopped at byte 0 after 3 failed"):
        upload(drive, stub, os.urandom(2 * CHUNK_UNIT + 1))
    assert stats(stub)["failed"] == 3
    assert sleeps == [0.5, 1.0]
    assert stored(stub) == []


def test_an_expired_session_is_transient(drive: GoogleDriveFolder, stub: StubServer) -> None:
    data = os.urandom(3 * CHUNK_UNIT)

    def write(sink: BinaryIO) -> None:
        sink.write(data[: 2 * CHUNK_UNIT])
        control(stub, "_reset", {})  # the stub forgets the session, as an expiry does
        sink.write(data[2 * CHUNK_UNIT :])

    with pytest.raises(TransientError, match="expired or was lost"):
        drive.upload(folder(stub), "late.png", "image/png", "late", write)


def test_a_writer_s_error_propagates_and_nothing_is_stored(
    drive: GoogleDriveFolder, stub: StubServer
) -> None:
    def write(sink: BinaryIO) -> None:
        sink.write(os.urandom(CHUNK_UNIT + 1))
        raise ValueError("the image could not be read")

    with pytest.raises(ValueError, match="could not be read"):
        drive.upload(folder(stub), "x.png", "image/png", "x", write)
    assert stored(stub) == []


def test_a_damaged_upload_goes_to_the_trash_and_is_transient(
    drive: GoogleDriveFolder, stub: StubServer
) -> None:
    control(stub, "_config", {"corrupt": True})
    with pytest.raises(TransientError, match=r"damaged \(MD5 .* instead of"):
        upload(drive, stub, os.urandom(1000))
    (file,) = stored(stub)
    assert file["trashed"] is True
    assert drive.find(folder(stub), "k1") is None


def test_an_upload_session_elsewhere_is_refused(
    drive: GoogleDriveFolder, stub: StubServer, session: Recording
) -> None:
    def elsewhere(answer: requests.Response) -> None:
        if "Location" in answer.headers:
            answer.headers["Location"] = "https://uploads.example.com/session?upload_id=1"

    session.after = elsewhere
    with pytest.raises(PermanentError, match=r"uploads\.example\.com"):
        upload(drive, stub, b"data")
    assert session.puts() == []


# ------------------------------------------------------------------ refusals
def test_a_my_drive_folder_fails_naming_shared_drives(
    drive: GoogleDriveFolder, stub: StubServer
) -> None:
    mine = control(stub, "_folders", {"name": "Mine", "my_drive": True})["id"]
    with pytest.raises(PermanentError) as caught:
        drive.upload(mine, "a.png", "image/png", "k", writer(b"data"))
    text = str(caught.value)
    assert "storage quota" in text and "shared drive" in text and "Content manager" in text
    assert "Service Accounts do not have storage quota" in text  # Drive's own words
    assert stored(stub) == []


def test_an_upload_to_a_missing_folder_says_to_share_it(drive: GoogleDriveFolder) -> None:
    with pytest.raises(PermanentError, match=r"'gone' was not found.*share it"):
        drive.upload("gone", "a.png", "image/png", "k", writer(b"data"))


def test_an_upload_to_a_read_only_folder_is_permanent(
    drive: GoogleDriveFolder, stub: StubServer
) -> None:
    viewer = control(stub, "_folders", {"name": "Viewer", "read_only": True})["id"]
    with pytest.raises(PermanentError, match=r"403 insufficientFilePermissions"):
        drive.upload(viewer, "a.png", "image/png", "k", writer(b"data"))


@pytest.mark.parametrize(
    ("on", "status", "reason", "error"),
    [
        ("list", 429, "", TransientError),
        ("list", 503, "", TransientError),
        ("list", 500, "backendError", TransientError),
        ("list", 403, "rateLimitExceeded", TransientError),
        ("list", 403, "userRateLimitExceeded", TransientError),
        ("list", 408, "", TransientError),
        ("list", 403, "dailyLimitExceeded", PermanentError),
        ("list", 400, "invalid", PermanentError),
        ("get", 502, "", TransientError),
        ("get", 401, "authError", PermanentError),
        ("start", 403, "userRateLimitExceeded", TransientError),
        ("start", 403, "forbidden", PermanentError),
        ("put", 400, "badRequest", PermanentError),
    ],
)
def test_failures_are_classified(
    drive: GoogleDriveFolder,
    stub: StubServer,
    on: str,
    status: int,
    reason: str,
    error: type[Exception],
) -> None:
    control(stub, "_fail", {"status": status, "times": 1, "on": on, "reason": reason})
    calls: dict[str, Callable[[], object]] = {
        "list": lambda: drive.find(folder(stub), "k"),
        "get": lambda: drive.check_folder(folder(stub)),
        "start": lambda: upload(drive, stub, b"data"),
        "put": lambda: upload(drive, stub, b"data"),
    }
    with pytest.raises(error) as caught:
        calls[on]()
    assert type(caught.value) is error
    assert str(status) in str(caught.value)
    if reason:
        assert reason in str(caught.value)


@pytest.mark.parametrize(
    "failure",
    [
        requests.ConnectTimeout("slow"),
        requests.ReadTimeout("slow"),
        requests.ConnectionError("down"),
    ],
)
def test_timeouts_and_connection_failures_are_transient(
    drive: GoogleDriveFolder, stub: StubServer, session: Recording, failure: Exception
) -> None:
    def fail(method: str, url: str, kwargs: dict[str, Any]) -> None:
        raise failure

    session.before = fail
    for call in (
        lambda: drive.check_folder(folder(stub)),
        lambda: drive.find(folder(stub), "k"),
        lambda: upload(drive, stub, b"data"),
    ):
        with pytest.raises(TransientError, match="Google Drive"):
            call()


def test_every_request_has_a_connect_and_a_read_timeout_and_no_redirects(
    stub: StubServer, session: Recording, sleeps: list[float]
) -> None:
    drive = make_drive(stub, session, sleeps, connect_timeout_s=3, read_timeout_s=40)
    control(stub, "_fail", {"status": 503, "times": 1, "after_bytes": CHUNK_UNIT + 1})
    drive.check_folder(folder(stub))
    drive.find(folder(stub), "k")
    upload(drive, stub, os.urandom(2 * CHUNK_UNIT + 5))
    assert {call["method"] for call in session.calls} == {"GET", "POST", "PUT"}
    assert all(call["timeout"] == (3, 40) for call in session.calls)
    assert all(call["allow_redirects"] is False for call in session.calls)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 262144"):
        GoogleDriveFolder(requests.Session(), chunk_bytes=CHUNK_UNIT + 1)
    with pytest.raises(ValueError, match="timeouts"):
        GoogleDriveFolder(requests.Session(), read_timeout_s=0)


# ------------------------------------------------------------------ the session
def test_a_loopback_stub_gets_a_session_without_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import google.auth

    def no_credentials(**kwargs: Any) -> Any:
        raise AssertionError("no Google credentials for a local stub")

    monkeypatch.setattr(google.auth, "default", no_credentials)
    for url in ("http://127.0.0.1:8123", "http://localhost:9", "http://[::1]:80"):
        session = drive_session(url)
        assert type(session) is requests.Session


@pytest.mark.parametrize("url", ["", "https://www.googleapis.com", "https://www.googleapis.com/"])
def test_google_gets_default_credentials_with_the_drive_scope(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    import google.auth
    from google.auth.credentials import AnonymousCredentials
    from google.auth.transport.requests import AuthorizedSession

    asked: list[Any] = []

    def default(scopes: Any = None, **kwargs: Any) -> Any:
        asked.append(scopes)
        return AnonymousCredentials(), "project"  # type: ignore[no-untyped-call]

    monkeypatch.setattr(google.auth, "default", default)
    session = drive_session(url)
    assert isinstance(session, AuthorizedSession)
    assert asked == [[DRIVE_SCOPE]]
    assert DRIVE_SCOPE == "https://www.googleapis.com/auth/drive"


@pytest.mark.parametrize(
    "url", ["http://drive.example.com", "https://drive.example.com", "http://10.0.0.8:80"]
)
def test_other_endpoints_would_get_our_token_and_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="DRIVE_API_URL"):
        drive_session(url)


def test_an_authorized_session_carries_the_token_through_every_request(
    stub: StubServer, sleeps: list[float]
) -> None:
    """Production's session (google-auth's AuthorizedSession) with the adapter's
    tuple timeouts, a resumed multi-chunk upload included."""
    from google.auth.transport.requests import AuthorizedSession
    from google.oauth2.credentials import Credentials

    session = AuthorizedSession(Credentials(token="ya29.local"))  # type: ignore[no-untyped-call]
    drive = make_drive(stub, session, sleeps)
    control(stub, "_fail", {"status": 503, "times": 1, "after_bytes": CHUNK_UNIT + 1})
    drive.check_folder(folder(stub))
    data = os.urandom(3 * CHUNK_UNIT + 9)
    made = upload(drive, stub, data)
    assert drive.find(folder(stub), "k1") == made
    assert media(stub, made.file_id) == data
    counts = stats(stub)
    requests_made = sum(
        counts.get(kind, 0)
        for kind in ("files.get", "files.list", "upload.start", "upload.chunk", "upload.query")
    )
    assert counts["authorized"] == requests_made
