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

# ---------------------------------------------------------------- storage
variable "images_bucket_name" {
  type        = string
  description = "Name of the private images bucket (IMAGES_BUCKET). Empty: \"<project_id>-images\"."
  default     = ""
}

variable "thumbnails_bucket_name" {
  type        = string
  description = "Name of a separate thumbnails bucket (THUMBNAILS_BUCKET), created with the same settings. Empty: thumbnails go to the images bucket under thumbnails_prefix."
  default     = ""
}

variable "bucket_location" {
  type        = string
  description = "Location of the buckets. Empty: the region."
  default     = ""
}

variable "images_prefix" {
  type        = string
  description = "Object prefix of the generated images (IMAGES_PREFIX); the bucket notification fires only under it."
  default     = "images/"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+/$", var.images_prefix))
    error_message = "images_prefix must be one path segment ending with \"/\"."
  }
}

variable "thumbnails_prefix" {
  type        = string
  description = "Object prefix of the thumbnails (THUMBNAILS_PREFIX); it must lie outside images_prefix so that thumbnails never trigger the thumbnail function."
  default     = "thumbnails/"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+/$", var.thumbnails_prefix))
    error_message = "thumbnails_prefix must be one path segment ending with \"/\"."
  }
}

variable "noncurrent_version_retention_days" {
  type        = number
  description = "Days a deleted (noncurrent) object version is kept in the versioned buckets before it is removed."
  default     = 30

  validation {
    condition     = var.noncurrent_version_retention_days >= 1
    error_message = "noncurrent_version_retention_days must be at least 1."
  }
}

variable "source_archive_path" {
  type        = string
  description = "Path of a pre-built source zip (Cloud Build's package step). Empty: Terraform zips main.py, requirements.txt, functions/ and shared/ itself."
  default     = ""
}

# ---------------------------------------------------------------- Pub/Sub
variable "jobs_topic" {
  type        = string
  description = "Topic the HTTP function publishes one message per job to (JOBS_TOPIC)."
  default     = "image-jobs"
}

variable "gcs_events_topic" {
  type        = string
  description = "Topic of the images bucket's OBJECT_FINALIZE notifications."
  default     = "image-gcs-events"
}

variable "dead_letter_topic" {
  type        = string
  description = "Dead-letter topic of the jobs and GCS-events push subscriptions."
  default     = "image-jobs-dead-letter"
}

variable "ack_deadline_seconds" {
  type        = number
  description = "Ack deadline of the push subscriptions; for push it is also the request timeout."
  default     = 600

  validation {
    condition     = var.ack_deadline_seconds >= 10 && var.ack_deadline_seconds <= 600
    error_message = "ack_deadline_seconds must be between 10 and 600."
  }
}

variable "retry_minimum_backoff" {
  type        = string
  description = "Minimum redelivery backoff of the push subscriptions (a duration such as \"10s\")."
  default     = "10s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.retry_minimum_backoff)) && try(tonumber(trimsuffix(var.retry_minimum_backoff, "s")) <= 600, false)
    error_message = "retry_minimum_backoff must be a duration in seconds between \"0s\" and \"600s\"."
  }
}

variable "retry_maximum_backoff" {
  type        = string
  description = "Maximum redelivery backoff of the push subscriptions (a duration such as \"600s\")."
  default     = "600s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.retry_maximum_backoff)) && try(tonumber(trimsuffix(var.retry_maximum_backoff, "s")) <= 600, false)
    error_message = "retry_maximum_backoff must be a duration in seconds between \"0s\" and \"600s\"."
  }
}

variable "max_delivery_attempts" {
  type        = number
  description = "Deliveries of a jobs or GCS-events message before it goes to the dead-letter topic."
  default     = 5

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be between 5 and 100."
  }
}

variable "message_retention_duration" {
  type        = string
  description = "How long the subscriptions keep unacknowledged messages."
  default     = "604800s"
}

variable "dead_letter_topic_retention" {
  type        = string
  description = "How long the dead-letter topic itself keeps messages, so they can be replayed with a seek."
  default     = "604800s"
}

# ---------------------------------------------------------------- Firestore
variable "firestore_location" {
  type        = string
  description = "Location of the (default) Firestore database (a region or a multi-region such as nam5). Empty: the region."
  default     = ""
}

