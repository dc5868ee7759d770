"""Each function's longest path, from its settings: its timeout must exceed it.

A function whose timeout is shorter than the longest path its code may take is
cut off in the middle of a write, and its message is redelivered to do the same
again. The platform gives each function its timeout (Terraform's
``timeout_seconds``, passed to the function as ``FUNCTION_TIMEOUT_S``); at start
``get_settings`` calls ``check_function_timeout`` for the function's own entry
point, and tests/unit/test_infra.py checks every function's Terraform timeout
against ``longest_path_s`` computed from the settings Terraform passes it.

Where no setting bounds a step, the bound is a named constant below, with where
it comes from; tests/unit/test_budgets.py keeps those in step with the code.
"""

from __future__ import annotations

from collections.abc import Callable

from shared.config.settings import Settings
from shared.domain.errors import ConfigError

# One Sheets write attempt that starts just before SHEETS_WRITE_TIMEOUT_S runs
# out: a header read and a values write, each up to the Sheets client's 30 s
# timeout (functions/wiring.py).
LAST_SHEETS_ATTEMPT_S = 60.0
# How long a row sync waits for another delivery's write of the same row
# (SheetSync.wait_s, shared/services/sheet_sync.py).
SHEET_ROW_WAIT_S = 30.0
# One Cloud Storage request (a download, a create-only upload): the storage
# client's default timeout.
STORAGE_CALL_S = 60.0
# Decoding and encoding one thumbnail of at most THUMBNAIL_MAX_PIXELS, a wait
# for a free decode slot included.
THUMBNAIL_WORK_S = 30.0
# How long the HTTP function waits for Pub/Sub to take a batch's messages
# (PUBLISH_TIMEOUT_S, shared/adapters/pubsub_publisher.py).
PUBLISH_WAIT_S = 60.0
# The HTTP function's own calls around it (Firestore, Secret Manager, signBlob).
LAST_CALL_S = 60.0
# A batch's news to its Chat space, told by the change that ended its last job
# (or paused it): one post, its connect and its answer each within the webhook's
# timeout (CHAT_POST_TIMEOUT_S, functions/wiring.py). Counted whether or not a
# webhook is set: the URL is a secret the budget cannot see.
CHAT_POST_TIMEOUT_S = 5.0
BATCH_NEWS_S = 2 * CHAT_POST_TIMEOUT_S

Path = dict[str, float]


def _sheet_write(s: Settings) -> Path:
    """A row write: another delivery's write, the coalescing window, the write
    deadline (quota waits and backoff), the attempt in flight at the deadline."""
    return {
        "row wait": SHEET_ROW_WAIT_S,
        "SHEETS_COALESCE_MS": s.sheets_coalesce_ms / 1000,
        "SHEETS_WRITE_TIMEOUT_S": s.sheets_write_timeout_s,
        "last Sheets attempt": LAST_SHEETS_ATTEMPT_S,
    }


def _http(s: Settings) -> Path:
    # A cancel may end a batch: its news is told before the answer.
    return {"Pub/Sub publish wait": PUBLISH_WAIT_S, "last call": LAST_CALL_S, **_news()}


def _news() -> Path:
    return {"batch news": BATCH_NEWS_S}


def _generate(s: Settings) -> Path:
    # Reference packs, claim waits and every Gemini call (GEMINI_BUDGET_S) fit in
    # DELIVERY_DEADLINE_S (settings.py, generation.py); the upload of a variant
    # whose call ended at the deadline, then the final sheet write, come after it.
    return {
        "DELIVERY_DEADLINE_S": s.delivery_deadline_s,
        "last upload": STORAGE_CALL_S,
        **_news(),
        **_sheet_write(s),
    }


def _thumbnail(s: Settings) -> Path:
    return {
        "image read": STORAGE_CALL_S,
        "thumbnail": THUMBNAIL_WORK_S,
        "thumbnail upload": STORAGE_CALL_S,
        **_news(),
        **_sheet_write(s),
    }


def _dead_letter(s: Settings) -> Path:
    return {**_news(), **_sheet_write(s)}


def _economy(s: Settings) -> Path:
    # A tick stops starting work at ECONOMY_TICK_BUDGET_S, also between the lines of
    # a batch's results (the next tick resumes; stores are create-only); what is in
    # flight then is one line's upload and its row write, then the scheduler's answer.
    return {
        "ECONOMY_TICK_BUDGET_S": s.economy_tick_budget_s,
        "one image upload": STORAGE_CALL_S,
        **_news(),
        **_sheet_write(s),
        "last call": LAST_CALL_S,
    }


def _export(s: Settings) -> Path:
    # No image starts after EXPORT_DEADLINE_S (shared/services/exports.py); the one
    # in flight then, the manifest and the last chunk of the upload come after it.
    return {
        "EXPORT_DEADLINE_S": s.export_deadline_s,
        "last image": STORAGE_CALL_S,
        "last upload chunk": STORAGE_CALL_S,
    }


def _sheet_rows(s: Settings) -> Path:
    # The rows of a spreadsheet go in one write (or a few, each its own wait), their
    # jobs' news told first.
    return {
        "the spreadsheet's jobs": STORAGE_CALL_S,
        **_news(),
        **_sheet_write(s),
        "Pub/Sub publish wait": PUBLISH_WAIT_S,
    }


LONGEST_PATHS: dict[str, Callable[[Settings], Path]] = {
    "http_api": _http,
    "generate_images": _generate,
    "make_thumbnails": _thumbnail,
    "handle_dead_letters": _dead_letter,
    "run_economy": _economy,
    "export_batch": _export,
    "write_sheet_rows": _sheet_rows,
}


def longest_path(settings: Settings, entry_point: str) -> Path:
    """The steps of ``entry_point``'s longest path and their bounds in seconds."""
    try:
        path = LONGEST_PATHS[entry_point]
    except KeyError:
        raise ConfigError(
            f"no longest path for entry point {entry_point!r} (add it to shared/config/budgets.py)"
        ) from None
    return path(settings)


def longest_path_s(settings: Settings, entry_point: str) -> float:
    return sum(longest_path(settings, entry_point).values())


def check_function_timeout(settings: Settings, entry_point: str) -> None:
    """Fail, naming the settings, unless FUNCTION_TIMEOUT_S exceeds the longest path.

    Nothing to check without a timeout (0, the local stack) or an entry point.
    """
    timeout = settings.function_timeout_s
    if not timeout or not entry_point:
        return
    path = longest_path(settings, entry_point)
    total = sum(path.values())
    if timeout <= total:
        steps = " + ".join(f"{name} {seconds:g} s" for name, seconds in path.items())
        raise ConfigError(
            f"FUNCTION_TIMEOUT_S ({timeout:g} s) must exceed the longest path of "
            f"{entry_point}: {steps} = {total:g} s"
        )
