"""A shared sheet under a busy team: rows sorted, inserted and deleted at random
moments while jobs write their rows, scenes sent again meanwhile.

A seeded schedule, in the style of the simulation (``tests/simulation.py``), over the
real row writer (gspread against the Sheets protocol stub, in process) and the real
sheet sync: a collaborator acts at random points, including between the writer's read
of the sheet and its write. However it goes, every scene row ends showing the final
state of its owning job (the newest sent for it), and nothing else.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import gspread
import pytest
from gspread.utils import ValueInputOption

from devstack.stack import sheets_client
from shared.adapters.sheets import GspreadSheetWriter
from shared.contracts.links import LinkSigner
from shared.contracts.sheet_row import Formula, Text, is_image_column, row_cells
from shared.domain import lifecycle
from shared.domain.errors import TransientError
from shared.domain.job import Job, JobState, VariantState
from shared.domain.rows import row_owner
from shared.services.sheet_sync import SheetSync
from tests.fakes import T0, FakeJobStore, make_job, mark_done
from tests.stubs import new_spreadsheet, serving_sheets, sheets_url

HEADER = [
    "scene_id",
    "prompt",
    "status_img",
    "nano_img_1",
    "nano_img_2",
    "nano_img_3",
    "job_id",
    "error_img",
]
SCENES = [f"sc-{i:02d}" for i in range(1, 9)]
SEEDS = range(24)
STEPS = 60


def client(url: str) -> gspread.Client:
    return cast(gspread.Client, sheets_client(url))


@dataclass
class Sheet:
    url: str
    spreadsheet_id: str

    def worksheet(self) -> gspread.Worksheet:
        return client(self.url).open_by_key(self.spreadsheet_id).worksheet("Scenes")


@pytest.fixture
def sheet() -> Iterator[Sheet]:
    with serving_sheets() as server:
        url = sheets_url(server)
        yield Sheet(url, new_spreadsheet(url, rows=60, columns=len(HEADER)))


class Collaborator:
    """Someone editing the sheet: sorts it, inserts a blank row, deletes one."""

    def __init__(self, worksheet: gspread.Worksheet, rng: random.Random) -> None:
        self.worksheet, self.rng = worksheet, rng
        self.moves: list[str] = []
        self.busy = True  # False: the team has stopped editing

    def act(self) -> None:
        keys = self.worksheet.col_values(1)
        used = len(keys)
        what = self.rng.choice(["sort", "insert", "delete"])
        if what == "sort":
            column = self.rng.choice([0, 1, 2])  # by scene, by prompt, by status
            order = self.rng.choice(["ASCENDING", "DESCENDING"])
            spec = {"dimensionIndex": column, "sortOrder": order}
            rows = {"sheetId": self.worksheet.id, "startRowIndex": 1, "endRowIndex": used + 2}
            self.worksheet.spreadsheet.batch_update(
                {"requests": [{"sortRange": {"range": rows, "sortSpecs": [spec]}}]}
            )
            self.moves.append(f"sort by column {column} {order.lower()}")
        elif what == "insert":
            at = self.rng.randint(2, used + 1)
            self.worksheet.insert_row([], at)
            self.moves.append(f"insert a blank row at {at}")
        else:
            blank = [i for i, key in enumerate(keys, start=1) if i > 1 and not key.strip()]
            if blank:
                at = self.rng.choice(blank)
                self.worksheet.delete_rows(at)
                self.moves.append(f"delete blank row {at}")


def interleave(writer: GspreadSheetWriter, collaborator: Collaborator, rng: random.Random) -> None:
    """Half the writes meet a collaborator's move between their read and their write."""
    http = writer._http
    real = http.values_batch_update

    def write(*args: Any, **kwargs: Any) -> Any:
        if collaborator.busy and rng.random() < 0.5:
            collaborator.act()
        return real(*args, **kwargs)

    http.values_batch_update = write  # type: ignore[method-assign]