variable "create_firestore_database" {
  type        = bool
  description = "Create the (default) Firestore database in Native mode. Set false if the project already has one (or import it)."
  default     = true
}

# ---------------------------------------------------------------- application settings
variable "gemini_model" {
  type        = string
  description = "Gemini image model (GEMINI_MODEL); it must have a price in price_table."
  default     = "gemini-3.1-flash-image"
}

variable "price_table" {
  type        = map(string)
  description = "Price per image in USD by model, as decimal strings (PRICE_TABLE, passed as JSON)."
  default = {
    "gemini-3.1-flash-image" = "0.067"
    "gemini-2.5-flash-image" = "0.039"
  }

  validation {
    condition     = alltrue([for price in values(var.price_table) : can(regex("^[0-9]+(\\.[0-9]+)?$", price))])
    error_message = "Every price_table value must be a decimal number written as a string, such as \"0.067\"."
  }
}

variable "max_items_per_batch" {
  type        = number
  description = "Most scenes in one batch (MAX_ITEMS_PER_BATCH)."
  default     = 500

  validation {
    condition     = var.max_items_per_batch >= 1
    error_message = "max_items_per_batch must be at least 1."
  }
}

variable "max_variants" {
  type        = number
  description = "Most variants per scene (MAX_VARIANTS)."
  default     = 4

  validation {
    condition     = var.max_variants >= 1 && var.max_variants <= 8
    error_message = "max_variants must be between 1 and 8."
  }
}

variable "max_prompt_chars" {
  type        = number
  description = "Longest accepted prompt (MAX_PROMPT_CHARS)."
  default     = 4000

  validation {
    condition     = var.max_prompt_chars >= 1
    error_message = "max_prompt_chars must be at least 1."
  }
}

variable "generate_concurrency" {
  type        = number
  description = "Variants of one job generated in parallel by one generate instance (GENERATE_CONCURRENCY)."
  default     = 4

  validation {
    condition     = var.generate_concurrency >= 1
    error_message = "generate_concurrency must be at least 1."
  }
}

variable "gemini_timeout_s" {
  type        = number
  description = "Timeout of one Gemini call in seconds (GEMINI_TIMEOUT_S)."
  default     = 120

  validation {
    condition     = var.gemini_timeout_s > 0
    error_message = "gemini_timeout_s must be positive."
  }
}

variable "gemini_retry_attempts" {
  type        = number
  description = "SDK attempts of one Gemini call, the first included (GEMINI_RETRY_ATTEMPTS); attempts x timeout + backoff must fit GEMINI_BUDGET_S."
  default     = 2
}

variable "gemini_budget_s" {
  type        = number
  description = "Longest one Gemini call may take with its retries (GEMINI_BUDGET_S); must stay below delivery_deadline_s."
  default     = 280
}

variable "delivery_deadline_s" {
  type        = number
  description = "Time one push delivery may use (DELIVERY_DEADLINE_S); keep it <= the 600 s ack deadline and <= generate_function.timeout_seconds."
  default     = 540
}

variable "gemini_aspect_ratio" {
  type        = string
  description = "Aspect ratio for jobs that name none, e.g. 16:9 (GEMINI_ASPECT_RATIO); empty leaves it to the model."
  default     = ""
}

variable "gemini_image_size" {
  type        = string
  description = "Image size for jobs that name none: 1K, 2K or 4K (GEMINI_IMAGE_SIZE); empty leaves it to the model."
  default     = ""
}

variable "reference_max_images" {
  type        = number
  description = "Most reference images sent with a prompt (REFERENCE_MAX_IMAGES); the model's limit."
  default     = 3
}

variable "claim_wait_s" {
  type        = number
  description = "How long a delivery waits for another delivery's live claim, in seconds (CLAIM_WAIT_S)."
  default     = 240

  validation {
    condition     = var.claim_wait_s >= 0
    error_message = "claim_wait_s must not be negative."
  }
}

variable "signed_url_ttl_s" {
  type        = number
  description = "Lifetime in seconds of the signed URLs the asset links redirect to (SIGNED_URL_TTL_S)."
  default     = 900

  validation {
    condition     = var.signed_url_ttl_s >= 60 && var.signed_url_ttl_s <= 604800
    error_message = "signed_url_ttl_s must be between 60 and 604800 (7 days, the V4 limit)."
  }
}

