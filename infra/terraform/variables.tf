# Inputs, one variable per concern. An object's attributes that are function
# settings carry the setting's name in lower case (generation.gemini_timeout_s is
# GEMINI_TIMEOUT_S), and their defaults are the code's defaults
# (shared/config/settings.py); tests/unit/test_infra.py checks both.

# ---------------------------------------------------------------- project
variable "project_id" {
  type        = string
  description = "ID of the Google Cloud project to deploy into (not a domain-scoped project: the HTTP function's URL is derived from it)."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a plain project ID: 6-30 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  type        = string
  description = "Region of the functions (and, unless overridden, of the buckets and the Firestore database)."
  default     = "us-central1"
}

variable "name_prefix" {
  type        = string
  description = "Prefix of the function, service account, secret and source bucket names (topics and log metrics have fixed or separately set names)."
  default     = "imgpipe"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,11}$", var.name_prefix))
    error_message = "name_prefix must be 2-12 lowercase letters, digits or hyphens, starting with a letter (service account IDs are at most 30 characters)."
  }
}

variable "labels" {
  type        = map(string)
  description = "Labels put on every resource that takes labels (provider default_labels)."
  default = {
    app = "sheets-image-pipeline"
  }
}

variable "enable_apis" {
  type        = bool
  description = "Enable the required Google APIs with google_project_service (set false where a platform team enables them)."
  default     = true
}

variable "first_apply_waits" {
  type = object({
    apis        = optional(string, "60s")
    iam         = optional(string, "180s")
    log_metrics = optional(string, "600s")
  })
  description = "Waits for Google's eventual consistency, each taken once (on the first apply, or when what it waits for changes): apis after enabling APIs, iam after the grants the function builds and secret reads need (IAM: typically 2 minutes, up to 7), log_metrics between the log-based metrics and the alert policy on them (up to 10 minutes)."
  default     = {}

  validation {
    condition     = alltrue([for wait in values(var.first_apply_waits) : can(regex("^[0-9]+[sm]$", wait))])
    error_message = "Each wait is a duration in seconds or minutes, such as \"60s\" or \"10m\"."
  }
}

variable "source_archive_path" {
  type        = string
  description = "Path of a pre-built source zip (Cloud Build's package step). Empty: Terraform zips main.py, requirements.txt, functions/ and shared/ itself."
  default     = ""
}

# ---------------------------------------------------------------- storage
variable "storage" {
  type = object({
    images_bucket_name                = optional(string, "")
    thumbnails_bucket_name            = optional(string, "")
    location                          = optional(string, "")
    images_prefix                     = optional(string, "images/")
    thumbnails_prefix                 = optional(string, "thumbnails/")
    exports_prefix                    = optional(string, "exports/")
    noncurrent_version_retention_days = optional(number, 30)
  })
  description = "Buckets: images_bucket_name (IMAGES_BUCKET; empty: \"<project_id>-images\"), thumbnails_bucket_name (a separate THUMBNAILS_BUCKET; empty: the images bucket), location (empty: the region), images_prefix (IMAGES_PREFIX, the only prefix the bucket notification fires for), thumbnails_prefix (THUMBNAILS_PREFIX, outside images_prefix), exports_prefix (EXPORTS_PREFIX: where the batches' hand-over zips go in the images bucket, outside images_prefix), noncurrent_version_retention_days (how long deleted object versions are kept)."
  default     = {}

  validation {
    condition     = alltrue([for prefix in [var.storage.images_prefix, var.storage.thumbnails_prefix, var.storage.exports_prefix] : can(regex("^[A-Za-z0-9_.-]+/$", prefix))])
    error_message = "images_prefix, thumbnails_prefix and exports_prefix must each be one path segment ending with \"/\"."
  }

  validation {
    condition     = !startswith(var.storage.exports_prefix, var.storage.images_prefix)
    error_message = "exports_prefix must lie outside images_prefix, or zips would trigger the thumbnail function."
  }

  validation {
    condition     = var.storage.thumbnails_bucket_name != "" || !startswith(var.storage.thumbnails_prefix, var.storage.images_prefix)
    error_message = "thumbnails_prefix must lie outside images_prefix in the images bucket, or thumbnails would trigger the thumbnail function."
  }

  validation {
    condition     = var.storage.noncurrent_version_retention_days >= 1
    error_message = "noncurrent_version_retention_days must be at least 1."
  }
}

