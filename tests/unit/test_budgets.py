"""Each function's timeout must exceed its longest path (shared/config/budgets.py).

tests/unit/test_infra.py checks Terraform's timeouts with the same functions.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import main
from shared.adapters.pubsub_publisher import PUBLISH_TIMEOUT_S
from shared.config import budgets
from shared.config.environment import get_settings
from shared.domain.errors import ConfigError
from shared.services.sheet_sync import SheetSync
from tests.fakes import make_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def base_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj")
    monkeypatch.setenv("IMAGES_BUCKET", "imgs-bucket")
    return monkeypatch


def test_every_entry_point_has_a_longest_path() -> None:
    assert set(budgets.LONGEST_PATHS) == set(main.__all__)


def test_default_longest_paths() -> None:
    s = make_settings()
    assert budgets.longest_path_s(s, "generate_images") == pytest.approx(580.25)
    assert budgets.longest_path_s(s, "make_thumbnails") == pytest.approx(310.25)
    assert budgets.longest_path_s(s, "handle_dead_letters") == pytest.approx(160.25)
    assert budgets.longest_path_s(s, "http_api") == pytest.approx(130)
    assert budgets.longest_path_s(s, "export_batch") == pytest.approx(540)


def test_generate_path_counts_the_delivery_and_the_final_sheet_write() -> None:
    path = budgets.longest_path(make_settings(), "generate_images")
    assert path["DELIVERY_DEADLINE_S"] == 360
    assert path["SHEETS_WRITE_TIMEOUT_S"] == 60
    assert path["SHEETS_COALESCE_MS"] == 0.25
    assert path["batch news"] == 2 * budgets.CHAT_POST_TIMEOUT_S
    longer = make_settings(sheets_write_timeout_s=120, delivery_deadline_s=400)
    assert budgets.longest_path_s(longer, "generate_images") == pytest.approx(580.25 + 60 + 40)


@pytest.mark.parametrize(
    "entry_point", ["generate_images", "make_thumbnails", "handle_dead_letters"]
)
def test_every_sheet_writer_counts_the_sheet_write_timeout(entry_point: str) -> None:
    base = budgets.longest_path_s(make_settings(), entry_point)
    longer = budgets.longest_path_s(make_settings(sheets_write_timeout_s=90), entry_point)
    assert longer == pytest.approx(base + 30)


def test_a_timeout_equal_to_the_path_is_refused() -> None:
    s = make_settings(function_timeout_s=160.25)
    with pytest.raises(ConfigError, match="must exceed the longest path of handle_dead_letters"):
        budgets.check_function_timeout(s, "handle_dead_letters")
    budgets.check_function_timeout(make_settings(function_timeout_s=160.5), "handle_dead_letters")


def test_the_former_generate_configuration_is_refused_naming_the_settings() -> None:
    """DELIVERY_DEADLINE_S 540 s with a 540 s function timeout: issue 16, item 4."""
    s = make_settings(delivery_deadline_s=540, function_timeout_s=540)
    with pytest.raises(ConfigError) as info:
        budgets.check_function_timeout(s, "generate_images")
    message = str(info.value)
    for name in ("FUNCTION_TIMEOUT_S", "DELIVERY_DEADLINE_S", "SHEETS_WRITE_TIMEOUT_S"):
        assert name in message


def test_no_timeout_or_no_entry_point_means_nothing_to_check() -> None:
    budgets.check_function_timeout(make_settings(delivery_deadline_s=590), "generate_images")
    budgets.check_function_timeout(make_settings(function_timeout_s=10), "")


def test_an_unknown_entry_point_with_a_timeout_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no longest path for entry point 'resize'"):
        budgets.check_function_timeout(make_settings(function_timeout_s=60), "resize")


def test_get_settings_checks_the_timeout_of_its_own_entry_point(
    base_env: pytest.MonkeyPatch,
) -> None:
    base_env.setenv("FUNCTION_TARGET", "generate_images")
    base_env.setenv("FUNCTION_TIMEOUT_S", "540")
    with pytest.raises(ConfigError, match="DELIVERY_DEADLINE_S 360 s"):
        get_settings()
    base_env.setenv("FUNCTION_TIMEOUT_S", "600")
    get_settings.cache_clear()
    assert get_settings().function_timeout_s == 600
    # The same timeout for the HTTP function: its own, shorter path.
    base_env.setenv("FUNCTION_TARGET", "http_api")
    base_env.setenv("FUNCTION_TIMEOUT_S", "131")
    get_settings.cache_clear()
    get_settings()


def test_the_local_stack_sets_no_timeout(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("FUNCTION_TARGET", "generate_images")
    assert get_settings().function_timeout_s == 0


# ------------------------------------------------------------------ bounds no setting gives
def test_mirrored_bounds_match_the_code_they_describe() -> None:
    wait_s = {f.name: f.default for f in dataclasses.fields(SheetSync)}["wait_s"]
    assert wait_s == budgets.SHEET_ROW_WAIT_S
    assert PUBLISH_TIMEOUT_S == budgets.PUBLISH_WAIT_S
    wiring = (REPO / "functions" / "wiring.py").read_text()
    (sheets_call_s,) = re.findall(r"client\.set_timeout\((\d+)\)", wiring)
    # The attempt in flight at the write deadline: a header read and a write.
    assert 2 * int(sheets_call_s) <= budgets.LAST_SHEETS_ATTEMPT_S


def test_signed_url_lifetime_is_capped_at_twelve_hours(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("SIGNED_URL_TTL_S", str(12 * 3600))
    assert get_settings().signed_url_ttl_s == 43200
    base_env.setenv("SIGNED_URL_TTL_S", str(12 * 3600 + 1))
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="SIGNED_URL_TTL_S"):
        get_settings()
