"""The Gemini and Sheets stubs served in-process on a free loopback port, for unit tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from socketserver import BaseServer
from typing import Any, TypeVar, cast

import requests

from devstack import sheets_stub
from devstack.gemini_stub import GeminiStubServer, StubConfig, make_server
from devstack.serving import running

S = TypeVar("S", bound=BaseServer)


@contextlib.contextmanager
def serving(config: StubConfig) -> Iterator[GeminiStubServer]:
    with running(make_server("127.0.0.1", 0, config)) as server:
        yield server


@contextlib.contextmanager
def serving_sheets(
    data_file: Path | None = None,
    mirror: sheets_stub.Mirror | None = None,
    quota: int | None = None,
) -> Iterator[sheets_stub.StubServer]:
    """The Sheets stub; its URL is ``sheets_url(server)``, its state ``server.store``."""
    server = cast(
        sheets_stub.StubServer,
        sheets_stub.make_server("127.0.0.1", 0, data_file, mirror, write_quota_per_minute=quota),
    )
    with running(server):
        yield server


def sheets_url(server: sheets_stub.StubServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def new_spreadsheet(url: str, title: str = "Scenes", rows: int = 200, columns: int = 26) -> str:
    """A spreadsheet with one empty worksheet; its id."""
    grid = {"rowCount": rows, "columnCount": columns}
    created: dict[str, Any] = requests.post(
        f"{url}/v4/spreadsheets",
        json={"sheets": [{"properties": {"title": title, "gridProperties": grid}}]},
        timeout=10,
    ).json()
    return str(created["spreadsheetId"])
