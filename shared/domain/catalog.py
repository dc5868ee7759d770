"""The model catalog: what each image model accepts, what it costs per lane, and
whether Google still serves it (``status``, the ``replacement`` Google names, the
announced ``shutdown_date``), with the date and sources each entry was checked on.

Shipped as ``shared/domain/model_catalog.json``; ``MODEL_CATALOG`` (JSON) is merged
over it, entry by entry and field by field, so a deployment can correct a
price or add a model without a release. Validated when the settings are read:
a bad entry fails at start with the model and the field named.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date
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
# Whether Google serves a model: generally available, in preview, deprecated (still
# served; Google names a replacement and perhaps a shutdown date), or shut down.
ModelStatus = Literal["ga", "preview", "deprecated", "shut_down"]


class TokenPrices(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: Decimal = Field(ge=0)
    image_output: Decimal = Field(ge=0)
    text_output: Decimal = Field(ge=0)


class ModelEntry(BaseModel):
    """One image model: its shapes, reference limit, prices and thinking levels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = ""
    status: ModelStatus = "ga"
    replacement: str | None = None
    shutdown_date: date | None = None
    aspect_ratios: tuple[str, ...] = Field(min_length=1)
    image_sizes: tuple[str, ...] = Field(min_length=1)
    default_image_size: str
    max_reference_images: int = Field(ge=0, le=100)
    # Where Google counts kinds apart (max_reference_images still bounds them in all).
    max_object_references: int | None = Field(default=None, ge=0)
    max_character_references: int | None = Field(default=None, ge=0)
    input_tokens_per_reference_image: int = Field(ge=0)
    output_image_tokens: dict[str, int]
    price_per_image: dict[Lane, dict[str, Decimal]]
    token_prices_per_million: dict[Lane, TokenPrices]
    # Empty: the model takes no thinking level. The first is the lowest (the default).
    thinking_levels: tuple[str, ...] = ()
    # When and against what the entry was checked.
    checked_on: date
    sources: tuple[str, ...] = Field(min_length=1)

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
        if self.status in ("deprecated", "shut_down") and not self.replacement:
            raise ValueError(f"a {self.status} model names its replacement")
        return self

    @property
    def served(self) -> bool:
        """Google still answers calls of the model (deprecated ones too, for now)."""
        return self.status != "shut_down"

    def notice(self, name: str, today: date) -> str | None:
        """What a team should hear about a model going away (None: it is not)."""
        if self.status == "shut_down":
            when = f" on {self.shutdown_date.isoformat()}" if self.shutdown_date else ""
            return f"{name} was shut down by Google{when}; use {self.replacement}"
        if self.status != "deprecated":
            return None
        if self.shutdown_date is None:
            when = "no shutdown date is announced yet"
        elif self.shutdown_date > today:
            when = f"Google shuts it down on {self.shutdown_date.isoformat()}"
        else:
            when = (
                f"Google announced its shutdown for {self.shutdown_date.isoformat()}: "
                "it may stop answering any day"
            )
        return f"{name} is deprecated ({when}); move to {self.replacement}"

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

    @model_validator(mode="after")
    def _replacements_are_models(self) -> Catalog:
        for name, entry in self.models.items():
            target = self.models.get(entry.replacement or "")
            if entry.replacement and (target is None or not target.served):
                raise ValueError(
                    f"models.{name}.replacement {entry.replacement!r} is not a served model "
                    "of the catalog"
                )
        return self

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
