"""The Drive stub answers as the Drive API v3 does for the calls the delivery
adapter makes (files.get/list/update, resumable uploads), and its controls work."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import requests

from devstack.drive_stub import (
    FOLDER_MIME,
    QUOTA_MESSAGE,
    ApiError,
    Item,
    StubServer,
    base_url,
    parse_query,
    serving,
)

REPO = Path(__file__).resolve().parents[2]
UNIT = 256 * 1024
ALL = {"supportsAllDrives": "true"}


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with serving() as server:
        yield server


def url(stub: StubServer, path: str) -> str:
    return f"{base_url(stub)}{path}"


def folder(stub: StubServer) -> str:
    return stub.store.default_folder_id


def control(stub: StubServer, path: str, body: dict[str, Any] | None = None) -> Any:
    if body is None:
        answer = requests.get(url(stub, path), timeout=5)
    else:
        answer = requests.post(url(stub, path), json=body, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()


def start(stub: StubServer, metadata: Any = None, **params: str) -> requests.Response:
    body = {"name": "a.png", "parents": [folder(stub)], "mimeType": "image/png"}
    return requests.post(
        url(stub, "/upload/drive/v3/files"),
        params={"uploadType": "resumable", **ALL, **params},
        json=body if metadata is None else metadata,
        timeout=5,
    )


def session_uri(stub: StubServer, **params: str) -> str:
    answer = start(stub, **params)
    assert answer.status_code == 200, answer.text
    location = answer.headers["Location"]
    assert location.startswith(f"{base_url(stub)}/upload/drive/v3/files?uploadType=resumable")
    assert "upload_id=" in location
    return location


def put(uri: str, content_range: str | None, body: bytes = b"") -> requests.Response:
    headers = {} if content_range is None else {"Content-Range": content_range}
    return requests.put(uri, data=body, headers=headers, timeout=5, allow_redirects=False)


def upload(stub: StubServer, data: bytes, key: str = "k", parent: str | None = None) -> str:
    metadata = {
        "name": "f.bin",
        "parents": [parent or folder(stub)],
        "mimeType": "application/octet-stream",
        "appProperties": {"pipeline_key": key},
    }
    answer = start(stub, metadata)
    assert answer.status_code == 200, answer.text
    done = put(answer.headers["Location"], f"bytes 0-{len(data) - 1}/{len(data)}", data)
    assert done.status_code == 200, done.text
    file_id: str = done.json()["id"]
    return file_id


def listing(stub: StubServer, q: str, **params: str) -> requests.Response:
    return requests.get(
        url(stub, "/drive/v3/files"),
        params={"q": q, "includeItemsFromAllDrives": "true", **ALL, **params},
        timeout=5,
    )


def error(answer: requests.Response) -> tuple[int, str]:
    body = answer.json()["error"]
    assert body["code"] == answer.status_code
    return answer.status_code, body["errors"][0]["reason"]


# ------------------------------------------------------------------ folders and files.get
def test_the_default_folder_is_a_shared_drive_folder(stub: StubServer) -> None:
    assert control(stub, "/_healthz") == {"ok": True, "default_folder_id": folder(stub)}
    answer = requests.get(
        url(stub, f"/drive/v3/files/{folder(stub)}"),
        params={"fields": "id,name,mimeType,trashed,driveId,capabilities(canAddChildren)", **ALL},
        timeout=5,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "id": folder(stub),
        "name": "Deliveries",
        "mimeType": FOLDER_MIME,
        "trashed": False,
        "driveId": "0ALocalSharedDrive",
        "capabilities": {"canAddChildren": True},
    }


def test_files_get_cuts_to_the_default_fields_and_refuses_unknown_ones(stub: StubServer) -> None:
    plain = requests.get(url(stub, f"/drive/v3/files/{folder(stub)}"), params=ALL, timeout=5)
    assert plain.json() == {
        "kind": "drive#file",
        "id": folder(stub),
        "name": "Deliveries",
        "mimeType": FOLDER_MIME,
    }
    bad = requests.get(
        url(stub, f"/drive/v3/files/{folder(stub)}"), params={"fields": "id,nme", **ALL}, timeout=5
    )
    assert error(bad) == (400, "invalidParameter")


def test_unknown_ids_and_shared_drive_items_without_support_are_not_found(
    stub: StubServer,
) -> None:
    missing = requests.get(url(stub, "/drive/v3/files/nope"), params=ALL, timeout=5)
    assert error(missing) == (404, "notFound")
    assert missing.json()["error"]["message"] == "File not found: nope."
    hidden = requests.get(url(stub, f"/drive/v3/files/{folder(stub)}"), timeout=5)
    assert error(hidden) == (404, "notFound")
    mine = control(stub, "/_folders", {"name": "Mine", "my_drive": True})["id"]
    seen = requests.get(url(stub, f"/drive/v3/files/{mine}"), params={"fields": "id"}, timeout=5)
    assert seen.json() == {"id": mine}  # My Drive items need no flag


def test_folders_are_made_and_listed_through_the_control_endpoint(stub: StubServer) -> None:
    made = control(stub, "/_folders", {"name": "Viewer", "read_only": True})
    assert set(made) == {"id", "name"}
    folders = control(stub, "/_folders")["folders"]
    assert [f["name"] for f in folders] == ["Deliveries", "Viewer"]
    assert folders[1] == {"id": made["id"], "name": "Viewer", "my_drive": False, "read_only": True}
    answer = requests.get(
        url(stub, f"/drive/v3/files/{made['id']}"),
        params={"fields": "capabilities(canAddChildren)", **ALL},
        timeout=5,
    )
    assert answer.json() == {"capabilities": {"canAddChildren": False}}
    bad = requests.post(url(stub, "/_folders"), json={}, timeout=5)
    assert bad.status_code == 400


def test_media_and_update(stub: StubServer) -> None:
    file_id = upload(stub, b"\x89PNG bytes")
    media = requests.get(
        url(stub, f"/drive/v3/files/{file_id}"), params={"alt": "media", **ALL}, timeout=5
    )
    assert (media.status_code, media.content) == (200, b"\x89PNG bytes")
    assert media.headers["Content-Type"] == "application/octet-stream"
    of_folder = requests.get(
        url(stub, f"/drive/v3/files/{folder(stub)}"), params={"alt": "media", **ALL}, timeout=5
    )
    assert error(of_folder) == (403, "fileNotDownloadable")
    trashed = requests.patch(
        url(stub, f"/drive/v3/files/{file_id}"),
        params={"fields": "id,trashed", **ALL},
        json={"trashed": True},
        timeout=5,
    )
    assert trashed.json() == {"id": file_id, "trashed": True}
    unknown = requests.patch(
        url(stub, f"/drive/v3/files/{file_id}"), params=ALL, json={"owner": "me"}, timeout=5
    )
    assert unknown.status_code == 400


# ------------------------------------------------------------------ q
def item(**changes: Any) -> Item:
    fields: dict[str, Any] = {"id": "f1", "name": "n", "mime_type": "image/png"}
    return Item(**{**fields, **changes})


def test_the_query_subset_is_parsed() -> None:
    terms = parse_query(
        "'fold\\'er' in parents and appProperties has { key='pipeline_key' and "
        "value='it\\'s \\\\ 1' } and trashed = false"
    )
    match = item(parents=["fold'er"], app_properties={"pipeline_key": "it's \\ 1"})
    assert all(term(match) for term in terms)
    assert not all(
        term(item(parents=["other"], app_properties=match.app_properties)) for term in terms
    )
    assert not all(
        term(item(parents=["fold'er"], app_properties={"pipeline_key": "x"})) for term in terms
    )
    assert not all(
        term(item(parents=["fold'er"], app_properties=match.app_properties, trashed=True))
        for term in terms
    )
    assert [term(item(trashed=True)) for term in parse_query("trashed = true")] == [True]
    assert parse_query("") == []


@pytest.mark.parametrize(
    "q",
    [
        "name = 'a'",
        "'a' in parents or trashed = false",
        "'a' in parents and",
        "'a in parents",
        "'a\\x' in parents",
        "trashed = maybe",
        "appProperties has { key='k' }",
        "appProperties has { key='k' and value='v' ",
        "'a' in owners",
        "mimeType != 'application/vnd.google-apps.folder'",
        "fullText contains 'x'",
    ],
)
def test_anything_else_is_a_400(stub: StubServer, q: str) -> None:
    with pytest.raises(ApiError):
        parse_query(q)
    answer = listing(stub, q)
    assert error(answer) == (400, "invalid")
    assert answer.json()["error"]["errors"][0]["location"] == "q"


def test_files_list_finds_by_parent_and_key(stub: StubServer) -> None:
    other = control(stub, "/_folders", {"name": "Other"})["id"]
    mine = upload(stub, b"1", key="k'1")
    upload(stub, b"2", key="k2")
    upload(stub, b"3", key="k'1", parent=other)
    q = (
        f"'{folder(stub)}' in parents and appProperties has {{ key='pipeline_key' and "
        "value='k\\'1' } and trashed = false"
    )
    answer = listing(stub, q, fields="files(id,name,size)")
    assert answer.json() == {"files": [{"id": mine, "name": "f.bin", "size": "1"}]}
    default = listing(stub, f"'{other}' in parents")
    assert default.json()["kind"] == "drive#fileList"
    assert set(default.json()["files"][0]) == {"kind", "id", "name", "mimeType"}
    bad_fields = listing(stub, q, fields="files(id,sizes)")
    assert error(bad_fields) == (400, "invalidParameter")


def test_shared_drive_items_are_listed_only_when_asked(stub: StubServer) -> None:
    upload(stub, b"1")
    q = f"'{folder(stub)}' in parents"
    assert len(listing(stub, q).json()["files"]) == 1
    bare = requests.get(url(stub, "/drive/v3/files"), params={"q": q}, timeout=5)
    assert bare.json()["files"] == []
    half = requests.get(url(stub, "/drive/v3/files"), params={"q": q, **ALL}, timeout=5)
    assert half.json()["files"] == []


# ------------------------------------------------------------------ uploads
def test_a_chunked_upload_answers_308_with_the_range_then_the_file(stub: StubServer) -> None:
    uri = session_uri(stub, fields="id,name,size,md5Checksum")
    data = bytes(range(256)) * (3 * UNIT // 256) + b"tail"
    nothing = put(uri, "bytes */*")
    assert nothing.status_code == 308 and "Range" not in nothing.headers
    first = put(uri, f"bytes 0-{UNIT - 1}/*", data[:UNIT])
    assert (first.status_code, first.headers["Range"]) == (308, f"bytes=0-{UNIT - 1}")
    assert put(uri, "bytes */*").headers["Range"] == f"bytes=0-{UNIT - 1}"
    second = put(uri, f"bytes {UNIT}-{3 * UNIT - 1}/*", data[UNIT : 3 * UNIT])
    assert second.headers["Range"] == f"bytes=0-{3 * UNIT - 1}"
    last = put(uri, f"bytes {3 * UNIT}-{len(data) - 1}/{len(data)}", data[3 * UNIT :])
    assert last.status_code == 200, last.text
    made = last.json()
    assert set(made) == {"id", "name", "size", "md5Checksum"}
    assert made["size"] == str(len(data))
    assert made["md5Checksum"] == hashlib.md5(data, usedforsecurity=False).hexdigest()
    again = put(uri, f"bytes */{len(data)}")
    assert (again.status_code, again.json()) == (200, made)
    counts = control(stub, "/_stats")
    assert (counts["upload.start"], counts["upload.chunk"], counts["upload.query"]) == (1, 3, 3)
    assert counts["bytes_received"] == len(data)


def test_offsets_must_be_contiguous_and_resent_bytes_are_skipped(stub: StubServer) -> None:
    uri = session_uri(stub)
    data = b"a" * UNIT + b"b" * UNIT + b"c"
    gap = put(uri, f"bytes {UNIT}-{2 * UNIT - 1}/*", data[UNIT : 2 * UNIT])
    assert gap.status_code == 400 and "exceeds already uploaded size of 0" in gap.text
    assert put(uri, f"bytes 0-{UNIT - 1}/*", data[:UNIT]).status_code == 308
    # The first chunk again with the second: Drive keeps what it lacks.
    both = put(uri, f"bytes 0-{2 * UNIT - 1}/*", data[: 2 * UNIT])
    assert both.headers["Range"] == f"bytes=0-{2 * UNIT - 1}"
    done = put(uri, f"bytes {2 * UNIT}-{2 * UNIT}/{len(data)}", data[2 * UNIT :])
    assert done.status_code == 200
    (stored,) = control(stub, "/_files")["files"]
    assert stored["md5Checksum"] == hashlib.md5(data, usedforsecurity=False).hexdigest()


def test_chunks_but_the_last_are_multiples_of_256_kib(stub: StubServer) -> None:
    uri = session_uri(stub)
    odd = put(uri, f"bytes 0-{UNIT}/*", b"x" * (UNIT + 1))
    assert odd.status_code == 400 and "multiple of 262144" in odd.text
    short_total = put(uri, "bytes 0-9/100", b"x" * 10)
    assert short_total.status_code == 400  # not the last one either
    assert put(uri, "bytes 0-9/10", b"x" * 10).status_code == 200  # the last may be short


def test_malformed_puts_are_refused(stub: StubServer) -> None:
    uri = session_uri(stub)
    assert put(uri, "bytes 0-9/*", b"x" * 5).status_code == 400  # range and body differ
    assert put(uri, "bytes=0-9/10", b"x" * 10).status_code == 400
    assert put(uri, "bytes */*", b"body").status_code == 400  # a query has no body
    assert put(uri, "bytes 0-9/5", b"x" * 10).status_code == 400  # past the total
    unknown = put(url(stub, "/upload/drive/v3/files?uploadType=resumable&upload_id=x"), "bytes */*")
    assert unknown.status_code == 404


def test_an_empty_file_and_a_whole_file_without_a_range(stub: StubServer) -> None:
    empty = put(session_uri(stub), "bytes */0")
    assert (empty.status_code, empty.json()["kind"]) == (200, "drive#file")
    whole = put(session_uri(stub), None, b"whole body")
    assert whole.status_code == 200
    sizes = sorted(f["size"] for f in control(stub, "/_files")["files"])
    assert sizes == ["0", "10"]


def test_parents_must_exist_and_be_folders_of_a_shared_drive(stub: StubServer) -> None:
    file_id = upload(stub, b"x")
    base = {"name": "a", "mimeType": "image/png"}
    assert error(start(stub, {**base, "parents": ["nope"]})) == (404, "notFound")
    assert error(start(stub, {**base, "parents": [file_id]})) == (404, "notFound")
    hidden = requests.post(
        url(stub, "/upload/drive/v3/files"),
        params={"uploadType": "resumable"},
        json={**base, "parents": [folder(stub)]},
        timeout=5,
    )
    assert error(hidden) == (404, "notFound")
    viewer = control(stub, "/_folders", {"name": "V", "read_only": True})["id"]
    assert error(start(stub, {**base, "parents": [viewer]})) == (403, "insufficientFilePermissions")
    mine = control(stub, "/_folders", {"name": "M", "my_drive": True})["id"]
    quota = start(stub, {**base, "parents": [mine]})
    assert error(quota) == (403, "storageQuotaExceeded")
    assert quota.json()["error"]["message"] == QUOTA_MESSAGE
    assert error(start(stub, base)) == (403, "storageQuotaExceeded")  # the account's own root
    two = start(stub, {**base, "parents": [folder(stub), folder(stub)]})
    assert two.status_code == 403
    media = start(stub, uploadType="media")
    assert media.status_code == 400


def test_metadata_is_checked(stub: StubServer) -> None:
    base = {"name": "a", "parents": [folder(stub)]}
    assert start(stub, {**base, "appProperties": {"pipeline_key": "v" * 112}}).status_code == 200
    big = start(stub, {**base, "appProperties": {"pipeline_key": "v" * 113}})
    assert error(big) == (403, "propertyLengthLimitExceeded")
    assert start(stub, {**base, "title": "v2 name"}).status_code == 400
    assert start(stub, {**base, "parents": folder(stub)}).status_code == 400
    no_json = requests.post(
        url(stub, "/upload/drive/v3/files"),
        params={"uploadType": "resumable", **ALL},
        data=b"{not json",
        timeout=5,
    )
    assert error(no_json) == (400, "parseError")


def test_the_upload_keeps_its_metadata(stub: StubServer) -> None:
    metadata = {
        "name": "scene.png",
        "parents": [folder(stub)],
        "mimeType": "image/png",
        "appProperties": {"pipeline_key": "bat_1/scene-1/1"},
        "description": "approved",
    }
    uri = start(stub, metadata).headers["Location"]
    assert put(uri, "bytes 0-2/3", b"abc").status_code == 200
    (stored,) = control(stub, "/_files")["files"]
    assert {k: stored[k] for k in metadata} == metadata
    assert (stored["size"], stored["trashed"]) == ("3", False)


# ------------------------------------------------------------------ controls
def test_injected_failures_hit_the_kind_asked_for(stub: StubServer) -> None:
    control(stub, "/_fail", {"status": 429, "times": 1, "on": "list"})
    control(
        stub, "/_fail", {"status": 403, "times": 1, "on": "get", "reason": "userRateLimitExceeded"}
    )
    control(stub, "/_fail", {"status": 500, "times": 1, "on": "start"})
    assert error(listing(stub, "")) == (429, "rateLimitExceeded")
    assert listing(stub, "").status_code == 200  # only once
    got = requests.get(url(stub, f"/drive/v3/files/{folder(stub)}"), params=ALL, timeout=5)
    assert error(got) == (403, "userRateLimitExceeded")
    assert error(start(stub)) == (500, "backendError")
    uri = session_uri(stub)
    control(stub, "/_fail", {"status": 503, "times": 2})
    assert put(uri, "bytes */*").status_code == 503  # queries fail too
    assert put(uri, "bytes 0-2/3", b"abc").status_code == 503
    assert put(uri, "bytes 0-2/3", b"abc").status_code == 200
    assert control(stub, "/_stats")["failed"] == 5


def test_a_failure_after_bytes_keeps_whole_blocks_before_them(stub: StubServer) -> None:
    uri = session_uri(stub)
    data = b"z" * (4 * UNIT)
    control(stub, "/_fail", {"status": 503, "times": 1, "after_bytes": 2 * UNIT + 5})
    assert put(uri, f"bytes 0-{UNIT - 1}/*", data[:UNIT]).status_code == 308  # before the byte
    cut = put(uri, f"bytes {UNIT}-{4 * UNIT - 1}/*", data[UNIT:])
    assert cut.status_code == 503
    assert put(uri, "bytes */*").headers["Range"] == f"bytes=0-{2 * UNIT - 1}"


def test_accept_at_most_makes_drive_keep_less_than_was_sent(stub: StubServer) -> None:
    assert control(stub, "/_config", {"accept_at_most": UNIT}) == {
        "accept_at_most": UNIT,
        "corrupt": False,
    }
    uri = session_uri(stub)
    data = b"q" * (2 * UNIT + 1)
    first = put(uri, f"bytes 0-{len(data) - 1}/{len(data)}", data)
    assert (first.status_code, first.headers["Range"]) == (308, f"bytes=0-{UNIT - 1}")
    second = put(uri, f"bytes {UNIT}-{len(data) - 1}/{len(data)}", data[UNIT:])
    assert second.headers["Range"] == f"bytes=0-{2 * UNIT - 1}"
    last = put(uri, f"bytes {2 * UNIT}-{2 * UNIT}/{len(data)}", data[2 * UNIT :])
    assert last.status_code == 200  # the block that completes the upload may be short


def test_corrupt_changes_the_stored_bytes(stub: StubServer) -> None:
    control(stub, "/_config", {"corrupt": True})
    upload(stub, b"abc")
    (stored,) = control(stub, "/_files")["files"]
    assert stored["md5Checksum"] != hashlib.md5(b"abc", usedforsecurity=False).hexdigest()


@pytest.mark.parametrize(
    "body",
    [
        {"status": 200},
        {"status": 503, "times": -1},
        {"status": 503, "on": "delete"},
        {"status": 503, "on": "list", "after_bytes": 5},
        {"status": 503, "after_bytes": "5"},
    ],
)
def test_bad_failure_requests_are_refused(stub: StubServer, body: dict[str, Any]) -> None:
    assert requests.post(url(stub, "/_fail"), json=body, timeout=5).status_code == 400


def test_stats_count_authorized_requests_and_reset_keeps_folders(stub: StubServer) -> None:
    upload(stub, b"x")
    requests.get(
        url(stub, f"/drive/v3/files/{folder(stub)}"),
        params=ALL,
        headers={"Authorization": "Bearer token"},
        timeout=5,
    ).raise_for_status()
    counts = control(stub, "/_stats")
    assert counts["authorized"] == 1
    assert (counts["files.get"], counts["upload.start"], counts["upload.chunk"]) == (1, 1, 1)
    control(stub, "/_fail", {"status": 503, "times": 3})
    control(stub, "/_config", {"accept_at_most": UNIT, "corrupt": True})
    control(stub, "/_reset", {})
    assert control(stub, "/_files") == {"files": []}
    assert control(stub, "/_stats") == {}
    assert [f["name"] for f in control(stub, "/_folders")["folders"]] == ["Deliveries"]
    file_id = upload(stub, b"again")  # no failure, no limit, no damage left
    (stored,) = control(stub, "/_files")["files"]
    assert stored["id"] == file_id
    assert stored["md5Checksum"] == hashlib.md5(b"again", usedforsecurity=False).hexdigest()


def test_unknown_paths_are_404(stub: StubServer) -> None:
    assert requests.get(url(stub, "/_nothing"), timeout=5).status_code == 404
    assert requests.get(url(stub, "/drive/v2/files"), timeout=5).status_code == 404
    assert requests.put(url(stub, "/drive/v3/files/x"), timeout=5).status_code == 404


# ------------------------------------------------------------------ processes
def test_main_serves_on_a_free_port_with_a_folder_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack.drive_stub", "--port", "0", "--folder", "Out"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("drive stub listening on http://127.0.0.1:"), line
        base = line.split(" on ", 1)[1].split()[0]
        health = requests.get(f"{base}/_healthz", timeout=5).json()
        assert health["ok"] is True and health["default_folder_id"] in line
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_local_stack_starts_the_stub_with_a_deliveries_folder(tmp_path: Path) -> None:
    from devstack.stack import Stack, StackConfig
    from shared.adapters.drive import GoogleDriveFolder, drive_session

    stack = Stack(StackConfig(state_dir=tmp_path, startup_timeout_s=30))
    (tmp_path / "logs").mkdir()
    try:
        stack._start_drive_stub()
        assert stack.drive_url.startswith("http://127.0.0.1:")
        folders = requests.get(f"{stack.drive_url}/_folders", timeout=5).json()["folders"]
        assert [(f["id"], f["name"]) for f in folders] == [(stack.drive_folder_id, "Deliveries")]
        drive = GoogleDriveFolder(drive_session(stack.drive_url), stack.drive_url)
        drive.check_folder(stack.drive_folder_id)

        def write(sink: BinaryIO) -> None:
            sink.write(b"hi")

        made = drive.upload(stack.drive_folder_id, "a.txt", "text/plain", "k", write)
        assert drive.find(stack.drive_folder_id, "k") == made
    finally:
        stack.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{stack.drive_url}/_healthz", timeout=2)


def test_the_stack_gives_the_functions_the_stub_s_address() -> None:
    """DRIVE_API_URL goes into the env every function gets, with DRIVE_STUB_URL and
    DRIVE_FOLDER_ID for whoever uses the stack (read from the source: starting
    the whole stack takes the emulators)."""
    import inspect

    from devstack.stack import Stack

    source = inspect.getsource(Stack._start)
    first_env = source[source.index("self.env.update(") : source.index("self._wait_http")]
    for line in (
        '"DRIVE_API_URL": self.drive_url',
        '"DRIVE_STUB_URL": self.drive_url',
        '"DRIVE_FOLDER_ID": self.drive_folder_id',
    ):
        assert line in first_env
    assert source.index("self._start_drive_stub()") < source.index("self.env.update(")
    assert source.index("self.env.update(") < source.index("function_env = {")