# ---------------------------------------------------------------- Pub/Sub
variable "pubsub" {
  type = object({
    jobs_topic                  = optional(string, "image-jobs")
    gcs_events_topic            = optional(string, "image-gcs-events")
    dead_letter_topic           = optional(string, "image-jobs-dead-letter")
    exports_topic               = optional(string, "image-exports")
    sheet_rows_topic            = optional(string, "image-sheet-rows")
    ack_deadline_seconds        = optional(number, 600)
    retry_minimum_backoff       = optional(string, "10s")
    retry_maximum_backoff       = optional(string, "600s")
    max_delivery_attempts       = optional(number, 100)
    message_retention_duration  = optional(string, "604800s")
    dead_letter_topic_retention = optional(string, "604800s")
  })
  description = "Topics and push subscriptions: jobs_topic (JOBS_TOPIC), gcs_events_topic (the bucket notifications), dead_letter_topic; exports_topic (EXPORTS_TOPIC: the HTTP function asks the export function for a batch's zip there); sheet_rows_topic (SHEET_ROWS_TOPIC: the functions that change jobs queue their spreadsheets there for the one sheet writer); ack_deadline_seconds (for push also the request timeout, so at least each pushed function's timeout); retry_minimum_backoff/retry_maximum_backoff (redelivery backoff); max_delivery_attempts (before a message is dead-lettered: high, because a job waiting for the Gemini quota hands its message back often and our own accounting ends jobs, by GEMINI_FAILURE_BUDGET and MAX_EVENT_AGE_S; the dead-letter topic only catches poison messages and bugs); message_retention_duration (subscriptions); dead_letter_topic_retention (for replay with a seek)."
  default     = {}

  validation {
    condition     = var.pubsub.ack_deadline_seconds >= 10 && var.pubsub.ack_deadline_seconds <= 600
    error_message = "ack_deadline_seconds must be between 10 and 600."
  }

  validation {
    condition = alltrue([
      for backoff in [var.pubsub.retry_minimum_backoff, var.pubsub.retry_maximum_backoff] :
      can(regex("^[0-9]+s$", backoff)) && try(tonumber(trimsuffix(backoff, "s")) <= 600, false)
    ])
    error_message = "retry_minimum_backoff and retry_maximum_backoff must be durations in seconds between \"0s\" and \"600s\"."
  }

  validation {
    condition     = try(tonumber(trimsuffix(var.pubsub.retry_minimum_backoff, "s")) <= tonumber(trimsuffix(var.pubsub.retry_maximum_backoff, "s")), false)
    error_message = "retry_minimum_backoff must not exceed retry_maximum_backoff."
  }

  validation {
    condition     = var.pubsub.max_delivery_attempts >= 5 && var.pubsub.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be between 5 and 100."
  }
}

# ---------------------------------------------------------------- Firestore
variable "firestore" {
  type = object({
    location        = optional(string, "")
    create_database = optional(bool, true)
  })
  description = "The (default) database: location (a region or a multi-region such as nam5; empty: the region); create_database (false if the project already has one, or import it)."
  default     = {}
}

