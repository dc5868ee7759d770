"""The rules the Apps Script shares with the server and that no deployment changes:
the scene id pattern, the anchor syntax and the first words of a status. Each side
keeps its own copy (the script runs in Google's Apps Script); these tests fail
when one copy changes alone. What a deployment can change, the script reads from
``GET /limits``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.contracts.requests import SCENE_ID_PATTERN
from shared.contracts.status_words import FINAL_WORDS, QUEUED_WORD, RUNNING_WORDS
from shared.domain.anchors import parse_anchor

SHEET_GS = (Path(__file__).resolve().parents[2] / "apps_script" / "Sheet.gs").read_text()

SCENE_IDS = [
    "a",
    "A1",
    "scene-001",
    "s.c_e-n",
    "9lives",
    "x" * 64,
    "x" * 65,
    "_lead",
    "-lead",
    ".lead",
    "",
    "sp ace",
    "slash/no",
    "ümlaut",
    "tab\t",
    "a" * 63 + "!",
]
ANCHORS = [
    "scene:sc-001#1",
    "scene:sc-001#99",
    "scene:sc-001#100",
    "scene:sc-001#0",
    "scene:sc-001#01",
    "job:job_ab12#4",
    "job:_x#1",
    "scene:#1",
    "scene:" + "x" * 64 + "#2",
    "scene:" + "x" * 65 + "#2",
    "scenes:a#1",
    "scene:a#1 ",
    "scene:a",
    "JOB:a#1",
]


def _js_regex(name: str) -> re.Pattern[str]:
    """The regex literal a ``const NAME = /.../;`` of Sheet.gs holds, as Python's re
    (these patterns use only syntax both share)."""
    match = re.search(rf"^const {name} = /(.+)/([a-z]*);$", SHEET_GS, re.M)
    assert match, f"Sheet.gs has no regex constant {name}"
    assert not match[2], f"{name} has flags {match[2]!r}; compare them too"
    return re.compile(match[1])


def _js_words(name: str) -> list[str]:
    match = re.search(rf"^const {name} = \[([^\]]*)\];$", SHEET_GS, re.M)
    assert match, f"Sheet.gs has no list constant {name}"
    return re.findall(r"'([^']*)'", match[1])


@pytest.mark.parametrize("candidate", SCENE_IDS)
def test_the_script_and_the_server_accept_the_same_scene_ids(candidate: str) -> None:
    script = _js_regex("SCENE_ID_PATTERN").search(candidate) is not None
    server = SCENE_ID_PATTERN.fullmatch(candidate) is not None
    assert script == server, f"{candidate!r}: script {script}, server {server}"


@pytest.mark.parametrize("candidate", ANCHORS)
def test_the_script_and_the_server_read_the_same_anchors(candidate: str) -> None:
    script = _js_regex("ANCHOR_PATTERN").search(candidate) is not None
    # The script checks the cell as typed (trimmed by cellText_); the server trims too.
    server = parse_anchor(candidate) is not None
    assert script == (server and candidate == candidate.strip()), candidate


def test_the_script_ranks_statuses_by_the_servers_first_words() -> None:
    assert _js_words("RUNNING_WORDS") == list(RUNNING_WORDS)
    assert _js_words("FINAL_STATES") == list(FINAL_WORDS)
    assert f"word === '{QUEUED_WORD}'" in SHEET_GS


def test_the_script_hard_codes_no_limit_a_deployment_can_change() -> None:
    for name in ("MAX_VARIANTS", "IMAGE_SIZES", "ASPECT_RATIOS", "MAX_ITEMS", "MAX_PROMPT_CHARS"):
        assert not re.search(rf"^const {name} = ", SHEET_GS, re.M), (
            f"Sheet.gs fixes {name}; read it from GET /limits"
        )
