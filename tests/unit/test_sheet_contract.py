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


# --- Briefs (apps_script/Briefs.gs) and batch emails (apps_script/Notify.gs): what the
# script copies of shared/domain/briefs.py, the request's bounds and the batch events.
# The composition itself is held to shared/domain/template_cases.json by
# apps_script/tests/templates.test.js, as briefs.py is.

_SCRIPT_DIR = Path(__file__).resolve().parents[2] / "apps_script"
BRIEFS_GS = (_SCRIPT_DIR / "Briefs.gs").read_text()
NOTIFY_GS = (_SCRIPT_DIR / "Notify.gs").read_text()


def _js_const(source: str, name: str) -> str:
    match = re.search(rf"^const {name} = (.+);$", source, re.M)
    assert match, f"no constant {name}"
    return match[1]


def _js_int(source: str, name: str) -> int:
    return int(_js_const(source, name).replace("_", ""))


def _js_string(source: str, name: str) -> str:
    text = _js_const(source, name)
    assert text[0] == text[-1] == "'" and "\\" not in text, f"{name} is not a plain string"
    return text[1:-1]


def _js_list(source: str, name: str) -> list[str]:
    return re.findall(r"'([^']*)'", _js_const(source, name))


def test_the_script_composes_with_the_servers_token_and_wording() -> None:
    from shared.domain import briefs

    match = re.search(r"^const TEMPLATE_TOKEN = /(.+)/g;$", BRIEFS_GS, re.M)
    assert match, "Briefs.gs has no TEMPLATE_TOKEN"
    assert match[1] == briefs._TOKEN.pattern
    assert _js_string(BRIEFS_GS, "AVOID_WORDING") + "{items}." == briefs.AVOID_WORDING
    assert _js_string(BRIEFS_GS, "DEFAULT_TEMPLATE") == "default"


def test_the_script_checks_a_briefs_bounds_as_the_request_does() -> None:
    from shared.contracts.requests import BatchItem

    schema = BatchItem.model_json_schema()
    props, defs = schema["properties"], schema["$defs"]
    assert _js_int(BRIEFS_GS, "AVOID_MAX_CHARS") == props["avoid"]["anyOf"][0]["maxLength"]
    assert (
        _js_int(BRIEFS_GS, "FIELD_MAX_CHARS")
        == props["fields"]["additionalProperties"]["maxLength"]
    )
    assert _js_int(BRIEFS_GS, "MAX_FIELDS") == props["fields"]["maxProperties"]
    assert _js_int(BRIEFS_GS, "MAX_ROLE_REFERENCES") == props["references"]["maxItems"]
    template = defs["Template"]["properties"]
    assert _js_int(BRIEFS_GS, "TEMPLATE_NAME_MAX_CHARS") == template["name"]["maxLength"]
    assert _js_int(BRIEFS_GS, "TEMPLATE_MAX_CHARS") == template["text"]["maxLength"]
    reference = defs["RoleReference"]["properties"]
    assert _js_int(BRIEFS_GS, "REFERENCE_NAME_MAX_CHARS") == reference["name"]["maxLength"]
    assert {"character", "product"} <= set(reference["role"]["enum"])
    assert "'character'" in BRIEFS_GS and "'product'" in BRIEFS_GS


def test_a_templates_fields_leave_out_the_columns_the_pipeline_writes() -> None:
    from shared.contracts.sheet_row import ERROR_COLUMN, JOB_ID_COLUMN, image_column

    written = set(_js_list(BRIEFS_GS, "PIPELINE_COLUMNS"))
    assert written == {"status_img", JOB_ID_COLUMN, ERROR_COLUMN}
    match = re.search(r"^const IMAGE_COLUMN_PATTERN = /(.+)/;$", BRIEFS_GS, re.M)
    assert match, "Briefs.gs has no IMAGE_COLUMN_PATTERN"
    for n in (1, 3, 12):
        assert re.search(match[1], image_column(n))


def test_the_script_emails_the_servers_batch_events() -> None:
    from shared.contracts.answers import BatchView
    from shared.domain.batch_news import EVENT_KINDS

    assert _js_list(NOTIFY_GS, "BATCH_EVENTS") == list(EVENT_KINDS)
    assert "events" in BatchView.model_fields


# --- Pick, promote, hand over (apps_script/Review.gs, issue 24): what the script copies
# of the review, promotion and export requests.

REVIEW_GS = (_SCRIPT_DIR / "Review.gs").read_text()


def test_the_script_promotes_up_the_servers_size_order() -> None:
    from shared.services.rerolls import SIZE_ORDER

    assert _js_list(REVIEW_GS, "PROMOTE_SIZE_ORDER") == list(SIZE_ORDER)


def test_the_script_sends_the_decisions_the_server_takes() -> None:
    from typing import get_args

    from shared.contracts.requests import FinalRequest, ReviewRequest

    decision = ReviewRequest.model_fields["decision"].annotation
    sent = set(re.findall(r"'(approved|rejected|none)'", REVIEW_GS))
    assert sent <= set(get_args(decision)) and {"approved", "rejected"} <= sent
    assert {"decision", "version"} == set(ReviewRequest.model_fields)
    assert {"variant", "version"} == set(FinalRequest.model_fields)
    assert "{ decision: decision, version:" in REVIEW_GS
    assert "{ variant: cell.n, version:" in REVIEW_GS