variable "thumbnail_size" {
  type        = number
  description = "Longest side of a thumbnail in pixels (THUMBNAIL_SIZE)."
  default     = 256

  validation {
    condition     = var.thumbnail_size >= 16 && var.thumbnail_size <= 2048
    error_message = "thumbnail_size must be between 16 and 2048."
  }
}

variable "thumbnail_format" {
  type        = string
  description = "Thumbnail encoding (THUMBNAIL_FORMAT): jpeg or webp."
  default     = "jpeg"

  validation {
    condition     = contains(["jpeg", "webp"], var.thumbnail_format)
    error_message = "thumbnail_format must be jpeg or webp."
  }
}

variable "thumbnail_quality" {
  type        = number
  description = "Encoder quality of thumbnails, 1-100 (THUMBNAIL_QUALITY)."
  default     = 85

  validation {
    condition     = var.thumbnail_quality >= 1 && var.thumbnail_quality <= 100
    error_message = "thumbnail_quality must be between 1 and 100."
  }
}

variable "thumbnail_max_pixels" {
  type        = number
  description = "Largest image (width x height) the thumbnail function decodes; larger ones fail their variant (THUMBNAIL_MAX_PIXELS). Guards against decompression bombs."
  default     = 50000000
}

variable "thumbnail_decode_slots" {
  type        = number
  description = "Decodes running at once in one thumbnail instance (THUMBNAIL_DECODE_SLOTS); bounds peak memory whatever the concurrency."
  default     = 2
}

variable "sheets_quota_per_minute" {
  type        = number
  description = "Sheets API writes a minute allowed to one service account (Google's quota: 60). Each sheet-writing function gets this divided by its max_instances as SHEETS_WRITES_PER_MINUTE."
  default     = 60
}

variable "sheets_coalesce_ms" {
  type        = number
  description = "How long the thumbnail function gathers concurrent row updates of one spreadsheet into one write (SHEETS_COALESCE_MS)."
  default     = 250
}

variable "sheets_write_timeout_s" {
  type        = number
  description = "Longest a row write may wait for quota and back off on 429/5xx before the event is retried by Pub/Sub (SHEETS_WRITE_TIMEOUT_S); keep it below the function timeout."
  default     = 60
}

variable "allowed_spreadsheet_ids" {
  type        = list(string)
  description = "Spreadsheet IDs the HTTP function accepts batches for (ALLOWED_SPREADSHEET_IDS); [\"*\"] accepts any. No default: the code refuses every spreadsheet when it is empty."

  validation {
    condition     = length(var.allowed_spreadsheet_ids) > 0 && alltrue([for id in var.allowed_spreadsheet_ids : can(regex("^([A-Za-z0-9_-]+|\\*)$", id))])
    error_message = "allowed_spreadsheet_ids must list at least one spreadsheet ID (or \"*\"), without commas."
  }
}

variable "id_token_audiences" {
  type        = list(string)
  description = "Audiences accepted in Google ID tokens (ID_TOKEN_AUDIENCES): the Apps Script's OAuth client ID. Empty: API keys only."
  default     = []
}

variable "allowed_emails" {
  type        = list(string)
  description = "Emails whose Google ID tokens the HTTP function accepts (ALLOWED_EMAILS)."
  default     = []
}

variable "allowed_domains" {
  type        = list(string)
  description = "Domains whose users' Google ID tokens the HTTP function accepts (ALLOWED_DOMAINS)."
  default     = []
}

variable "admin_callers" {
  type        = list(string)
  description = "Callers (API-key names or emails) that may see every caller's jobs and batches (ADMIN_CALLERS)."
  default     = []
}

variable "daily_image_cap" {
  type        = number
  description = "Most images accepted per day (DAILY_IMAGE_CAP)."
  default     = 1000

  validation {
    condition     = var.daily_image_cap >= 0
    error_message = "daily_image_cap must not be negative."
  }
}

variable "daily_cost_cap_usd" {
  type        = string
  description = "Most estimated spend in USD accepted per day, as a decimal string (DAILY_COST_CAP_USD)."
  default     = "100"

  validation {
    condition     = can(regex("^[0-9]+(\\.[0-9]+)?$", var.daily_cost_cap_usd))
    error_message = "daily_cost_cap_usd must be a decimal number written as a string, such as \"100\"."
  }
}