# ---------------------------------------------------------------- HTTP API: who may call, what a batch may ask
variable "access" {
  type = object({
    allowed_spreadsheet_ids = list(string)
    id_token_audiences      = optional(list(string), [])
    allowed_emails          = optional(list(string), [])
    allowed_domains         = optional(list(string), [])
    admin_callers           = optional(list(string), [])
    caller_spreadsheets     = optional(map(list(string)), {})
    public_base_url         = optional(string, "")
    public_invoker          = optional(string, "allUsers")
    # Issue 11: at most one fetch of Google's certificates this often.
    id_token_certs_min_refetch_s = optional(number, 60)
  })
  description = "Callers of the HTTP function: id_token_certs_min_refetch_s (ID_TOKEN_CERTS_MIN_REFETCH_S: fewest seconds between two fetches of Google's ID-token certificates, so unknown key ids cannot make every request fetch them), allowed_spreadsheet_ids (ALLOWED_SPREADSHEET_IDS, required, [\"*\"] = any; the code refuses all when empty), id_token_audiences (ID_TOKEN_AUDIENCES: the Apps Script's OAuth client ID), allowed_emails/allowed_domains (ALLOWED_EMAILS/ALLOWED_DOMAINS for Google ID tokens), admin_callers (ADMIN_CALLERS), caller_spreadsheets (CALLER_SPREADSHEETS: per caller, the spreadsheets it may write, within allowed_spreadsheet_ids; a caller not listed may write all of them), public_base_url (PUBLIC_BASE_URL; empty: https://REGION-PROJECT.cloudfunctions.net/FUNCTION), public_invoker (\"allUsers\": Terraform grants allUsers the invoker role; \"none\": no such grant, for organisations whose domain-restricted sharing forbids it, see README.md)."

  validation {
    condition     = length(var.access.allowed_spreadsheet_ids) > 0 && alltrue([for id in var.access.allowed_spreadsheet_ids : can(regex("^([A-Za-z0-9_-]+|\\*)$", id))])
    error_message = "allowed_spreadsheet_ids must list at least one spreadsheet ID (or \"*\"), without commas."
  }

  validation {
    condition = alltrue([
      for caller, ids in var.access.caller_spreadsheets :
      can(regex("^[^,:|]+$", caller)) && length(ids) > 0 && alltrue([for id in ids : can(regex("^([A-Za-z0-9_-]+|\\*)$", id))])
    ])
    error_message = "caller_spreadsheets maps a caller (no , : or |) to at least one spreadsheet ID (or \"*\")."
  }

  validation {
    condition     = var.access.public_base_url == "" || can(regex("^https://[^/]+(/.*[^/])?$", var.access.public_base_url))
    error_message = "public_base_url must be empty or an https URL without a trailing slash."
  }

  validation {
    condition     = contains(["allUsers", "none"], var.access.public_invoker)
    error_message = "public_invoker must be \"allUsers\" or \"none\"."
  }
}

variable "models" {
  type = object({
    gemini_model          = optional(string, "gemini-nano-banana-2.1")
    model_catalog         = optional(string, "")
    gemini_backend        = optional(string, "gemini_api")
    vertex_location       = optional(string, "global")
    gemini_thinking_level = optional(string, "")
    model_check_ttl_s     = optional(number, 300)
  })
  description = "The image model and how it is reached: gemini_model (GEMINI_MODEL, a model of shared/domain/model_catalog.json or of model_catalog), model_catalog (MODEL_CATALOG: JSON merged over the shipped catalog, e.g. to correct a price or add a model), gemini_backend (GEMINI_BACKEND: gemini_api with the Gemini API key secret, or vertex with the functions' service accounts and roles/aiplatform.user, no key), vertex_location (VERTEX_LOCATION), gemini_thinking_level (GEMINI_THINKING_LEVEL; empty: the model's lowest), model_check_ttl_s (MODEL_CHECK_TTL_S: how long the batch preflight trusts a model lookup)."
  default     = {}

  validation {
    condition = contains(
      keys(merge(
        jsondecode(file("${path.module}/../../shared/domain/model_catalog.json")).models,
        try(jsondecode(var.models.model_catalog).models, {}),
      )),
      var.models.gemini_model,
    )
    error_message = "gemini_model (GEMINI_MODEL) must be a model of shared/domain/model_catalog.json or of model_catalog (MODEL_CATALOG); GET /models lists them."
  }

  validation {
    condition = !contains(
      [for name, entry in merge(
        jsondecode(file("${path.module}/../../shared/domain/model_catalog.json")).models,
        try(jsondecode(var.models.model_catalog).models, {}),
      ) : name if try(entry.status, "ga") == "shut_down"],
      var.models.gemini_model,
    )
    error_message = "gemini_model (GEMINI_MODEL) names a model Google shut down; the catalog's replacement field names the model to use instead."
  }

  validation {
    condition     = contains(["gemini_api", "vertex"], var.models.gemini_backend)
    error_message = "gemini_backend must be \"gemini_api\" or \"vertex\"."
  }

  validation {
    condition     = var.models.model_catalog == "" || can(keys(jsondecode(var.models.model_catalog).models))
    error_message = "model_catalog must be empty or a JSON object like {\"models\": {...}}."
  }

  validation {
    condition     = var.models.model_check_ttl_s >= 0
    error_message = "model_check_ttl_s must not be negative."
  }
}

