# One runtime service account per function, each with only what its code uses.
# README.md, "Service accounts and roles", lists every grant and why.
locals {
  runtime_accounts = {
    api         = "HTTP API function (http_api)"
    generate    = "Image generation function (generate_images)"
    thumbnail   = "Thumbnail function (make_thumbnails)"
    dead_letter = "Dead-letter function (handle_dead_letters)"
  }

  # Storage grants per bucket. The generate function lists and creates
  # (create-only uploads, no overwrite or delete); the thumbnail function reads
  # images and creates thumbnails; the HTTP function signs read URLs, which
  # work only if it may read the objects itself.
  bucket_grants = concat(
    [
      { account = "api", bucket = "images", role = "roles/storage.objectViewer" },
      { account = "generate", bucket = "images", role = "roles/storage.objectViewer" },
      { account = "generate", bucket = "images", role = "roles/storage.objectCreator" },
      { account = "thumbnail", bucket = "images", role = "roles/storage.objectViewer" },
    ],
    local.separate_thumbnails_bucket ? [
      { account = "api", bucket = "thumbnails", role = "roles/storage.objectViewer" },
      { account = "thumbnail", bucket = "thumbnails", role = "roles/storage.objectViewer" },
      { account = "thumbnail", bucket = "thumbnails", role = "roles/storage.objectCreator" },
      ] : [
      { account = "thumbnail", bucket = "images", role = "roles/storage.objectCreator" },
    ],
  )
}

resource "google_service_account" "runtime" {
  for_each = local.runtime_accounts

  project      = var.project_id
  account_id   = "${var.name_prefix}-${replace(each.key, "_", "-")}"
  display_name = "${var.name_prefix}: ${each.value}"
  description  = "Runtime identity of the ${each.value}; Terraform-managed."
}

# Firestore (Native mode) reads, writes and transactions on the job documents.
resource "google_project_iam_member" "runtime_firestore_user" {
  for_each = local.runtime_accounts

  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.runtime[each.key].email}"
}

resource "google_storage_bucket_iam_member" "runtime" {
  for_each = { for grant in local.bucket_grants : "${grant.account}/${grant.bucket}/${grant.role}" => grant }

  bucket = local.bucket_names[each.value.bucket]
  role   = each.value.role
  member = "serviceAccount:${google_service_account.runtime[each.value.account].email}"
}

# V4 signed URLs from Cloud Functions are signed through IAM signBlob with the
# runtime account's own identity: it needs Token Creator on itself, nothing wider.
resource "google_service_account_iam_member" "api_signs_as_itself" {
  service_account_id = google_service_account.runtime["api"].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${google_service_account.runtime["api"].email}"
}

# ---------------------------------------------------------------- push invoker
# Pub/Sub signs each push request with an OIDC token of this account; it may
# invoke the three pushed functions and nothing else.
resource "google_service_account" "push_invoker" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-push-invoker"
  display_name = "${var.name_prefix}: Pub/Sub push invoker"
  description  = "Identity in the OIDC tokens of the push subscriptions; may only invoke the pushed functions."
}

resource "google_cloud_run_v2_service_iam_member" "push_invoker" {
  for_each = google_cloudfunctions2_function.pushed

  project  = var.project_id
  location = var.region
  name     = each.value.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.push_invoker.email}"
}

# The Pub/Sub service agent mints the OIDC tokens (needed explicitly in projects
# created before April 2021; granted on this one account, not on the project).
resource "google_service_account_iam_member" "pubsub_agent_token_creator" {
  service_account_id = google_service_account.push_invoker.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent

  depends_on = [google_project_service_identity.pubsub]
}

# ---------------------------------------------------------------- function builds
# Cloud Build builds each function's container with this account (new projects
# no longer let builds run as the default compute account with Editor).
resource "google_service_account" "function_build" {
  count = var.function_build_service_account == "" ? 1 : 0

  project      = var.project_id
  account_id   = "${var.name_prefix}-fn-build"
  display_name = "${var.name_prefix}: function builds"
  description  = "Cloud Build identity that builds the function containers."
}

resource "google_project_iam_member" "function_build_builder" {
  count = var.function_build_service_account == "" ? 1 : 0

  project = var.project_id
  role    = "roles/run.builder"
  member  = "serviceAccount:${google_service_account.function_build[0].email}"
}

locals {
  function_build_service_account    = var.function_build_service_account != "" ? var.function_build_service_account : google_service_account.function_build[0].email
  function_build_service_account_id = "projects/${var.project_id}/serviceAccounts/${local.function_build_service_account}"
}
