"""Count the Firestore writes of the stack's function processes (benchmarks only).

The Firestore emulator keeps no statistics, so a benchmark starts the functions
with a ``sitecustomize`` (written by :func:`site_dir`) that wraps the Firestore
client's ``Commit`` and ``BatchWrite`` calls: the call itself is unchanged, and
each one appends ``<rpc> <writes>`` to the file named by FIRESTORE_WRITE_LOG.
Every write the product makes (``create``, ``set``, ``update``, transactions,
batches) travels in one of these two calls.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG_VARIABLE = "FIRESTORE_WRITE_LOG"
# Set (to anything): also one ``doc <epoch seconds> <document path>`` line per write.
DOCS_VARIABLE = "FIRESTORE_WRITE_DOCS"
SITE = "import bench.firestore_meter as _meter\n_meter.install()\n"


def site_dir() -> Path:
    """A directory holding the ``sitecustomize`` to put first on PYTHONPATH."""
    folder = Path(tempfile.mkdtemp(prefix="firestore-meter-"))
    (folder / "sitecustomize.py").write_text(SITE)
    return folder


def install() -> None:
    """Wrap Commit and BatchWrite when FIRESTORE_WRITE_LOG names a file."""
    path = os.environ.get(LOG_VARIABLE)
    if not path:
        return
    from google.cloud.firestore_v1.services.firestore import client

    api = client.FirestoreClient
    api.commit = _counted(api.commit, "commit", path)  # type: ignore[method-assign]
    api.batch_write = _counted(api.batch_write, "batch_write", path)  # type: ignore[method-assign]


def _counted(call: Callable[..., Any], rpc: str, path: str) -> Callable[..., Any]:
    @functools.wraps(call)
    def wrapper(self: Any, request: Any = None, **kwargs: Any) -> Any:
        answer = call(self, request, **kwargs)
        writes = kwargs.get("writes")
        if writes is None and request is not None:
            writes = request.get("writes") if isinstance(request, dict) else request.writes
        lines = f"{rpc} {len(writes or [])}\n"
        if os.environ.get(DOCS_VARIABLE):
            now = time.time()
            lines += "".join(f"doc {now:.3f} {_document(w)}\n" for w in writes or [])
        # One short O_APPEND write per call: lines from many processes never mix.
        with open(path, "a") as log:
            log.write(lines)
        return answer

    return wrapper


def _document(write: Any) -> str:
    """The path of the document a write changes (below ``.../documents/``)."""
    if isinstance(write, dict):
        name = (
            (write.get("update") or {}).get("name")
            or write.get("delete")
            or (write.get("transform") or {}).get("document")
            or ""
        )
    else:
        pb = getattr(write, "_pb", write)
        kind = pb.WhichOneof("operation")
        name = {
            "update": lambda: pb.update.name,
            "delete": lambda: pb.delete,
            "transform": lambda: pb.transform.document,
        }.get(kind, lambda: "")()
    return str(name).partition("/documents/")[2] or str(name)


@dataclass(frozen=True)
class Count:
    calls: int
    writes: int


def read(path: Path) -> Count:
    """Calls and writes recorded so far."""
    if not path.exists():
        return Count(0, 0)
    calls = writes = 0
    for line in path.read_text().splitlines():
        _, _, n = line.partition(" ")
        if n.isdigit():
            calls += 1
            writes += int(n)
    return Count(calls, writes)
