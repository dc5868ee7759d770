"""Typed configuration: every setting of every function, validated together.

Read once per instance from the environment by ``shared.config.environment``;
a missing or malformed setting fails at start with its name (``ConfigError``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from shared.domain.catalog import Catalog, ModelEntry, load_catalog
from shared.domain.errors import ConfigError

# The SDK's backoff (HttpRetryOptions): initial delay x 2^k plus up to the jitter.
GEMINI_RETRY_INITIAL_DELAY_S = 1.0
GEMINI_RETRY_JITTER_S = 1.0


class Settings(BaseModel):
    """Every setting of every function; each function reads only what it uses.

    A plain pydantic model filled from the environment by ``from_env``: the
    HTTP function's cold start is measured, and pydantic-settings' import (its
    cloud secret providers included) costs about a third of our own imports.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Each field from the variable of its upper-cased name, when set."""
        values = {
            name: environ[name.upper()] for name in cls.model_fields if name.upper() in environ
        }
        return cls.model_validate(values)

    google_cloud_project: str = Field(min_length=1)
    jobs_topic: str = "image-jobs"
    # Where the HTTP function asks for a batch's hand-over zip, and where zips go
    # (outside IMAGES_PREFIX, so they never trigger a thumbnail).
    exports_topic: str = "image-exports"
    # Where rows go to the fleet's one sheet writer ("": each delivery writes its
    # own job's row).
    sheet_rows_topic: str = "image-sheet-rows"
    exports_prefix: str = "exports/"
    # The exporter starts no image after this long; a batch that does not fit
    # fails its export with the reason (the function timeout bounds a delivery).
    export_deadline_s: float = Field(default=420.0, gt=0, le=3400)
    # Images a zip reads ahead, in parallel, while it writes (memory: that many images).
    export_read_ahead: int = Field(default=8, ge=1, le=32)
    images_bucket: str = Field(min_length=3)
    # Where thumbnails go; unset, the images bucket (under THUMBNAILS_PREFIX).
    thumbnails_bucket: str = ""
    images_prefix: str = "images/"
    thumbnails_prefix: str = "thumbnails/"
    firestore_database: str = "(default)"

    # --- Models (issue 15): which one, where its shapes and prices come from
    # (shared/domain/model_catalog.json, with MODEL_CATALOG JSON merged over it), and
    # how to reach it: the Gemini API with an API key, or Vertex AI with the
    # function's service account (VERTEX_BASE_URL: another endpoint, the local stub).
    gemini_model: str = "gemini-nano-banana-2.1"
    model_catalog: str = ""
    gemini_backend: Literal["gemini_api", "vertex"] = "gemini_api"
    gemini_api_key: str = ""
    vertex_location: str = "global"
    vertex_base_url: str = ""
    # Empty: the lowest level the model accepts (fastest, fewest thinking tokens).
    gemini_thinking_level: str = ""
    # How long a model lookup (the preflight of every batch) is trusted.
    model_check_ttl_s: float = Field(default=300.0, ge=0)
    max_items_per_batch: int = Field(default=500, ge=1)
    max_variants: int = Field(default=4, ge=1, le=8)
    max_prompt_chars: int = Field(default=4000, ge=1)
    generate_concurrency: int = Field(default=4, ge=1)
    gemini_timeout_s: float = Field(default=120.0, gt=0)
    gemini_retry_attempts: int = Field(default=2, ge=1, le=10)
    # The longest a job may wait in all (quota pauses included) before it fails with
    # the reason; under Pub/Sub's 100 delivery attempts at up to 600 s apart (~16 h).
    max_event_age_s: int = Field(default=12 * 3600, ge=60)
    claim_wait_s: float = Field(default=240.0, ge=0)
    # A variant's claim (a lease in the job store) lives this long unless its holder
    # renews it, which it does every third of it while it works: a holder that
    # stopped is taken over within this long.
    claim_lease_s: float = Field(default=15.0, ge=3, le=600)
    reference_max_bytes: int = Field(default=7 * 1024 * 1024, ge=1)
    # This deployment's own cap; the model's catalog limit applies too.
    reference_max_images: int = Field(default=14, ge=0)

    # --- Generation (issue 4): image settings, time budget, reference packs.
    # Image shape for jobs that name none ("" leaves it to the model).
    # (the model's catalog entry says which it accepts; checked at start).
    gemini_aspect_ratio: str = ""
    gemini_image_size: str = ""
    # Time arithmetic of one push delivery (see ``gemini_worst_case_s``):
    #   attempts x timeout + backoff delays <= GEMINI_BUDGET_S < DELIVERY_DEADLINE_S,
    #   DELIVERY_DEADLINE_S <= push ack deadline (600 s), and DELIVERY_DEADLINE_S plus
    #   the last upload and the final sheet write < the function timeout (shared/config/budgets.py).
    # The timeout bounds each wait of an attempt (connect, send, answer); Gemini sends
    # its answer in one piece, so in practice it bounds the attempt.
    # Defaults: 2 x 120 s + 2 s = 242 s <= 280 s < 360 s. A variant starts its Gemini
    # call only while GEMINI_BUDGET_S remain before the delivery deadline, so no call
    # outlives the delivery; its claim is renewed while the call runs
    # (``claim_lease_s``); what does not fit is released and left to Pub/Sub.
    gemini_retry_max_delay_s: float = Field(default=8.0, ge=0)
    gemini_budget_s: float = Field(default=280.0, gt=0)
    delivery_deadline_s: float = Field(default=360.0, gt=0, le=600)
    reference_timeout_s: float = Field(default=20.0, gt=0)
    reference_max_redirects: int = Field(default=3, ge=0, le=10)
    image_max_pixels: int = Field(default=40_000_000, ge=1)
    reference_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    reference_cache_fresh_s: float = Field(default=60.0, ge=0)

    # --- Quotas and failures (issue 12). Waiting is not failing: a variant fails
    # after GEMINI_FAILURE_BUDGET real failed attempts (Gemini errors other than
    # quota, timeouts, an instance that died mid-call, a reference pack not read in
    # time), however many deliveries it took; MAX_EVENT_AGE_S bounds the waiting.
    # GEMINI_IMAGES_PER_MINUTE paces the whole fleet's calls of a model just under
    # the project's quota (0: no pace; refusals still close the shared gate until
    # Gemini's RetryInfo delay).
    gemini_failure_budget: int = Field(default=3, ge=1, le=20)
    gemini_images_per_minute: float = Field(default=0.0, ge=0, le=100_000)
    # The longest one delivery waits in-process for a slot; longer waits hand the
    # message back to Pub/Sub (never counted as a failure).
    quota_wait_s: float = Field(default=120.0, ge=0)

    # --- Economy lane (issue 13): Gemini's Batch API, half price, within 24 hours.
    # A scheduled tick (Cloud Scheduler) submits pending economy variants in batches
    # of at most ECONOMY_BATCH_MAX_REQUESTS (inline when the requests and the images
    # they bring back fit in ECONOMY_INLINE_MAX_BYTES, else as a JSONL file) and
    # collects finished batches; what an expired, failed or cancelled batch did not
    # make goes to the live lane or fails (ECONOMY_ON_EXPIRY).
    economy_batch_max_requests: int = Field(default=200, ge=1, le=10_000)
    economy_inline_max_bytes: int = Field(default=5 * 1024 * 1024, ge=0, le=15 * 1024 * 1024)
    economy_on_expiry: Literal["live", "fail"] = "live"
    economy_lease_s: float = Field(default=300.0, gt=0)
    economy_tick_budget_s: float = Field(default=240.0, gt=0)

    api_key_hashes: dict[str, str] = Field(default_factory=dict)
    id_token_audiences: list[str] = Field(default_factory=list)
    id_token_certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"
    allowed_emails: list[str] = Field(default_factory=list)
    allowed_domains: list[str] = Field(default_factory=list)
    admin_callers: list[str] = Field(default_factory=list)
    allowed_spreadsheet_ids: list[str] = Field(default_factory=list)
    # Narrows the allowlist per caller: "caller-a:ID1|ID2,caller-b:*".
    caller_spreadsheets: dict[str, list[str]] = Field(default_factory=dict)
    daily_image_cap: int = Field(default=1000, ge=0)
    daily_cost_cap_usd: Decimal = Field(default=Decimal("100"), ge=0)
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    public_base_url: str = ""
    link_signing_key: str = ""
    # At most 12 hours: a V4 signature made through IAM signBlob (as in Cloud
    # Functions) may stop working after that, when Google rotates the key behind it.
    signed_url_ttl_s: int = Field(default=900, ge=60, le=12 * 3600)
    signing_credentials_file: str = ""

    sheets_api_url: str = ""
    # A Drive API endpoint other than Google's (the dev stack's stub); "" in production.
    drive_api_url: str = ""
    # --- Word when a batch ends (issue 25): a Google Chat space's incoming webhook
    # (a secret; "" sends none), and the share of a batch's jobs that may fail
    # before the team is told while the rest still run.
    chat_webhook_url: str = Field(default="", repr=False)
    notify_failure_share: float = Field(default=0.2, ge=0, le=1)
    thumbnail_size: int = Field(default=256, ge=16, le=2048)

    # --- Hostile inputs (issue 11). Each default is the safe choice.
    # gs:// references any caller may use: objects of the images bucket under
    # this prefix ("" for none). Generated images are never under it.
    references_prefix: str = "refs/"
    # Zip reference packs: how many entries a pack may have, and how many bytes
    # all the members read from it may unpack to (0: REFERENCE_MAX_BYTES x
    # REFERENCE_MAX_IMAGES), counted as they are inflated, not as declared.
    reference_max_zip_members: int = Field(default=64, ge=1, le=10_000)
    reference_max_unpacked_bytes: int = Field(default=0, ge=0)
    # Fewest seconds between two fetches of Google's ID-token certificates:
    # unknown key ids in between are refused without a fetch.
    id_token_certs_min_refetch_s: float = Field(default=60.0, ge=1, le=3600)
    # Seconds one signed URL of an object is handed out again per instance (0:
    # sign on every hit). It is signed to live SIGNED_URL_TTL_S + this, so every
    # redirect still lives SIGNED_URL_TTL_S; the window shrinks where the sum would
    # pass 12 hours (a signature made through IAM signBlob may stop working then).
    signed_url_reuse_s: int = Field(default=300, ge=0, le=12 * 3600)

    # Thumbnails and sheet writes (issue 5). The sheet limits are per instance:
    # the Sheets quota is 60 writes a minute per service account, shared by
    # all instances of a function, so SHEETS_WRITES_PER_MINUTE should be about
    # 60 / max_instances; SHEETS_COALESCE_MS gathers concurrent row updates of
    # one spreadsheet into one values:batchUpdate.
    thumbnail_format: Literal["jpeg", "webp"] = "jpeg"
    thumbnail_quality: int = Field(default=85, ge=1, le=100)
    thumbnail_max_pixels: int = Field(default=50_000_000, ge=1_000_000, le=500_000_000)
    thumbnail_decode_slots: int = Field(default=2, ge=1, le=64)
    sheets_writes_per_minute: int = Field(default=60, ge=1, le=600)
    # The fleet's pace of Sheets writes, shared by every instance through Firestore
    # (0: none, each instance keeps to SHEETS_WRITES_PER_MINUTE alone).
    sheets_fleet_writes_per_minute: float = Field(default=0, ge=0, le=600)
    sheets_coalesce_ms: int = Field(default=250, ge=0, le=5000)
    sheets_write_timeout_s: float = Field(default=60.0, ge=1, le=300)

    # The function's own timeout (Terraform's timeout_seconds); at start it must
    # exceed the function's longest path (shared/config/budgets.py). 0: not known, not checked.
    function_timeout_s: float = Field(default=0.0, ge=0, le=3600)

    @field_validator(
        "id_token_audiences",
        "allowed_emails",
        "allowed_domains",
        "admin_callers",
        "allowed_spreadsheet_ids",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("caller_spreadsheets", mode="before")
    @classmethod
    def _parse_caller_spreadsheets(cls, value: object) -> object:
        if isinstance(value, str):
            parsed: dict[str, list[str]] = {}
            for entry in (item.strip() for item in value.split(",") if item.strip()):
                caller, sep, ids = entry.partition(":")
                listed = [i.strip() for i in ids.split("|") if i.strip()]
                if not sep or not caller.strip() or not listed:
                    raise ValueError("expected 'caller:ID1|ID2' entries separated by commas")
                parsed[caller.strip()] = listed
            return parsed
        return value

    @field_validator("chat_webhook_url")
    @classmethod
    def _chat_webhook(cls, value: str) -> str:
        # Google's Chat endpoint, or a local stand-in on loopback (the dev stack).
        value = value.strip()
        local = ("http://127.0.0.1:", "http://localhost:", "http://[::1]:")
        if value and not value.startswith(("https://chat.googleapis.com/", *local)):
            raise ValueError(
                "must be a Google Chat incoming webhook (https://chat.googleapis.com/v1/"
                "spaces/...) or a local stand-in on loopback"
            )
        return value

    def spreadsheets_for(self, caller: str | None, admin: bool = False) -> list[str]:
        """The spreadsheets ``caller`` may write ("*": any): the deployment's
        allowlist, narrowed by CALLER_SPREADSHEETS for a caller listed there (an
        admin is not narrowed)."""
        base = self.allowed_spreadsheet_ids
        own = self.caller_spreadsheets.get(caller or "") if not admin else None
        if own is None or "*" in own:
            return list(base)
        if "*" in base:
            return list(own)
        return [sheet for sheet in own if sheet in base]

    @field_validator("api_key_hashes", mode="before")
    @classmethod
    def _parse_key_hashes(cls, value: object) -> object:
        # Format: "caller-a:sha256hex,caller-b:sha256hex" (one entry per caller).
        if isinstance(value, str):
            pairs = [item.strip() for item in value.split(",") if item.strip()]
            parsed: dict[str, str] = {}
            for pair in pairs:
                caller, sep, digest = pair.partition(":")
                if not sep or len(digest) != 64:
                    raise ValueError("expected 'caller:sha256hex' entries separated by commas")
                parsed[caller] = digest.lower()
            return parsed
        return value

    @field_validator("thumbnail_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _thumbnails_default_to_images(cls, values: object) -> object:
        if isinstance(values, dict) and not values.get("thumbnails_bucket"):
            return {**values, "thumbnails_bucket": values.get("images_bucket", "")}
        return values

    @model_validator(mode="after")
    def _thumbnails_outside_images(self) -> Settings:
        # A thumbnail (or a zip) under the notified prefix would trigger a thumbnail.
        if self.thumbnails_bucket == self.images_bucket and self.thumbnails_prefix.startswith(
            self.images_prefix
        ):
            raise ValueError("THUMBNAILS_PREFIX must lie outside IMAGES_PREFIX in the same bucket")
        if self.exports_prefix.startswith(self.images_prefix):
            raise ValueError("EXPORTS_PREFIX must lie outside IMAGES_PREFIX")
        return self

    @model_validator(mode="after")
    def _hostile_input_limits(self) -> Settings:
        prefix = self.references_prefix
        if prefix and not prefix.endswith("/"):
            raise ValueError("REFERENCES_PREFIX must end with '/' (or be empty)")
        # Readable by every caller: it must not reach generated images, thumbnails or
        # hand-over zips.
        others = [self.images_prefix, self.exports_prefix]
        if (self.thumbnails_bucket or self.images_bucket) == self.images_bucket:
            others.append(self.thumbnails_prefix)
        if prefix and any(o.startswith(prefix) or prefix.startswith(o) for o in others):
            raise ValueError(
                "REFERENCES_PREFIX must lie outside IMAGES_PREFIX, THUMBNAILS_PREFIX "
                "and EXPORTS_PREFIX"
            )
        return self

    @model_validator(mode="after")
    def _gemini_fits_the_delivery(self) -> Settings:
        worst = self.gemini_worst_case_s
        if worst > self.gemini_budget_s:
            raise ValueError(
                f"GEMINI_RETRY_ATTEMPTS x GEMINI_TIMEOUT_S + backoff delays = {worst:g} s "
                f"exceeds GEMINI_BUDGET_S ({self.gemini_budget_s:g} s)"
            )
        if self.gemini_budget_s >= self.delivery_deadline_s:
            raise ValueError(
                f"GEMINI_BUDGET_S ({self.gemini_budget_s:g} s) must be below "
                f"DELIVERY_DEADLINE_S ({self.delivery_deadline_s:g} s)"
            )
        return self

    @property
    def gemini_worst_case_s(self) -> float:
        """Longest one Gemini call can take: every SDK attempt runs to its timeout
        and every backoff delay is at its cap (tenacity's exponential jitter)."""
        delays = sum(
            min(
                self.gemini_retry_max_delay_s,
                GEMINI_RETRY_INITIAL_DELAY_S * 2.0**k + GEMINI_RETRY_JITTER_S,
            )
            for k in range(self.gemini_retry_attempts - 1)
        )
        return self.gemini_retry_attempts * self.gemini_timeout_s + delays

    @property
    def claim_renew_s(self) -> float:
        """How often a holder renews its claim: two renewals may fail before it runs out."""
        return self.claim_lease_s / 3

    @property
    def catalog(self) -> Catalog:
        """The model catalog (validated once per process and override)."""
        return load_catalog(self.model_catalog)

    def model_entry(self, model: str | None = None) -> ModelEntry:
        """The catalog entry of ``model`` (the configured one by default)."""
        name = model or self.gemini_model
        entry = self.catalog.entry(name)
        if entry is None:
            raise ConfigError(
                f"GEMINI_MODEL {name!r} is not in the model catalog "
                f"(models: {', '.join(sorted(self.catalog.models))}): choose one of them, "
                "or add it with MODEL_CATALOG"
            )
        return entry

    def shape_for(
        self, model: str, aspect_ratio: str | None, image_size: str | None
    ) -> tuple[str | None, str | None]:
        """A job's aspect ratio and size as asked for: its own, else the configured
        GEMINI_ASPECT_RATIO and GEMINI_IMAGE_SIZE where ``model`` takes them (a row
        naming another model), else None (the model's default)."""
        entry = self.catalog.entry(model)
        ratio, size = self.gemini_aspect_ratio or None, self.gemini_image_size or None
        if entry is not None:
            ratio = ratio if ratio in entry.aspect_ratios else None
            size = size if size in entry.image_sizes else None
        return aspect_ratio or ratio, image_size or size

    def reference_limit(self, model: str) -> int:
        """Reference images one call of ``model`` takes: its catalog entry's limit,
        within this deployment's own cap (REFERENCE_MAX_IMAGES)."""
        entry = self.catalog.entry(model)
        cap = self.reference_max_images
        return min(entry.max_reference_images, cap) if entry is not None else cap

    def require(self, *names: str) -> Settings:
        """Fail with the setting's name when a function needs one that is empty."""
        missing = [name.upper() for name in names if not getattr(self, name)]
        if missing:
            raise ConfigError(f"missing setting(s): {', '.join(missing)}")
        return self


def check_model_settings(settings: Settings) -> None:
    """The configured model is in the catalog, still served, and takes the configured
    shape and level."""
    entry = settings.model_entry()
    model = settings.gemini_model
    if not entry.served:
        raise ConfigError(
            f"GEMINI_MODEL {model!r}: {entry.notice(model, date.today())} "
            "(Terraform: models.gemini_model)"
        )
    for name, value, accepted in (
        ("GEMINI_ASPECT_RATIO", settings.gemini_aspect_ratio, entry.aspect_ratios),
        ("GEMINI_IMAGE_SIZE", settings.gemini_image_size, entry.image_sizes),
        ("GEMINI_THINKING_LEVEL", settings.gemini_thinking_level, entry.thinking_levels),
    ):
        if value and value not in accepted:
            takes = ", ".join(accepted) or "none"
            raise ConfigError(f"{name} {value!r}: {model} accepts {takes}")
