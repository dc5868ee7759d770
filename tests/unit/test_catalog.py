"""The model catalog and the money: prices by size and lane, estimates, actual cost."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from shared.domain import pricing
from shared.domain.catalog import CATALOG_PATH, LANES, load_catalog, token_cost
from shared.domain.errors import ConfigError
from tests.fakes import make_settings

SHIPPED = json.loads(CATALOG_PATH.read_text())
TODAY = date(2026, 12, 7)


def override(**models: Any) -> str:
    return json.dumps({"models": models})


def test_the_shipped_catalog_is_valid_and_current() -> None:
    catalog = load_catalog()
    assert set(catalog.models) >= {
        "gemini-nano-banana-2.1",
        "gemini-3.1-flash-lite-image",
        "gemini-3-pro-image",
        "gemini-3.1-flash-image",
    }
    current = catalog.models["gemini-nano-banana-2.1"]
    assert current.status == "ga"
    assert current.max_reference_images == 14
    assert (current.max_object_references, current.max_character_references) == (10, 4)
    assert {"1:4", "4:1", "1:8", "8:1", "16:9"} <= set(current.aspect_ratios)
    assert current.image_sizes == ("1K", "2K", "4K")
    lite = catalog.models["gemini-3.1-flash-lite-image"]
    assert (lite.status, lite.image_sizes) == ("ga", ("1K",))


def test_the_default_model_is_generally_available_and_served() -> None:
    settings = make_settings()
    entry = settings.model_entry()
    assert settings.gemini_model == "gemini-nano-banana-2.1"
    assert entry.status == "ga" and entry.served and entry.notice("x", TODAY) is None


@pytest.mark.parametrize("model", sorted(SHIPPED["models"]))
def test_every_entry_says_when_and_against_what_it_was_checked(model: str) -> None:
    entry = load_catalog().models[model]
    assert entry.checked_on == date(2026, 12, 7)
    assert entry.sources and all(len(source) > 20 for source in entry.sources)
    if entry.status in ("deprecated", "shut_down"):
        replacement = load_catalog().models[entry.replacement or ""]
        assert replacement.status == "ga"


def test_going_away_is_said_with_the_replacement_and_the_date() -> None:
    catalog = load_catalog()
    flash = catalog.models["gemini-3.1-flash-image"]
    assert flash.status == "deprecated" and flash.served
    assert flash.notice("gemini-3.1-flash-image", TODAY) == (
        "gemini-3.1-flash-image is deprecated (no shutdown date is announced yet); "
        "move to gemini-nano-banana-2.1"
    )
    dated = catalog.models["gemini-2.5-flash-image"]
    assert "2026-10-02" in (dated.notice("m", date(2026, 9, 1)) or "")
    assert "shuts it down on 2026-10-02" in (dated.notice("m", date(2026, 9, 1)) or "")
    assert "may stop answering any day" in (dated.notice("m", TODAY) or "")
    gone = catalog.models["gemini-3-pro-image-preview"]
    assert not gone.served
    assert gone.notice("gemini-3-pro-image-preview", TODAY) == (
        "gemini-3-pro-image-preview was shut down by Google on 2026-06-25; use gemini-3-pro-image"
    )


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ({"status": "deprecated", "replacement": None}, "names its replacement"),
        ({"status": "deprecated", "replacement": "gemini-9"}, "'gemini-9' is not a served"),
        (
            {"status": "deprecated", "replacement": "gemini-3-pro-image-preview"},
            "is not a served model",
        ),
        ({"status": "retired"}, "status"),
        ({"checked_on": None}, "checked_on"),
        ({"sources": []}, "sources"),
    ],
)
def test_a_status_without_a_served_replacement_is_refused(
    entry: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError, match="MODEL_CATALOG") as info:
        load_catalog(override(**{"gemini-3-pro-image": entry}))
    assert named in str(info.value)


@pytest.mark.parametrize("model", sorted(SHIPPED["models"]))
def test_every_size_has_a_price_in_every_lane_and_batch_is_half(model: str) -> None:
    entry = load_catalog().models[model]
    for size in entry.image_sizes:
        live, batch = (entry.image_price(lane, size) for lane in LANES)
        assert live > 0
        assert batch == live / 2
    live_tokens = entry.token_prices_per_million["live"]
    batch_tokens = entry.token_prices_per_million["batch"]
    assert batch_tokens.input == live_tokens.input / 2
    assert batch_tokens.image_output == live_tokens.image_output / 2


@pytest.mark.parametrize("model", sorted(SHIPPED["models"]))
def test_the_per_image_price_is_what_its_image_tokens_cost(model: str) -> None:
    """The catalog's two views of an image's price agree to the cent."""
    entry = load_catalog().models[model]
    for lane in LANES:
        rate = entry.token_prices_per_million[lane].image_output
        for size in entry.image_sizes:
            from_tokens = Decimal(entry.output_image_tokens[size]) * rate / 1_000_000
            assert abs(from_tokens - entry.image_price(lane, size)) < Decimal("0.001"), (lane, size)


@pytest.mark.parametrize(
    ("lane", "size", "price"),
    [
        ("live", "512", "0.045"),
        ("live", "1K", "0.067"),
        ("live", "2K", "0.101"),
        ("live", "4K", "0.151"),
        ("batch", "512", "0.0225"),
        ("batch", "1K", "0.0335"),
        ("batch", "2K", "0.0505"),
        ("batch", "4K", "0.0755"),
        ("live", None, "0.067"),  # the model's default size
    ],
)
def test_flash_image_prices(lane: str, size: str | None, price: str) -> None:
    entry = load_catalog().models["gemini-3.1-flash-image"]
    assert entry.image_price(lane, size) == Decimal(price)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lane", "size", "price"),
    [
        ("live", "1K", "0.0336"),
        ("live", "2K", "0.0504"),
        ("live", "4K", "0.1134"),
        ("batch", "1K", "0.0168"),
        ("batch", "2K", "0.0252"),
        ("batch", "4K", "0.0567"),
        ("live", None, "0.0336"),
    ],
)
def test_nano_banana_2_1_prices(lane: str, size: str | None, price: str) -> None:
    entry = load_catalog().models["gemini-nano-banana-2.1"]
    assert entry.image_price(lane, size) == Decimal(price)  # type: ignore[arg-type]


def test_an_override_changes_one_price_and_keeps_the_rest() -> None:
    catalog = load_catalog(
        override(**{"gemini-3.1-flash-image": {"price_per_image": {"live": {"4K": "0.16"}}}})
    )
    entry = catalog.models["gemini-3.1-flash-image"]
    assert entry.image_price("live", "4K") == Decimal("0.16")
    assert entry.image_price("live", "2K") == Decimal("0.101")
    assert entry.image_price("batch", "4K") == Decimal("0.0755")


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ({"price_per_image": {"batch": {"4K": None}}}, "gemini-3.1-flash-image.price_per_image"),
        ({"default_image_size": "8K"}, "default_image_size '8K' is not an image_size"),
        ({"image_sizes": ["512", "1K", "2K", "4K", "8K"]}, "no price for size(s) ['8K']"),
        ({"thinking_levels": ["SOME"]}, "thinking_levels ['SOME']"),
        ({"max_reference_images": -1}, "gemini-3.1-flash-image.max_reference_images"),
        ({"token_prices_per_million": {"live": {"input": "-1"}}}, "token_prices_per_million"),
        ({"colour": "blue"}, "gemini-3.1-flash-image.colour"),
    ],
)
def test_a_bad_entry_fails_naming_the_setting_the_model_and_the_field(
    entry: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError, match="MODEL_CATALOG") as info:
        load_catalog(override(**{"gemini-3.1-flash-image": entry}))
    assert named in str(info.value)


@pytest.mark.parametrize("bad", ["{not json", "[1]", '"text"'])
def test_a_catalog_that_is_no_json_object_fails_at_start(bad: str) -> None:
    with pytest.raises(ConfigError, match="MODEL_CATALOG"):
        load_catalog(bad)


def test_a_new_model_needs_a_whole_entry() -> None:
    with pytest.raises(ConfigError, match="gemini-4-image"):
        load_catalog(override(**{"gemini-4-image": {"image_sizes": ["1K"]}}))


# --------------------------------------------------------------------------- money


def test_token_cost_bills_image_text_thinking_and_input_at_their_rates() -> None:
    prices = load_catalog().models["gemini-3-pro-image"].token_prices_per_million["live"]
    usage = {
        "prompt_tokens": 1000,
        "output_tokens": 2010,
        "output_image_tokens": 2000,
        "thought_tokens": 800,
    }
    # 1000 x $2/M + 2000 x $120/M + (10 + 800) x $12/M
    assert token_cost(prices, usage) == Decimal("0.00200") + Decimal("0.24") + Decimal("0.00972")
    assert token_cost(prices, {"total_tokens": 5}) is None


def test_actual_cost_falls_back_to_the_catalog_price_without_tokens() -> None:
    entry = load_catalog().models["gemini-3.1-flash-image"]
    assert pricing.actual_cost(entry, "live", "4K", {}) == Decimal("0.1510")
    assert pricing.actual_cost(entry, "batch", "4K", {}) == Decimal("0.0755")
    with_tokens = {"prompt_tokens": 0, "output_tokens": 2520, "output_image_tokens": 2520}
    assert pricing.actual_cost(entry, "batch", "4K", with_tokens) == Decimal("0.0756")


def test_an_estimate_adds_the_prompt_and_references_as_input_tokens() -> None:
    entry = load_catalog().models["gemini-3-pro-image"]
    estimate = pricing.estimate(entry, "live", "4K", "x" * 400, references=3)
    assert estimate.input_tokens == 100 + 3 * 560
    # 0.24 + 1780 x $2/M = 0.24356
    assert estimate.per_image == Decimal("0.2436")
    assert pricing.estimate(entry, "batch", "4K", "x" * 400, references=3).per_image == Decimal(
        "0.1218"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (None, (0, True)),
        ("https://example.com/ref.PNG", (1, True)),
        ("gs://bucket/refs/a.webp", (1, True)),
        ("https://example.com/pack.zip", (14, False)),
        ("https://example.com/manifest.json?x=1.png", (14, False)),
    ],
)
def test_references_in_a_url(url: str | None, expected: tuple[int, bool]) -> None:
    assert pricing.references_in(url, 14) == expected