variable "intake" {
  type = object({
    max_items_per_batch = optional(number, 500)
    max_variants        = optional(number, 4)
    max_prompt_chars    = optional(number, 4000)
    daily_image_cap     = optional(number, 1000)
    daily_cost_cap_usd  = optional(string, "100")
    signed_url_ttl_s    = optional(number, 900)
    signed_url_reuse_s  = optional(number, 300)
  })
  description = "What the HTTP function accepts: max_items_per_batch, max_variants, max_prompt_chars, daily_image_cap, daily_cost_cap_usd (a decimal string), signed_url_ttl_s (SIGNED_URL_TTL_S: lifetime of the signed URLs the asset links redirect to, at most 12 hours), signed_url_reuse_s (SIGNED_URL_REUSE_S: how long an instance hands out the same signed URL for an object, so one leaked link cannot burn the signing quota)."
  default     = {}

  validation {
    condition     = can(regex("^[0-9]+(\\.[0-9]+)?$", var.intake.daily_cost_cap_usd))
    error_message = "daily_cost_cap_usd must be a decimal number written as a string, such as \"100\"."
  }

  validation {
    condition     = var.intake.max_items_per_batch >= 1 && var.intake.max_prompt_chars >= 1 && var.intake.daily_image_cap >= 0
    error_message = "max_items_per_batch and max_prompt_chars must be at least 1, daily_image_cap not negative."
  }

  validation {
    condition     = var.intake.max_variants >= 1 && var.intake.max_variants <= 8
    error_message = "max_variants must be between 1 and 8."
  }

  # V4 URLs signed through IAM signBlob (as in Cloud Functions) are only sure to
  # work for 12 hours: Google rotates the keys behind signBlob.
  validation {
    condition     = var.intake.signed_url_ttl_s >= 60 && var.intake.signed_url_ttl_s <= 43200
    error_message = "signed_url_ttl_s must be between 60 and 43200 (12 hours, the most a signBlob signature is sure to last)."
  }
}

# ---------------------------------------------------------------- generate function
variable "generation" {
  type = object({
    generate_concurrency  = optional(number, 4)
    gemini_timeout_s      = optional(number, 120)
    gemini_retry_attempts = optional(number, 2)
    gemini_budget_s       = optional(number, 280)
    delivery_deadline_s   = optional(number, 360)
    gemini_aspect_ratio   = optional(string, "")
    gemini_image_size     = optional(string, "")
    reference_max_images  = optional(number, 14)
    claim_wait_s          = optional(number, 240)
    # Issue 11: what a reference pack may be.
    references_prefix            = optional(string, "refs/")
    reference_max_zip_members    = optional(number, 64)
    reference_max_unpacked_bytes = optional(number, 0)
    # Issue 12: waiting is not failing.
    gemini_failure_budget    = optional(number, 3)
    gemini_images_per_minute = optional(number, 0)
    quota_wait_s             = optional(number, 120)
    max_event_age_s          = optional(number, 43200)
  })
  description = "The generate function: generate_concurrency (variants of one job in parallel), gemini_timeout_s and gemini_retry_attempts (one Gemini call; attempts x timeout + backoff must fit gemini_budget_s), gemini_budget_s (< delivery_deadline_s; a variant's claim lease is this plus 20 s), delivery_deadline_s (one delivery's work; with the final sheet write it must stay below the function's timeout, checked at start), gemini_aspect_ratio/gemini_image_size (for jobs that name none; empty: the model's), reference_max_images (REFERENCE_MAX_IMAGES: this deployment's cap; the model's catalog limit applies too), claim_wait_s; references_prefix (REFERENCES_PREFIX: the only gs:// objects of the images bucket any caller may use as references), reference_max_zip_members, reference_max_unpacked_bytes (0: REFERENCE_MAX_BYTES x REFERENCE_MAX_IMAGES; counted while unpacking, whatever a zip declares); gemini_failure_budget (real failed attempts before a variant fails: Gemini errors other than quota, timeouts, instances that died mid-call, reference packs not read in time; waits never count), gemini_images_per_minute (the whole fleet's pace of Gemini calls per model, just under the project's quota; 0: no pace, refusals still pause every instance until Gemini's RetryInfo delay), quota_wait_s (longest in-process wait for a call slot; longer waits hand the message back to Pub/Sub), max_event_age_s (longest a job may wait in all before it fails with the reason; keep it under max_delivery_attempts x retry_maximum_backoff)."
  default     = {}

  validation {
    condition = alltrue([
      var.generation.generate_concurrency >= 1,
      var.generation.gemini_timeout_s > 0,
      var.generation.gemini_retry_attempts >= 1 && var.generation.gemini_retry_attempts <= 10,
      var.generation.claim_wait_s >= 0,
      var.generation.reference_max_images >= 0,
      var.generation.gemini_failure_budget >= 1 && var.generation.gemini_failure_budget <= 20,
      var.generation.gemini_images_per_minute >= 0,
      var.generation.quota_wait_s >= 0,
      var.generation.max_event_age_s >= 60,
    ])
    error_message = "generate_concurrency and gemini_retry_attempts (at most 10) must be at least 1, gemini_timeout_s positive, claim_wait_s, reference_max_images, gemini_images_per_minute and quota_wait_s not negative, gemini_failure_budget 1-20, max_event_age_s at least 60."
  }

  validation {
    condition     = var.generation.gemini_budget_s < var.generation.delivery_deadline_s && var.generation.delivery_deadline_s <= 600
    error_message = "gemini_budget_s must be below delivery_deadline_s, and delivery_deadline_s at most 600 (the push ack deadline)."
  }
}

