locals {
  function_names = {
    api         = "${var.name_prefix}-http-api"
    generate    = "${var.name_prefix}-generate-images"
    thumbnail   = "${var.name_prefix}-make-thumbnails"
    dead_letter = "${var.name_prefix}-handle-dead-letters"
  }

  # PUBLIC_BASE_URL is the HTTP function's own URL, which it and the functions
  # that write sheet links need. Reading it from the function resource would be
  # a cycle (the function's environment would depend on the function), so it is
  # computed: gen2 functions answer at https://REGION-PROJECT.cloudfunctions.net/NAME,
  # a URL fixed by the region, the project ID and the name. The check block
  # below compares it with the URL Google reports after apply.
  public_base_url = var.public_base_url != "" ? var.public_base_url : "https://${var.region}-${var.project_id}.cloudfunctions.net/${local.function_names.api}"

  # Each function gets only the settings its code reads (shared/settings.py),
  # and only its secrets; tests/unit/test_infra.py keeps both in step with the
  # code. Every value is a string, as environment variables are.
  functions = {
    api = {
      entry_point = "http_api"
      description = "HTTPS API of the sheet's Apps Script: batches, status, durable asset links."
      sizing      = var.http_function
      env = {
        GOOGLE_CLOUD_PROJECT    = var.project_id
        IMAGES_BUCKET           = google_storage_bucket.images.name
        JOBS_TOPIC              = google_pubsub_topic.jobs.name
        THUMBNAILS_BUCKET       = local.thumbnails_bucket_name
        GEMINI_MODEL            = var.gemini_model
        PRICE_TABLE             = jsonencode(var.price_table)
        MAX_ITEMS_PER_BATCH     = tostring(var.max_items_per_batch)
        MAX_VARIANTS            = tostring(var.max_variants)
        MAX_PROMPT_CHARS        = tostring(var.max_prompt_chars)
        SIGNED_URL_TTL_S        = tostring(var.signed_url_ttl_s)
        PUBLIC_BASE_URL         = local.public_base_url
        ID_TOKEN_AUDIENCES      = join(",", var.id_token_audiences)
        ALLOWED_EMAILS          = join(",", var.allowed_emails)
        ALLOWED_DOMAINS         = join(",", var.allowed_domains)
        ADMIN_CALLERS           = join(",", var.admin_callers)
        ALLOWED_SPREADSHEET_IDS = join(",", var.allowed_spreadsheet_ids)
        DAILY_IMAGE_CAP         = tostring(var.daily_image_cap)
        DAILY_COST_CAP_USD      = var.daily_cost_cap_usd
      }
      secrets = {
        API_KEY_HASHES   = google_secret_manager_secret.api_key_hashes.secret_id
        LINK_SIGNING_KEY = google_secret_manager_secret.link_signing_key.secret_id
      }
    }
    generate = {
      entry_point = "generate_images"
      description = "Pushed from the jobs topic: claims each variant, calls Gemini, uploads create-only."
      sizing      = var.generate_function
      env = {
        GOOGLE_CLOUD_PROJECT     = var.project_id
        IMAGES_BUCKET            = google_storage_bucket.images.name
        IMAGES_PREFIX            = var.images_prefix
        GENERATE_CONCURRENCY     = tostring(var.generate_concurrency)
        GEMINI_TIMEOUT_S         = tostring(var.gemini_timeout_s)
        GEMINI_RETRY_ATTEMPTS    = tostring(var.gemini_retry_attempts)
        GEMINI_BUDGET_S          = tostring(var.gemini_budget_s)
        DELIVERY_DEADLINE_S      = tostring(var.delivery_deadline_s)
        GEMINI_ASPECT_RATIO      = var.gemini_aspect_ratio
        GEMINI_IMAGE_SIZE        = var.gemini_image_size
        REFERENCE_MAX_IMAGES     = tostring(var.reference_max_images)
        CLAIM_WAIT_S             = tostring(var.claim_wait_s)
        PUBLIC_BASE_URL          = local.public_base_url
        SHEETS_WRITES_PER_MINUTE = tostring(max(1, floor(var.sheets_quota_per_minute / var.generate_function.max_instances)))
        SHEETS_WRITE_TIMEOUT_S   = tostring(var.sheets_write_timeout_s)
      }
      secrets = {
        GEMINI_API_KEY   = google_secret_manager_secret.gemini_api_key.secret_id
        LINK_SIGNING_KEY = google_secret_manager_secret.link_signing_key.secret_id
      }
    }
    thumbnail = {
      entry_point = "make_thumbnails"
      description = "Pushed from the GCS-events topic: thumbnails a new image and updates the job and the sheet."
      sizing      = var.thumbnail_function
      env = {
        GOOGLE_CLOUD_PROJECT   = var.project_id
        IMAGES_BUCKET          = google_storage_bucket.images.name
        IMAGES_PREFIX          = var.images_prefix
        THUMBNAILS_BUCKET      = local.thumbnails_bucket_name
        THUMBNAILS_PREFIX      = var.thumbnails_prefix
        THUMBNAIL_SIZE         = tostring(var.thumbnail_size)
        THUMBNAIL_FORMAT       = var.thumbnail_format
        THUMBNAIL_QUALITY      = tostring(var.thumbnail_quality)
        THUMBNAIL_MAX_PIXELS   = tostring(var.thumbnail_max_pixels)
        THUMBNAIL_DECODE_SLOTS = tostring(var.thumbnail_decode_slots)
        PUBLIC_BASE_URL        = local.public_base_url
        # The Sheets quota is per service account, shared by all instances.
        SHEETS_WRITES_PER_MINUTE = tostring(max(1, floor(var.sheets_quota_per_minute / var.thumbnail_function.max_instances)))
        SHEETS_COALESCE_MS       = tostring(var.sheets_coalesce_ms)
        SHEETS_WRITE_TIMEOUT_S   = tostring(var.sheets_write_timeout_s)
      }
      secrets = {
        LINK_SIGNING_KEY = google_secret_manager_secret.link_signing_key.secret_id
      }
    }
    dead_letter = {
      entry_point = "handle_dead_letters"
      description = "Pushed from the dead-letter topic: marks the job failed with its last error, in Firestore and the sheet."
      sizing      = var.dead_letter_function
      env = {
        GOOGLE_CLOUD_PROJECT     = var.project_id
        IMAGES_BUCKET            = google_storage_bucket.images.name
        PUBLIC_BASE_URL          = local.public_base_url
        SHEETS_WRITES_PER_MINUTE = tostring(max(1, floor(var.sheets_quota_per_minute / var.dead_letter_function.max_instances)))
        SHEETS_WRITE_TIMEOUT_S   = tostring(var.sheets_write_timeout_s)
      }
      secrets = {
        LINK_SIGNING_KEY = google_secret_manager_secret.link_signing_key.secret_id
      }
    }
  }
}

