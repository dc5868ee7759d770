# The seven functions from one definition (their specs: settings.tf). The HTTP
# function is the only one reachable from the internet (the Apps Script and the
# sheet's =IMAGE() fetches come from Google's servers, not from a VPC); the four
# Pub/Sub-pushed ones (generate, thumbnail, dead letters, export) and the economy
# tick (Cloud Scheduler) take internal traffic only, invoked with an OIDC token
# (iam.tf, scheduler.tf).
resource "google_cloudfunctions2_function" "this" {
  #checkov:skip=CKV_GCP_124:Public ingress for the HTTP function only (each.value.public): the Apps Script (UrlFetchApp) and Sheets' =IMAGE() call it from the internet; every route but /healthz checks an API key, a Google ID token or an HMAC link signature. The pushed functions are ALLOW_INTERNAL_ONLY.
  for_each = local.functions

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
        bucket = google_storage_bucket.this["source"].name
        object = google_storage_bucket_object.source.name
      }
    }

    # Runtime base-image security patches are applied on Google's schedule.
    automatic_update_policy {}
  }

  service_config {
    available_memory                 = local.function_sizing[each.key].memory
    available_cpu                    = local.function_sizing[each.key].cpu
    timeout_seconds                  = local.function_sizing[each.key].timeout_seconds
    min_instance_count               = local.function_sizing[each.key].min_instances
    max_instance_count               = local.function_sizing[each.key].max_instances
    max_instance_request_concurrency = local.function_sizing[each.key].concurrency
    ingress_settings                 = each.value.public ? "ALLOW_ALL" : "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.this[each.key].email
    environment_variables            = each.value.env

    dynamic "secret_environment_variables" {
      for_each = toset(each.value.secrets)
      content {
        key        = secret_environment_variables.key
        project_id = var.project_id
        secret     = google_secret_manager_secret.this[lower(secret_environment_variables.key)].secret_id
        version    = "latest"
      }
    }
  }

  lifecycle {
    precondition {
      condition     = local.function_sizing[each.key].min_instances <= local.function_sizing[each.key].max_instances
      error_message = "function_sizing: min_instances must not exceed max_instances."
    }
    # A push request times out at the subscription's ack deadline; an HTTP
    # function may run for up to 3600 s.
    precondition {
      condition     = local.function_sizing[each.key].timeout_seconds <= (each.value.public ? 3600 : var.pubsub.ack_deadline_seconds)
      error_message = "function_sizing: a pushed function's timeout_seconds must not exceed pubsub.ack_deadline_seconds, an HTTP function's 3600."
    }
  }

  # Settings name the bucket and the topic rather than reference them (so that
  # settings.tf needs no resource): depend on them here. The IAM wait covers the
  # build account's role and the runtime accounts' secret and data grants.
  depends_on = [
    google_storage_bucket.this,
    google_pubsub_topic.this["jobs"],
    google_firestore_database.default,
    time_sleep.iam_propagation,
  ]
}

# allUsers may invoke the HTTP function: =IMAGE() links cannot carry credentials,
# so the function checks an API key, a Google ID token or an HMAC link signature
# itself. Where domain-restricted sharing forbids allUsers, access.public_invoker
# = "none" leaves this out (README.md, "Public access under domain-restricted sharing").
resource "google_cloud_run_v2_service_iam_member" "api_public" {
  #checkov:skip=CKV_GCP_102:Public by design (see google_cloudfunctions2_function.this, key api); checkov 3.3.30 checks only the v1 Cloud Run IAM resources, this records the decision for the v2 one.
  count = var.access.public_invoker == "allUsers" ? 1 : 0

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.this["api"].name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

check "public_base_url_matches_function" {
  assert {
    condition     = var.access.public_base_url != "" || google_cloudfunctions2_function.this["api"].url == local.public_base_url
    error_message = "The HTTP function's URL is not the computed PUBLIC_BASE_URL; set access.public_base_url to the function's URL."
  }
}