# ---------------------------------------------------------------- economy lane
variable "economy" {
  type = object({
    schedule                   = optional(string, "*/5 * * * *")
    time_zone                  = optional(string, "Etc/UTC")
    economy_batch_max_requests = optional(number, 200)
    economy_inline_max_bytes   = optional(number, 5242880)
    economy_on_expiry          = optional(string, "live")
    economy_lease_s            = optional(number, 300)
    economy_tick_budget_s      = optional(number, 240)
  })
  description = "The economy lane (Gemini's Batch API, half price, within 24 hours; Gemini API backend only): schedule/time_zone (Cloud Scheduler's cron for the run_economy tick), economy_batch_max_requests (ECONOMY_BATCH_MAX_REQUESTS: requests per Gemini batch), economy_inline_max_bytes (ECONOMY_INLINE_MAX_BYTES: a batch goes inline when its requests and expected images fit in this, else as a JSONL file whose results are streamed; at most 15 MiB), economy_on_expiry (ECONOMY_ON_EXPIRY: live sends what an expired, failed or cancelled batch did not make to the live lane at the live price, fail fails it), economy_lease_s (ECONOMY_LEASE_S: one tick works on a batch at a time), economy_tick_budget_s (ECONOMY_TICK_BUDGET_S: a tick starts no new work after it)."
  default     = {}

  validation {
    condition     = contains(["live", "fail"], var.economy.economy_on_expiry)
    error_message = "economy_on_expiry must be \"live\" or \"fail\"."
  }

  validation {
    condition     = var.economy.economy_batch_max_requests >= 1 && var.economy.economy_inline_max_bytes >= 0 && var.economy.economy_inline_max_bytes <= 15728640
    error_message = "economy_batch_max_requests must be at least 1, economy_inline_max_bytes between 0 and 15 MiB (well under Gemini's 20 MB inline limit)."
  }

  validation {
    condition     = var.economy.economy_lease_s > 0 && var.economy.economy_tick_budget_s > 0
    error_message = "economy_lease_s and economy_tick_budget_s must be positive."
  }
}

# ---------------------------------------------------------------- export function
variable "exports" {
  type = object({
    export_deadline_s = optional(number, 420)
  })
  description = "The export function (a batch's hand-over zip): export_deadline_s (EXPORT_DEADLINE_S: no image is added to a zip after this long in one delivery; a batch that does not fit goes on in the next delivery as a part, and the parts are joined into one zip; with the last image and upload chunk it must stay below the function's timeout, checked at start)."
  default     = {}

  validation {
    condition     = var.exports.export_deadline_s > 0 && var.exports.export_deadline_s <= 3400
    error_message = "export_deadline_s must be between 0 and 3400."
  }
}

# ---------------------------------------------------------------- thumbnail function
variable "thumbnails" {
  type = object({
    thumbnail_size         = optional(number, 256)
    thumbnail_format       = optional(string, "jpeg")
    thumbnail_quality      = optional(number, 85)
    thumbnail_max_pixels   = optional(number, 50000000)
    thumbnail_decode_slots = optional(number, 2)
  })
  description = "The thumbnail function: thumbnail_size (longest side in pixels), thumbnail_format (jpeg or webp), thumbnail_quality (1-100), thumbnail_max_pixels (largest image decoded; a guard against decompression bombs), thumbnail_decode_slots (decodes at once per instance; bounds peak memory)."
  default     = {}

  validation {
    condition     = var.thumbnails.thumbnail_size >= 16 && var.thumbnails.thumbnail_size <= 2048
    error_message = "thumbnail_size must be between 16 and 2048."
  }

  validation {
    condition     = contains(["jpeg", "webp"], var.thumbnails.thumbnail_format)
    error_message = "thumbnail_format must be jpeg or webp."
  }

  validation {
    condition     = var.thumbnails.thumbnail_quality >= 1 && var.thumbnails.thumbnail_quality <= 100
    error_message = "thumbnail_quality must be between 1 and 100."
  }
}