# The three Pub/Sub-pushed functions: internal ingress only, invoked only by the
# push invoker's OIDC token (iam.tf).
resource "google_cloudfunctions2_function" "pushed" {
  for_each = { for key, fn in local.functions : key => fn if key != "api" }

  name        = local.function_names[each.key]
  project     = var.project_id
  location    = var.region
  description = each.value.description

  build_config {
    runtime         = "python312"
    entry_point     = each.value.entry_point
    service_account = local.function_build_service_account_id

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }

    # Runtime base-image security patches are applied on Google's schedule.
    automatic_update_policy {}
  }

  service_config {
    available_memory                 = each.value.sizing.memory
    available_cpu                    = each.value.sizing.cpu
    timeout_seconds                  = each.value.sizing.timeout_seconds
    min_instance_count               = each.value.sizing.min_instances
    max_instance_count               = each.value.sizing.max_instances
    max_instance_request_concurrency = each.value.sizing.concurrency
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.runtime[each.key].email
    environment_variables            = each.value.env

    dynamic "secret_environment_variables" {
      for_each = each.value.secrets
      content {
        key        = secret_environment_variables.key
        project_id = var.project_id
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.function_build_builder,
    google_project_iam_member.runtime_firestore_user,
    google_secret_manager_secret_iam_member.runtime_accessor,
    google_firestore_database.default,
  ]
}

# The HTTP function: the only one reachable from the internet (the Apps Script
# and the sheet's =IMAGE() fetches come from Google's servers, not from a VPC).
resource "google_cloudfunctions2_function" "http_api" {
  #checkov:skip=CKV_GCP_124:Public ingress by design: the Apps Script (UrlFetchApp) and Sheets' =IMAGE() call it from the internet; every route but /healthz checks an API key, a Google ID token or an HMAC link signature.
  name        = local.function_names.api
  project     = var.project_id
  location    = var.region
  description = local.functions.api.description

  build_config {
    runtime         = "python312"
    entry_point     = local.functions.api.entry_point
    service_account = local.function_build_service_account_id

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }

    automatic_update_policy {}
  }

  service_config {
    available_memory                 = local.functions.api.sizing.memory
    available_cpu                    = local.functions.api.sizing.cpu
    timeout_seconds                  = local.functions.api.sizing.timeout_seconds
    min_instance_count               = local.functions.api.sizing.min_instances
    max_instance_count               = local.functions.api.sizing.max_instances
    max_instance_request_concurrency = local.functions.api.sizing.concurrency
    ingress_settings                 = "ALLOW_ALL"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.runtime["api"].email
    environment_variables            = local.functions.api.env

    dynamic "secret_environment_variables" {
      for_each = local.functions.api.secrets
      content {
        key        = secret_environment_variables.key
        project_id = var.project_id
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
  }

  lifecycle {
    precondition {
      condition     = contains(keys(var.price_table), var.gemini_model)
      error_message = "price_table has no price for gemini_model; the functions refuse to start without one."
    }
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.function_build_builder,
    google_project_iam_member.runtime_firestore_user,
    google_secret_manager_secret_iam_member.runtime_accessor,
    google_service_account_iam_member.api_signs_as_itself,
    google_firestore_database.default,
  ]
}

# The only unauthenticated entry point: =IMAGE() links cannot carry credentials,
# so the function checks an API key, a Google ID token or an HMAC link signature itself.
resource "google_cloud_run_v2_service_iam_member" "api_public" {
  #checkov:skip=CKV_GCP_102:Public by design (see google_cloudfunctions2_function.http_api); checkov 3.3.30 checks only the v1 Cloud Run IAM resources, this records the decision for the v2 one.
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.http_api.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

check "public_base_url_matches_function" {
  assert {
    condition     = var.public_base_url != "" || google_cloudfunctions2_function.http_api.url == local.public_base_url
    error_message = "The HTTP function's URL is not the computed PUBLIC_BASE_URL; set public_base_url to the function's URL."
  }
}
