"""One zip written across several deliveries, as parts that Cloud Storage composes.

A zip too large for one delivery is written a part at a time: each part holds the
next images (their local headers and data) at the offsets they will have in the
whole zip, and its record (``PartRecord``, a small JSON object next to it) keeps
what the central directory needs of them. The part that writes the last image adds
the manifests and the central directory of every image of every part; the zip is
then the parts composed in order (``compose``), byte for byte the zip one
delivery would have written.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

# Cloud Storage composes at most 32 objects in one call.
COMPOSE_MAX = 32

_INFO_FIELDS = (
    "compress_type",
    "CRC",
    "compress_size",
    "file_size",
    "header_offset",
    "flag_bits",
    "extract_version",
    "create_version",
    "create_system",
    "external_attr",
)


class At:
    """An unseekable output that says it is ``start`` bytes into the whole zip, so
    the members written through it get their offsets in the zip, not in the part.
    Once ``cut``, what is written goes nowhere (the central directory a part that
    is not the last one would otherwise end with)."""

    def __init__(self, out: BinaryIO, start: int) -> None:
        self._out = out
        self._at = start
        self.cut = False

    def write(self, data: bytes) -> int:
        if self.cut:
            return len(data)
        self._out.write(data)
        self._at += len(data)
        return len(data)

    def tell(self) -> int:
        return self._at

    def flush(self) -> None:
        """Written through as it comes."""


@dataclass(frozen=True)
class PartRecord:
    """What a finished part holds: its images' zip entries and manifest rows, and
    where the next part starts."""

    infos: list[zipfile.ZipInfo]
    rows: list[dict[str, str]]
    written: int  # entries of the export up to here (images left out included)
    end: int  # the offset in the zip right after this part

    def dumps(self) -> bytes:
        entries = [
            {
                "name": info.filename,
                "date_time": list(info.date_time),
                **{field: getattr(info, field) for field in _INFO_FIELDS},
            }
            for info in self.infos
        ]
        body = {"entries": entries, "rows": self.rows, "written": self.written, "end": self.end}
        return json.dumps(body, ensure_ascii=False).encode()

    @staticmethod
    def loads(data: bytes) -> PartRecord:
        body = json.loads(data)
        infos = []
        for entry in body["entries"]:
            info = zipfile.ZipInfo(entry["name"], date_time=tuple(entry["date_time"]))
            for field in _INFO_FIELDS:
                setattr(info, field, entry[field])
            infos.append(info)
        return PartRecord(infos, body["rows"], int(body["written"]), int(body["end"]))


def compose_rounds(parts: Sequence[str], interim: str) -> list[tuple[list[str], str]]:
    """The compose calls that join ``parts`` (in order) within Cloud Storage's 32
    sources per call: (sources, destination) pairs, the last one's destination
    ``""`` (the zip itself); earlier rounds write ``{interim}-{i}``."""
    rounds: list[tuple[list[str], str]] = []
    head: str | None = None
    rest = list(parts)
    while True:
        room = COMPOSE_MAX - (head is not None)
        take, rest = rest[:room], rest[room:]
        sources = ([head] if head is not None else []) + take
        if not rest:
            rounds.append((sources, ""))
            return rounds
        head = f"{interim}-{len(rounds)}"
        rounds.append((sources, head))
