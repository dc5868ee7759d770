"""Settings from the environment (shared/settings.py); the env is isolated per test."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shared.auth import hash_key
from shared.errors import ConfigError
from shared.settings import get_settings

DIGEST_A = hash_key("key-a")
DIGEST_B = hash_key("key-b")


@pytest.fixture
def base_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj")
    monkeypatch.setenv("IMAGES_BUCKET", "imgs-bucket")
    return monkeypatch


def test_minimal_environment_and_defaults(base_env: pytest.MonkeyPatch) -> None:
    s = get_settings()
    assert (s.google_cloud_project, s.images_bucket) == ("proj", "imgs-bucket")
    assert s.thumbnails_bucket == "imgs-bucket"
    assert (s.images_prefix, s.thumbnails_prefix) == ("images/", "thumbnails/")
    assert s.gemini_model == "gemini-3.1-flash-image"
    assert s.price_per_image() == Decimal("0.067")
    assert s.api_key_hashes == {}
    assert get_settings() is s  # read once per instance


def test_cache_clear_rereads_environment(base_env: pytest.MonkeyPatch) -> None:
    assert get_settings().images_bucket == "imgs-bucket"
    base_env.setenv("IMAGES_BUCKET", "other-bucket")
    get_settings.cache_clear()
    assert get_settings().images_bucket == "other-bucket"


@pytest.mark.parametrize("missing", ["GOOGLE_CLOUD_PROJECT", "IMAGES_BUCKET"])
def test_missing_required_setting_names_the_variable(
    base_env: pytest.MonkeyPatch, missing: str
) -> None:
    base_env.delenv(missing)
    with pytest.raises(ConfigError, match=missing):
        get_settings()


def test_all_missing_settings_named_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        get_settings()
    assert "GOOGLE_CLOUD_PROJECT" in str(info.value)
    assert "IMAGES_BUCKET" in str(info.value)


def test_thumbnails_bucket_override(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("THUMBNAILS_BUCKET", "thumbs")
    assert get_settings().thumbnails_bucket == "thumbs"


def test_api_key_hashes_parsing(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("API_KEY_HASHES", f" alice:{DIGEST_A.upper()} , bob:{DIGEST_B},")
    assert get_settings().api_key_hashes == {"alice": DIGEST_A, "bob": DIGEST_B}


@pytest.mark.parametrize(
    "value", ["alice", f"alice{DIGEST_A}", "alice:abc123", f"alice:{DIGEST_A},bob:short"]
)
def test_malformed_api_key_hashes_entry(base_env: pytest.MonkeyPatch, value: str) -> None:
    base_env.setenv("API_KEY_HASHES", value)
    with pytest.raises(ConfigError, match="API_KEY_HASHES") as info:
        get_settings()
    assert "caller:sha256hex" in str(info.value)


def test_price_table_json(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("PRICE_TABLE", '{"gemini-3.1-flash-image": "0.05", "other-model": 0.1}')
    s = get_settings()
    assert s.price_table == {
        "gemini-3.1-flash-image": Decimal("0.05"),
        "other-model": Decimal("0.1"),
    }
    assert s.price_per_image() == Decimal("0.05")
    assert s.price_per_image("other-model") == Decimal("0.1")


def test_price_table_float_has_no_binary_rounding(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("PRICE_TABLE", '{"gemini-3.1-flash-image": 0.067}')
    assert get_settings().price_per_image() * 25 == Decimal("1.675")


def test_price_table_invalid_json(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("PRICE_TABLE", "{not json")
    with pytest.raises(ConfigError, match="PRICE_TABLE"):
        get_settings()


def test_unknown_model_price_is_config_error(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("GEMINI_MODEL", "gemini-9-ultra-image")
    with pytest.raises(
        ConfigError, match="PRICE_TABLE has no price for model 'gemini-9-ultra-image'"
    ):
        get_settings()


def test_price_per_image_unknown_model(base_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="'nope'"):
        get_settings().price_per_image("nope")


def test_out_of_range_setting_is_named(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("MAX_VARIANTS", "9")
    with pytest.raises(ConfigError, match="MAX_VARIANTS"):
        get_settings()


def test_require_names_missing_settings(base_env: pytest.MonkeyPatch) -> None:
    s = get_settings()
    with pytest.raises(ConfigError) as info:
        s.require("public_base_url", "link_signing_key", "images_bucket")
    assert str(info.value) == "missing setting(s): PUBLIC_BASE_URL, LINK_SIGNING_KEY"


def test_require_returns_settings_when_present(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("GEMINI_API_KEY", "g-key")
    s = get_settings()
    assert s.require("gemini_api_key", "images_bucket") is s


def test_comma_separated_lists(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("ALLOWED_SPREADSHEET_IDS", " sheet-a, ,sheet_b ,")
    base_env.setenv("ADMIN_CALLERS", "root")
    s = get_settings()
    assert s.allowed_spreadsheet_ids == ["sheet-a", "sheet_b"]
    assert s.admin_callers == ["root"]
    assert s.allowed_emails == []


def test_only_upper_case_variables_are_read(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("images_bucket", "lower-case-ignored")
    base_env.setenv("MAX_ITEMS_PER_BATCH", "7")
    s = get_settings()
    assert s.images_bucket == "imgs-bucket"
    assert s.max_items_per_batch == 7


def test_non_numeric_setting_is_named(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("DAILY_IMAGE_CAP", "lots")
    with pytest.raises(ConfigError, match="DAILY_IMAGE_CAP"):
        get_settings()


def test_hostile_input_settings_have_safe_defaults(base_env: pytest.MonkeyPatch) -> None:
    s = get_settings()
    assert s.references_prefix == "refs/"
    assert (s.reference_max_zip_members, s.reference_max_unpacked_bytes) == (64, 0)
    assert (s.id_token_certs_min_refetch_s, s.signed_url_reuse_s) == (60.0, 300)


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("REFERENCES_PREFIX", "refs", "must end with '/'"),
        ("REFERENCES_PREFIX", "images/refs/", "outside IMAGES_PREFIX"),
        ("REFERENCES_PREFIX", "thumbnails/", "outside IMAGES_PREFIX and THUMBNAILS_PREFIX"),
        ("SIGNED_URL_REUSE_S", str(12 * 3600 + 1), "SIGNED_URL_REUSE_S"),
    ],
)
def test_hostile_input_settings_that_would_open_a_hole_are_refused(
    base_env: pytest.MonkeyPatch, name: str, value: str, needle: str
) -> None:
    base_env.setenv(name, value)
    with pytest.raises(ConfigError, match=needle):
        get_settings()