# ---------------------------------------------------------------- sheet writes
variable "sheets" {
  type = object({
    quota_per_minute       = optional(number, 60)
    sheets_coalesce_ms     = optional(number, 250)
    sheets_write_timeout_s = optional(number, 60)
  })
  description = "Sheet writes of the generate, thumbnail and dead-letter functions: quota_per_minute (Sheets writes a minute per service account, Google's quota is 60: every instance may use it alone, SHEETS_WRITES_PER_MINUTE, and the fleet's shared pace, SHEETS_FLEET_WRITES_PER_MINUTE, keeps all of them together at 95 % of it), sheets_coalesce_ms (window in which concurrent row updates become one write), sheets_write_timeout_s (longest a row write waits and backs off before Pub/Sub retries; counted in each function's longest path)."
  default     = {}

  validation {
    condition     = var.sheets.quota_per_minute >= 1 && var.sheets.sheets_write_timeout_s >= 1 && var.sheets.sheets_write_timeout_s <= 300
    error_message = "quota_per_minute must be at least 1 and sheets_write_timeout_s between 1 and 300."
  }
}

# ---------------------------------------------------------------- team notifications
variable "notifications" {
  type = object({
    chat_webhook         = optional(bool, false)
    notify_failure_share = optional(number, 0.2)
  })
  description = "Word to the team when a batch ends or needs attention (README.md, \"Word when a batch ends\"): chat_webhook (true: a Secret Manager secret for a Google Chat space's incoming-webhook URL, CHAT_WEBHOOK_URL, read by the functions that change jobs: api (cancels), generate, thumbnail, dead_letter, economy; its value is added with gcloud, never through Terraform; false: no Chat messages), notify_failure_share (NOTIFY_FAILURE_SHARE: a batch needs attention once more than this share of its jobs failed while others still run; the HTTP function also reports the events to the sheet)."
  default     = {}

  validation {
    condition     = var.notifications.notify_failure_share >= 0 && var.notifications.notify_failure_share <= 1
    error_message = "notify_failure_share must be between 0 and 1."
  }
}

# ---------------------------------------------------------------- functions
variable "function_sizing" {
  type = map(object({
    memory          = optional(string)
    cpu             = optional(string)
    timeout_seconds = optional(number)
    min_instances   = optional(number)
    max_instances   = optional(number)
    concurrency     = optional(number)
  }))
  description = "Sizing overrides by function (api, generate, thumbnail, dead_letter, economy, export, rows): memory (e.g. \"1Gi\"), cpu, timeout_seconds (must exceed the function's longest path, checked at start; at most the ack deadline for the pushed ones), min_instances, max_instances, concurrency. Omitted fields keep the defaults in settings.tf."
  default     = {}

  validation {
    condition     = alltrue([for key in keys(var.function_sizing) : contains(["api", "generate", "thumbnail", "dead_letter", "economy", "export", "rows"], key)])
    error_message = "function_sizing keys must be api, generate, thumbnail, dead_letter, economy, export or rows."
  }
}

variable "function_build_service_account" {
  type        = string
  description = "Email of an existing service account that Cloud Build uses to build the functions. Empty: a dedicated one is created with roles/run.builder."
  default     = ""
}

# ---------------------------------------------------------------- monitoring
variable "alerting" {
  type = object({
    notification_channels = optional(list(string), [])
    job_errors_threshold  = optional(number, 0)
    job_errors_window     = optional(string, "300s")
  })
  description = "The job-errors alert: notification_channels (projects/P/notificationChannels/N), job_errors_threshold (it opens when more job errors than this are logged within job_errors_window), job_errors_window (a duration such as \"300s\")."
  default     = {}

  validation {
    condition     = can(regex("^[0-9]+s$", var.alerting.job_errors_window))
    error_message = "job_errors_window must be a duration in seconds, such as \"300s\"."
  }
}