def test_the_script_delivers_with_the_export_requests_fields() -> None:
    from typing import get_args

    from shared.contracts.requests import NAME_TEMPLATE_FIELDS, ExportRequest, PromoteRequest
    from shared.domain import briefs

    fields = ExportRequest.model_fields
    assert {"only", "name_template", "destination", "drive_folder_id"} == set(fields)
    assert {"approved", "final"} <= set(get_args(fields["only"].annotation))
    assert "drive" in get_args(fields["destination"].annotation)
    schema = ExportRequest.model_json_schema()["properties"]["drive_folder_id"]["anyOf"][0]
    folder = _js_const(REVIEW_GS, "DRIVE_FOLDER_ID_PATTERN")
    assert (
        folder
        == "/" + schema["pattern"].replace("+$", "{1," + str(schema["maxLength"]) + "}$") + "/"
    )
    default = _js_string(REVIEW_GS, "DEFAULT_NAME_TEMPLATE")
    assert set(briefs.placeholders(default)) <= set(NAME_TEMPLATE_FIELDS)
    assert {"image_size", "version"} == set(PromoteRequest.model_fields)
    assert "{ image_size: size, version: target.version }" in REVIEW_GS


def test_the_review_column_is_never_sent_as_a_rows_field() -> None:
    assert _js_list(BRIEFS_GS, "SCRIPT_COLUMNS") == ["review"]
    assert _js_string(REVIEW_GS, "REVIEW_COLUMN") == "review"


# --- Chunked sends (apps_script/Chunks.gs and Submissions.gs, issue 23): a large
# selection is cut by the limits GET /limits reports, and each chunk is sent with an
# Idempotency-Key the server keeps longer than the script takes a send up again.

CHUNKS_GS = (_SCRIPT_DIR / "Chunks.gs").read_text()
SUBMISSIONS_GS = (_SCRIPT_DIR / "Submissions.gs").read_text()
API_GS = (_SCRIPT_DIR / "Api.gs").read_text()
CODE_GS = (_SCRIPT_DIR / "Code.gs").read_text()
HTTP_API_PY = (Path(__file__).resolve().parents[2] / "functions" / "http_api.py").read_text()


def _js_product(source: str, name: str) -> int:
    """A constant written as a product of whole numbers (``10 * 60 * 1000``)."""
    text = _js_const(source, name)
    assert re.fullmatch(r"[0-9_ *]+", text), f"{name} is not a product of numbers: {text}"
    product = 1
    for factor in text.split("*"):
        product *= int(factor.strip().replace("_", ""))
    return product


def test_the_script_cuts_chunks_by_the_limits_the_server_reports() -> None:
    from shared.contracts.answers import DeploymentLimits

    assert {"max_items_per_batch", "max_body_bytes"} <= set(DeploymentLimits.model_fields)
    assert "data.max_items_per_batch" in API_GS and "data.max_body_bytes" in API_GS
    for source in (CHUNKS_GS, API_GS):
        for name in ("MAX_BODY_BYTES", "MAX_ITEMS", "MAX_ITEMS_PER_BATCH"):
            assert not re.search(rf"^const {name} = ", source, re.M), (
                f"the script fixes {name}; read it from GET /limits"
            )
    assert "limits.maxBodyBytes" in CHUNKS_GS and "limits.maxItems" in CHUNKS_GS
    slack = float(_js_const(CHUNKS_GS, "BODY_SLACK"))
    assert 0 < slack < 0.2


def test_a_chunks_idempotency_key_fits_the_servers_bound() -> None:
    bound = int(re.search(r"^MAX_IDEMPOTENCY_KEY = (\d+)$", HTTP_API_PY, re.M)[1])
    assert 'request.headers.get("Idempotency-Key")' in HTTP_API_PY
    assert "{ 'Idempotency-Key': key }" in CHUNKS_GS
    # The send's key, then the chunk's number and how many there are.
    assert "key: 'sheets-' + sha256Hex_(hash + ':' + nonce)," in SUBMISSIONS_GS
    assert "record.key + '-' + (index + 1) + 'of' + n" in SUBMISSIONS_GS
    most = _js_int(CHUNKS_GS, "MAX_CHUNKS")
    assert len("sheets-" + "0" * 64 + f"-{most}of{most}") <= bound


def test_an_unfinished_send_is_taken_up_again_only_while_the_server_keeps_its_keys() -> None:
    from shared.config.settings import Settings

    kept_ms = Settings.model_fields["idempotency_ttl_s"].default * 1000
    assert _js_product(SUBMISSIONS_GS, "SENDING_WINDOW_MS") < kept_ms
    assert _js_product(SUBMISSIONS_GS, "SUBMISSION_WINDOW_MS") < kept_ms


def test_the_script_reads_a_replay_as_the_server_marks_it() -> None:
    assert 'response.headers["Idempotent-Replay"] = "true"' in HTTP_API_PY
    assert "header_(res, 'idempotent-replay') === 'true'" in CODE_GS
