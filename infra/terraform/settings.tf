# What each function is and what it is told: its entry point, sizing, settings
# (environment variables) and secrets. Only variables feed these locals, never a
# resource, so tests/unit/test_infra.py evaluates them with Terraform itself
# (variables.tf and this file alone) and checks them against shared/config/settings.py
# and each function's longest path (shared/config/budgets.py).
locals {
  function_names = {
    api         = "${var.name_prefix}-http-api"
    generate    = "${var.name_prefix}-generate-images"
    thumbnail   = "${var.name_prefix}-make-thumbnails"
    dead_letter = "${var.name_prefix}-handle-dead-letters"
    economy     = "${var.name_prefix}-run-economy"
    export      = "${var.name_prefix}-export-batch"
    rows        = "${var.name_prefix}-write-sheet-rows"
  }

  images_bucket_name     = var.storage.images_bucket_name != "" ? var.storage.images_bucket_name : "${var.project_id}-images"
  thumbnails_bucket_name = var.storage.thumbnails_bucket_name != "" ? var.storage.thumbnails_bucket_name : local.images_bucket_name

  # PUBLIC_BASE_URL is the HTTP function's own URL, which it and the functions
  # that write sheet links need. Reading it from the function resource would be
  # a cycle (the function's environment would depend on the function), so it is
  # computed: gen2 functions answer at https://REGION-PROJECT.cloudfunctions.net/NAME,
  # a URL fixed by the region, the project ID and the name. A check block
  # (functions.tf) compares it with the URL Google reports after apply.
  public_base_url = var.access.public_base_url != "" ? var.access.public_base_url : "https://${var.region}-${var.project_id}.cloudfunctions.net/${local.function_names.api}"

  # Each timeout exceeds its function's longest path with the default settings
  # (shared/config/budgets.py; FUNCTION_TIMEOUT_S below makes each function check its
  # own at start): HTTP 120 s, generate 570 s (DELIVERY_DEADLINE_S 360 s, the
  # last upload, the final sheet write), thumbnail 300 s, dead letters 150 s,
  # export 540 s (EXPORT_DEADLINE_S 420 s, the last image, the last upload chunk;
  # one export per instance, so its memory is one zip stream's).
  # The pushed ones stay within the 600 s push ack deadline.
  function_sizing_defaults = {
    api         = { memory = "512Mi", cpu = "1", timeout_seconds = 180, min_instances = 0, max_instances = 10, concurrency = 20 }
    generate    = { memory = "1Gi", cpu = "1", timeout_seconds = 600, min_instances = 0, max_instances = 5, concurrency = 1 }
    thumbnail   = { memory = "1Gi", cpu = "1", timeout_seconds = 360, min_instances = 0, max_instances = 5, concurrency = 4 }
    dead_letter = { memory = "512Mi", cpu = "1", timeout_seconds = 180, min_instances = 0, max_instances = 2, concurrency = 10 }
    # One tick at a time is enough (leases keep overlapping ticks apart anyway);
    # memory holds one image of the results stream and one reference pack.
    economy = { memory = "1Gi", cpu = "1", timeout_seconds = 600, min_instances = 0, max_instances = 1, concurrency = 1 }
    export  = { memory = "512Mi", cpu = "1", timeout_seconds = 600, min_instances = 0, max_instances = 2, concurrency = 1 }
    # The fleet's one sheet writer: one instance, so its own pace is the fleet's;
    # a few spreadsheets at once, their rows each in one write.
    rows = { memory = "512Mi", cpu = "1", timeout_seconds = 300, min_instances = 0, max_instances = 1, concurrency = 8 }
  }
  function_sizing = {
    for key, defaults in local.function_sizing_defaults : key => merge(defaults, {
      for field, value in try(var.function_sizing[key], {}) : field => value if value != null
    })
  }

  # The functions that change jobs and so their sheet rows (shared/services/ledger.py):
  # they queue a changed job's spreadsheet for the fleet's one sheet writer (rows,
  # shared/services/sheet_rows.py), which writes the rows. Each runs as its own
  # account, and every spreadsheet is shared with all of them (outputs.tf).
  sheet_writers = ["generate", "thumbnail", "dead_letter", "economy", "rows"]

  # Word to the team (shared/services/notices.py): the functions that change
  # jobs (the sheet writers, and the HTTP function, whose cancels can end a
  # batch) see a batch end or need attention and post to the Chat space, once
  # per batch and event; the HTTP function also reports the events (GET
  # /batches/{id}). The export function changes no job. The webhook URL holds
  # a key and token: a secret, and only with notifications.chat_webhook.
  notifiers = concat(["api"], local.sheet_writers)
  notice_env = {
    NOTIFY_FAILURE_SHARE = tostring(var.notifications.notify_failure_share)
  }
  notice_secrets = var.notifications.chat_webhook ? ["CHAT_WEBHOOK_URL"] : []

  # Settings every function gets: the required ones, the HTTP function's URL
  # (for durable links), its own timeout; and those of every sheet writer: its
  # share of the Sheets quota (per service account, so shared by all of its
  # instances) and the write timeout.
  common_env = {
    for key, sizing in local.function_sizing : key => merge(
      {
        GOOGLE_CLOUD_PROJECT = var.project_id
        IMAGES_BUCKET        = local.images_bucket_name
        PUBLIC_BASE_URL      = local.public_base_url
        FUNCTION_TIMEOUT_S   = tostring(sizing.timeout_seconds)
      },
      contains(local.sheet_writers, key) ? {
        # Every instance may use the whole quota alone; the fleet's pace (Firestore)
        # shares it, just under it, among all the instances of all the functions.
        SHEETS_WRITES_PER_MINUTE       = tostring(max(1, var.sheets.quota_per_minute))
        SHEETS_FLEET_WRITES_PER_MINUTE = tostring(floor(var.sheets.quota_per_minute * 0.95))
        SHEET_ROWS_TOPIC               = var.pubsub.sheet_rows_topic
      } : {},
      contains(local.notifiers, key) ? local.notice_env : {},
    )
  }

  # The model and its backend, for the HTTP function (the batch preflight, prices)
  # and the generate function; the Gemini API key only where that backend is used.
  vertex = var.models.gemini_backend == "vertex"
  model_env = merge(
    {
      GEMINI_MODEL   = var.models.gemini_model
      MODEL_CATALOG  = var.models.model_catalog
      GEMINI_BACKEND = var.models.gemini_backend
    },
    local.vertex ? { VERTEX_LOCATION = var.models.vertex_location } : {},
  )
  model_secrets = local.vertex ? [] : ["GEMINI_API_KEY"]

  # What the generate function and the economy tick both need to build a request:
  # the image shape and thinking level, what a reference pack may be, and who may
  # name any caller's output as a style anchor.
  request_env = {
    IMAGES_PREFIX                = var.storage.images_prefix
    GEMINI_TIMEOUT_S             = tostring(var.generation.gemini_timeout_s)
    GEMINI_THINKING_LEVEL        = var.models.gemini_thinking_level
    GEMINI_ASPECT_RATIO          = var.generation.gemini_aspect_ratio
    GEMINI_IMAGE_SIZE            = var.generation.gemini_image_size
    REFERENCE_MAX_IMAGES         = tostring(var.generation.reference_max_images)
    REFERENCES_PREFIX            = var.generation.references_prefix
    REFERENCE_MAX_ZIP_MEMBERS    = tostring(var.generation.reference_max_zip_members)
    REFERENCE_MAX_UNPACKED_BYTES = tostring(var.generation.reference_max_unpacked_bytes)
    ADMIN_CALLERS                = join(",", var.access.admin_callers)
  }

  # Each function gets only the settings its code reads (shared/config/settings.py),
  # as strings, and only its secrets (names of settings read from Secret Manager).
  functions = {
    api = {
      entry_point = "http_api"
      description = "HTTPS API of the sheet's Apps Script: batches, status, durable asset links."
      public      = true
      env = merge(local.common_env.api, local.model_env, {
        JOBS_TOPIC                   = var.pubsub.jobs_topic
        EXPORTS_TOPIC                = var.pubsub.exports_topic
        THUMBNAILS_BUCKET            = local.thumbnails_bucket_name
        MODEL_CHECK_TTL_S            = tostring(var.models.model_check_ttl_s)
        REFERENCES_PREFIX            = var.generation.references_prefix
        REFERENCE_MAX_IMAGES         = tostring(var.generation.reference_max_images)
        MAX_ITEMS_PER_BATCH          = tostring(var.intake.max_items_per_batch)
        MAX_VARIANTS                 = tostring(var.intake.max_variants)
        MAX_PROMPT_CHARS             = tostring(var.intake.max_prompt_chars)
        DAILY_IMAGE_CAP              = tostring(var.intake.daily_image_cap)
        DAILY_COST_CAP_USD           = var.intake.daily_cost_cap_usd
        SIGNED_URL_TTL_S             = tostring(var.intake.signed_url_ttl_s)
        SIGNED_URL_REUSE_S           = tostring(var.intake.signed_url_reuse_s)
        ID_TOKEN_CERTS_MIN_REFETCH_S = tostring(var.access.id_token_certs_min_refetch_s)
        ID_TOKEN_AUDIENCES           = join(",", var.access.id_token_audiences)
        ALLOWED_EMAILS               = join(",", var.access.allowed_emails)
        ALLOWED_DOMAINS              = join(",", var.access.allowed_domains)
        ADMIN_CALLERS                = join(",", var.access.admin_callers)
        ALLOWED_SPREADSHEET_IDS      = join(",", var.access.allowed_spreadsheet_ids)
        CALLER_SPREADSHEETS          = join(",", [for caller, ids in var.access.caller_spreadsheets : "${caller}:${join("|", ids)}"])
      })
      secrets = concat(["API_KEY_HASHES", "LINK_SIGNING_KEY"], local.model_secrets, local.notice_secrets)
    }
    generate = {
      entry_point = "generate_images"
      description = "Pushed from the jobs topic: claims each variant, calls Gemini, uploads create-only."
      public      = false
      env = merge(local.common_env.generate, local.model_env, local.request_env, {
        GENERATE_CONCURRENCY     = tostring(var.generation.generate_concurrency)
        GEMINI_RETRY_ATTEMPTS    = tostring(var.generation.gemini_retry_attempts)
        GEMINI_BUDGET_S          = tostring(var.generation.gemini_budget_s)
        DELIVERY_DEADLINE_S      = tostring(var.generation.delivery_deadline_s)
        CLAIM_WAIT_S             = tostring(var.generation.claim_wait_s)
        GEMINI_FAILURE_BUDGET    = tostring(var.generation.gemini_failure_budget)
        GEMINI_IMAGES_PER_MINUTE = tostring(var.generation.gemini_images_per_minute)
        QUOTA_WAIT_S             = tostring(var.generation.quota_wait_s)
        MAX_EVENT_AGE_S          = tostring(var.generation.max_event_age_s)
      })
      secrets = concat(["LINK_SIGNING_KEY"], local.model_secrets, local.notice_secrets)
    }
    thumbnail = {
      entry_point = "make_thumbnails"
      description = "Pushed from the GCS-events topic: thumbnails a new image and updates the job and the sheet."
      public      = false
      env = merge(local.common_env.thumbnail, {
        IMAGES_PREFIX          = var.storage.images_prefix
        THUMBNAILS_BUCKET      = local.thumbnails_bucket_name
        THUMBNAILS_PREFIX      = var.storage.thumbnails_prefix
        THUMBNAIL_SIZE         = tostring(var.thumbnails.thumbnail_size)
        THUMBNAIL_FORMAT       = var.thumbnails.thumbnail_format
        THUMBNAIL_QUALITY      = tostring(var.thumbnails.thumbnail_quality)
        THUMBNAIL_MAX_PIXELS   = tostring(var.thumbnails.thumbnail_max_pixels)
        THUMBNAIL_DECODE_SLOTS = tostring(var.thumbnails.thumbnail_decode_slots)
        SHEETS_COALESCE_MS     = tostring(var.sheets.sheets_coalesce_ms)
      })
      secrets = concat(["LINK_SIGNING_KEY"], local.notice_secrets)
    }
    economy = {
      entry_point = "run_economy"
      description = "Called by Cloud Scheduler: submits pending economy variants in Gemini batches, collects finished batches, then sweeps (ends what nobody retried)."
      public      = false
      env = merge(local.common_env.economy, local.model_env, local.request_env, {
        JOBS_TOPIC                 = var.pubsub.jobs_topic
        EXPORTS_TOPIC              = var.pubsub.exports_topic
        ECONOMY_BATCH_MAX_REQUESTS = tostring(var.economy.economy_batch_max_requests)
        ECONOMY_INLINE_MAX_BYTES   = tostring(var.economy.economy_inline_max_bytes)
        ECONOMY_ON_EXPIRY          = var.economy.economy_on_expiry
        ECONOMY_LEASE_S            = tostring(var.economy.economy_lease_s)
        ECONOMY_TICK_BUDGET_S      = tostring(var.economy.economy_tick_budget_s)
        SHEETS_COALESCE_MS         = tostring(var.sheets.sheets_coalesce_ms)
      })
      secrets = concat(["LINK_SIGNING_KEY"], local.model_secrets, local.notice_secrets)
    }
    dead_letter = {
      entry_point = "handle_dead_letters"
      description = "Pushed from the dead-letter topic: marks the job failed with its last error, in Firestore and the sheet."
      public      = false
      env         = local.common_env.dead_letter
      secrets     = concat(["LINK_SIGNING_KEY"], local.notice_secrets)
    }
    export = {
      entry_point = "export_batch"
      description = "Pushed from the exports topic: streams a batch's kept images into one zip in the images bucket (a zip too large for one delivery in parts, joined at the end)."
      public      = false
      env = merge(local.common_env.export, {
        EXPORTS_PREFIX    = var.storage.exports_prefix
        EXPORTS_TOPIC     = var.pubsub.exports_topic
        EXPORT_DEADLINE_S = tostring(var.exports.export_deadline_s)
      })
      secrets = []
    }
    rows = {
      entry_point = "write_sheet_rows"
      description = "Pushed from the sheet-rows topic: the fleet's one sheet writer writes every stale row of a spreadsheet in one write, at the Sheets quota's pace."
      public      = false
      env = merge(local.common_env.rows, {
        SHEETS_COALESCE_MS = tostring(var.sheets.sheets_coalesce_ms)
      })
      secrets = concat(["LINK_SIGNING_KEY"], local.notice_secrets)
    }
  }
}