variable "public_base_url" {
  type        = string
  description = "Base URL of the HTTP function written into sheet links (PUBLIC_BASE_URL). Empty: https://REGION-PROJECT.cloudfunctions.net/FUNCTION, known before the function exists."
  default     = ""

  validation {
    condition     = var.public_base_url == "" || can(regex("^https://[^/]+(/.*[^/])?$", var.public_base_url))
    error_message = "public_base_url must be empty or an https URL without a trailing slash."
  }
}

# ---------------------------------------------------------------- functions
variable "http_function" {
  type = object({
    memory          = optional(string, "512Mi")
    cpu             = optional(string, "1")
    timeout_seconds = optional(number, 60)
    min_instances   = optional(number, 0)
    max_instances   = optional(number, 10)
    concurrency     = optional(number, 20)
  })
  description = "Sizing of the HTTP function http_api: memory, CPU, timeout, min/max instances, concurrent requests per instance."
  default     = {}

  validation {
    condition     = var.http_function.min_instances <= var.http_function.max_instances && var.http_function.timeout_seconds <= 3600
    error_message = "min_instances must not exceed max_instances; an HTTP function times out after at most 3600 s."
  }
}

variable "generate_function" {
  type = object({
    memory          = optional(string, "1Gi")
    cpu             = optional(string, "1")
    timeout_seconds = optional(number, 540)
    min_instances   = optional(number, 0)
    max_instances   = optional(number, 5)
    concurrency     = optional(number, 1)
  })
  description = "Sizing of the generate function generate_images. One job per instance by default (the job's variants run in GENERATE_CONCURRENCY threads); max_instances bounds the Gemini request rate."
  default     = {}

  validation {
    condition     = var.generate_function.min_instances <= var.generate_function.max_instances && var.generate_function.timeout_seconds <= 600
    error_message = "min_instances must not exceed max_instances; a pushed function should not outlive the 600 s ack deadline."
  }
}

variable "thumbnail_function" {
  type = object({
    memory          = optional(string, "1Gi")
    cpu             = optional(string, "1")
    timeout_seconds = optional(number, 120)
    min_instances   = optional(number, 0)
    max_instances   = optional(number, 5)
    concurrency     = optional(number, 4)
  })
  description = "Sizing of the thumbnail function make_thumbnails. Concurrency above 1 lets concurrent row updates of one spreadsheet be coalesced into one Sheets write; THUMBNAIL_DECODE_SLOTS bounds the decodes in flight."
  default     = {}

  validation {
    condition     = var.thumbnail_function.min_instances <= var.thumbnail_function.max_instances && var.thumbnail_function.timeout_seconds <= 600
    error_message = "min_instances must not exceed max_instances; a pushed function should not outlive the 600 s ack deadline."
  }
}

variable "dead_letter_function" {
  type = object({
    memory          = optional(string, "512Mi")
    cpu             = optional(string, "1")
    timeout_seconds = optional(number, 60)
    min_instances   = optional(number, 0)
    max_instances   = optional(number, 2)
    concurrency     = optional(number, 10)
  })
  description = "Sizing of the dead-letter function handle_dead_letters."
  default     = {}

  validation {
    condition     = var.dead_letter_function.min_instances <= var.dead_letter_function.max_instances && var.dead_letter_function.timeout_seconds <= 600
    error_message = "min_instances must not exceed max_instances; a pushed function should not outlive the 600 s ack deadline."
  }
}

variable "function_build_service_account" {
  type        = string
  description = "Email of an existing service account that Cloud Build uses to build the functions. Empty: a dedicated one is created with roles/run.builder."
  default     = ""
}

# ---------------------------------------------------------------- monitoring
variable "notification_channels" {
  type        = list(string)
  description = "Notification channel IDs (projects/P/notificationChannels/N) of the job-errors alert."
  default     = []
}

variable "job_errors_alert_threshold" {
  type        = number
  description = "The alert opens when more job errors than this are logged within job_errors_alert_window."
  default     = 0
}

variable "job_errors_alert_window" {
  type        = string
  description = "Window over which job errors are summed for the alert (a duration such as \"300s\")."
  default     = "300s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.job_errors_alert_window))
    error_message = "job_errors_alert_window must be a duration in seconds, such as \"300s\"."
  }
}
