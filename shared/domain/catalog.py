"""The model catalog: what each image model accepts and what it costs, per lane.

Shipped as ``shared/domain/model_catalog.json``; ``MODEL_CATALOG`` (JSON) is merged
over it, entry by entry and field by field, so a deployment can correct a
price or add a model without a release. Validated when the settings are read:
a bad entry fails at start with the model and the field named.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.domain.errors import ConfigError

CATALOG_PATH = Path(__file__).with_name("model_catalog.json")
# The catalog's lanes: Gemini's standard API, and its Batch API (half price).
Lane = Literal["live", "batch"]
LANES: tuple[Lane, ...] = ("live", "batch")
# What google-genai's ThinkingLevel accepts.
THINKING_LEVELS = ("MINIMAL", "LOW", "MEDIUM", "HIGH", "XHIGH")
MILLION = Decimal(1_000_000)


class TokenPrices(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: Decimal = Field(ge=0)
    image_output: Decimal = Field(ge=0)
    text_output: Decimal = Field(ge=0)


class ModelEntry(BaseModel):
    """One image model: its shapes, reference limit, prices and thinking levels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["ga", "preview", "deprecated"] = "ga"
    aspect_ratios: tuple[str, ...] = Field(min_length=1)
    image_sizes: tuple[str, ...] = Field(min_length=1)
    default_image_size: str
    max_reference_images: int = Field(ge=0, le=100)
    input_tokens_per_reference_image: int = Field(ge=0)
    output_image_tokens: dict[str, int]
    price_per_image: dict[Lane, dict[str, Decimal]]
    token_prices_per_million: dict[Lane, TokenPrices]
    # Empty: the model takes no thinking level. The first is the lowest (the default).
    thinking_levels: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _complete(self) -> ModelEntry:
        if self.default_image_size not in self.image_sizes:
            raise ValueError(f"default_image_size {self.default_image_size!r} is not an image_size")
        for lane in LANES:
            prices = self.price_per_image.get(lane)
            if prices is None:
                raise ValueError(f"price_per_image has no {lane!r} lane")
            missing = [size for size in self.image_sizes if size not in prices]
            if missing:
                raise ValueError(f"price_per_image.{lane} has no price for size(s) {missing}")
            if any(price < 0 for price in prices.values()):
                raise ValueError(f"price_per_image.{lane} has a negative price")
            if lane not in self.token_prices_per_million:
                raise ValueError(f"token_prices_per_million has no {lane!r} lane")
        missing = [size for size in self.image_sizes if size not in self.output_image_tokens]
        if missing:
            raise ValueError(f"output_image_tokens has no count for size(s) {missing}")
        unknown = [level for level in self.thinking_levels if level not in THINKING_LEVELS]
        if unknown:
            raise ValueError(f"thinking_levels {unknown} are not among {list(THINKING_LEVELS)}")
        return self

    def size(self, requested: str | None) -> str:
        """The size an image is made (and priced) at."""
        return requested or self.default_image_size

    def image_price(self, lane: Lane, size: str | None) -> Decimal:
        return self.price_per_image[lane][self.size(size)]

    def thinking_level(self, configured: str) -> str | None:
        """The level to ask for: the configured one if the model takes it, else its lowest."""
        if not self.thinking_levels:
            return None
        return configured if configured in self.thinking_levels else self.thinking_levels[0]


class Catalog(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    models: dict[str, ModelEntry] = Field(min_length=1)

    def entry(self, model: str) -> ModelEntry | None:
        return self.models.get(model)


def _merge(base: Any, override: Any) -> Any:
    """``override`` over ``base``, mapping by mapping (lists and values replace)."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base.get(key), value) if key in base else value
        return merged
    return override


@lru_cache(maxsize=8)
def load_catalog(override: str = "") -> Catalog:
    """The shipped catalog with ``MODEL_CATALOG`` merged over it; ConfigError names
    the setting, the model and the field of anything wrong."""
    shipped = json.loads(CATALOG_PATH.read_text())
    try:
        extra = json.loads(override) if override.strip() else {}
    except ValueError as exc:
        raise ConfigError(f"MODEL_CATALOG is not valid JSON: {exc}") from exc
    if not isinstance(extra, dict):
        raise ConfigError('MODEL_CATALOG must be a JSON object like {"models": {...}}')
    try:
        return Catalog.model_validate(_merge(shipped, extra))
    except ValidationError as exc:
        problems = "; ".join(
            ".".join(str(p) for p in err["loc"])
            + ": "
            + str(err["msg"]).removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise ConfigError(
            f"MODEL_CATALOG (over {CATALOG_PATH.name}) is invalid: {problems}"
        ) from exc


def token_cost(prices: TokenPrices, usage: Mapping[str, int]) -> Decimal | None:
    """What an answer's reported tokens cost, or None when it reported none.

    Image output tokens are billed at the image rate; the rest of the output
    (text) and thinking at the text rate; the prompt (references included) at
    the input rate.
    """
    output = usage.get("output_tokens")
    if output is None:
        return None
    image = usage.get("output_image_tokens", output)
    cost = (
        Decimal(usage.get("prompt_tokens", 0)) * prices.input
        + Decimal(image) * prices.image_output
        + Decimal(max(output - image, 0) + usage.get("thought_tokens", 0)) * prices.text_output
    )
    return cost / MILLION