def step(job: Job, rng: random.Random) -> None:
    """The job moves on: a variant is made or fails."""
    open_ = [v for v in job.variants.values() if v.state == VariantState.PENDING]
    if not open_:
        return
    variant = rng.choice(open_)
    if rng.random() < 0.8:
        mark_done(job, variant.n)
    else:
        variant.state = VariantState.FAILED
        variant.error = "Gemini said no"
    job.started_at = job.started_at or T0
    job.state = lifecycle.derive_state(job)


def synced(sync: SheetSync, job_id: str) -> None:
    with contextlib.suppress(TransientError):  # redelivered later: the final pass below
        sync.sync(job_id)


def run(seed: int, sheet: Sheet) -> tuple[FakeJobStore, LinkSigner, list[str]]:
    rng = random.Random(seed)
    worksheet = sheet.worksheet()
    worksheet.update(
        [HEADER] + [[scene, f"prompt {rng.randint(0, 99)}"] for scene in SCENES],
        "A1",
        value_input_option=ValueInputOption.raw,
    )
    store = FakeJobStore()
    links = LinkSigner("k" * 32, "https://api.example.test")
    writer = GspreadSheetWriter(client(sheet.url))
    collaborator = Collaborator(worksheet, rng)
    interleave(writer, collaborator, rng)
    sync = SheetSync(store, writer, links)
    jobs: list[str] = []
    for step_no in range(STEPS):
        roll = rng.random()
        if roll < 0.25 or not jobs:
            # A scene is sent (again): a new job, newer than any before it.
            scene = rng.choice(SCENES)
            job_id = f"job_{len(jobs) + 1}"
            store.add(
                make_job(
                    job_id=job_id,
                    batch_id=f"bat_{len(jobs) + 1}",
                    scene_id=scene,
                    spreadsheet_id=sheet.spreadsheet_id,
                    variant_count=rng.randint(1, 3),
                    created_at=T0 + timedelta(seconds=step_no),
                )
            )
            jobs.append(job_id)
            synced(sync, job_id)
        elif roll < 0.85:
            job_id = rng.choice(jobs)
            store.mutate(job_id, lambda job: step(job, rng))
            synced(sync, job_id)
        else:
            collaborator.act()
    # Every job ends; its last events (and their redeliveries) come in.
    for job_id in jobs:
        while store.job(job_id).state in (JobState.QUEUED, JobState.GENERATING):
            store.mutate(job_id, lambda job: step(job, rng))
        synced(sync, job_id)
    collaborator.busy = False
    for _ in range(3):
        for job_id in jobs:
            synced(sync, job_id)
    return store, links, collaborator.moves


@pytest.mark.parametrize("seed", SEEDS)
def test_every_row_ends_showing_its_owning_jobs_final_state(sheet: Sheet, seed: int) -> None:
    store, links, moves = run(seed, sheet)
    rows = sheet.worksheet().get_all_values(value_render_option="FORMULA")  # type: ignore[arg-type]
    header = rows[0]
    found: dict[str, list[str]] = {}
    for line in rows[1:]:
        cells = dict(zip(header, line + [""] * (len(header) - len(line)), strict=True))
        if cells["scene_id"]:
            assert cells["scene_id"] not in found, f"seed {seed}: scene twice"
            found[cells["scene_id"]] = line
            owner = row_owner(
                store.jobs_of_scenes(sheet.spreadsheet_id, SCENES),
                sheet.spreadsheet_id,
                "Scenes",
                cells["scene_id"],
            )
            want: dict[str, str] = {name: "" for name in header if is_image_column(name)}
            want.update({"status_img": "", "job_id": "", "error_img": ""})
            if owner is not None:
                for name, cell in row_cells(owner, links).items():
                    want[name] = cell.value if isinstance(cell, Formula | Text) else ""
            shown = {name: cells[name] for name in want}
            assert shown == want, f"seed {seed}, moves {moves}: row {cells['scene_id']}"
        else:
            # A blank row never keeps a job's cells.
            stray = {k: v for k, v in cells.items() if v and k != "prompt"}
            assert not stray, f"seed {seed}, moves {moves}: a blank row shows {stray}"
    assert sorted(found) == SCENES
