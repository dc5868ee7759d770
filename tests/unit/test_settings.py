"""Settings from the environment (shared/config/settings.py); the env is isolated per test."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from shared.adapters.identity import hash_key
from shared.config.environment import get_settings
from shared.domain.catalog import load_catalog
from shared.domain.errors import ConfigError

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
    assert s.gemini_model == "gemini-nano-banana-2.1"
    assert s.model_entry().price_per_image["live"]["1K"] == Decimal("0.0336")
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


def test_caller_spreadsheets_narrow_the_allowlist_per_caller(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("ALLOWED_SPREADSHEET_IDS", "s1,s2,s3")
    base_env.setenv("CALLER_SPREADSHEETS", " team-a:s1|s9 , team-b:* ")
    cfg = get_settings()
    assert cfg.caller_spreadsheets == {"team-a": ["s1", "s9"], "team-b": ["*"]}
    assert cfg.spreadsheets_for("team-a") == ["s1"]  # never beyond the deployment's
    assert cfg.spreadsheets_for("team-b") == ["s1", "s2", "s3"]
    assert cfg.spreadsheets_for("someone") == ["s1", "s2", "s3"]  # not listed: all
    assert cfg.spreadsheets_for("team-a", admin=True) == ["s1", "s2", "s3"]


@pytest.mark.parametrize("value", ["team-a", "team-a:", ":s1"])
def test_malformed_caller_spreadsheets_entry(base_env: pytest.MonkeyPatch, value: str) -> None:
    base_env.setenv("CALLER_SPREADSHEETS", value)
    with pytest.raises(ConfigError, match="CALLER_SPREADSHEETS") as info:
        get_settings()
    assert "caller:ID1|ID2" in str(info.value)


def test_unknown_model_is_a_config_error_naming_the_setting(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("GEMINI_MODEL", "gemini-9-ultra-image")
    with pytest.raises(ConfigError, match="GEMINI_MODEL 'gemini-9-ultra-image' is not in the"):
        get_settings()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GEMINI_IMAGE_SIZE", "8K", "GEMINI_IMAGE_SIZE '8K': gemini-nano-banana-2.1 accepts"),
        ("GEMINI_ASPECT_RATIO", "7:5", "GEMINI_ASPECT_RATIO '7:5'"),
        ("GEMINI_THINKING_LEVEL", "LOW", "GEMINI_THINKING_LEVEL 'LOW'"),
    ],
)
def test_a_default_the_model_does_not_take_fails_at_start(
    base_env: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    base_env.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        get_settings()


def test_a_catalog_override_can_add_a_model_and_make_it_the_default(
    base_env: pytest.MonkeyPatch,
) -> None:
    entry = load_catalog().models["gemini-3.1-flash-image"].model_dump(mode="json")
    base_env.setenv("MODEL_CATALOG", json.dumps({"models": {"gemini-4-image": entry}}))
    base_env.setenv("GEMINI_MODEL", "gemini-4-image")
    assert get_settings().model_entry().image_sizes == ("512", "1K", "2K", "4K")


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
        ("REFERENCES_PREFIX", "thumbnails/", "outside IMAGES_PREFIX, THUMBNAILS_PREFIX"),
        # Hand-over zips are other callers' images too.
        ("REFERENCES_PREFIX", "exports/", "and EXPORTS_PREFIX"),
        ("SIGNED_URL_REUSE_S", str(12 * 3600 + 1), "SIGNED_URL_REUSE_S"),
    ],
)
def test_hostile_input_settings_that_would_open_a_hole_are_refused(
    base_env: pytest.MonkeyPatch, name: str, value: str, needle: str
) -> None:
    base_env.setenv(name, value)
    with pytest.raises(ConfigError, match=needle):
        get_settings()


def test_a_shut_down_model_is_refused_at_start_naming_its_replacement(
    base_env: pytest.MonkeyPatch,
) -> None:
    base_env.setenv("GEMINI_MODEL", "gemini-3-pro-image-preview")
    with pytest.raises(ConfigError) as info:
        get_settings()
    assert "GEMINI_MODEL 'gemini-3-pro-image-preview'" in str(info.value)
    assert "use gemini-3-pro-image" in str(info.value)
