# One runtime service account per function, each with only what its code uses;
# the push invoker; the function build account unless one is given.
# README.md, "Service accounts and roles", lists every grant and why.
locals {
  service_accounts = merge(
    {
      for key, fn in local.functions : key => {
        display_name = "${fn.entry_point} function"
        description  = "Runtime identity of the ${fn.entry_point} function; Terraform-managed."
      }
    },
    {
      push_invoker = {
        display_name = "Pub/Sub push invoker"
        description  = "Identity in the OIDC tokens of the push subscriptions; may only invoke the pushed functions."
      }
      scheduler_invoker = {
        display_name = "Cloud Scheduler invoker"
        description  = "Identity in the OIDC token of the economy tick's scheduler job; may only invoke run_economy."
      }
    },
    var.function_build_service_account == "" ? {
      fn_build = {
        display_name = "function builds"
        description  = "Cloud Build identity that builds the function containers."
      }
    } : {},
  )

  function_build_service_account    = var.function_build_service_account != "" ? var.function_build_service_account : google_service_account.this["fn_build"].email
  function_build_service_account_id = "projects/${var.project_id}/serviceAccounts/${local.function_build_service_account}"

  # Project-level grants: Firestore (Native mode) reads, writes and transactions
  # for every function; Cloud Build's builder role for the build account (new
  # projects no longer let builds run as the default compute account with Editor).
  project_grants = merge(
    { for key in keys(local.functions) : "${key}/datastore.user" => { account = key, role = "roles/datastore.user" } },
    # Vertex AI backend: the generate function calls the model, the HTTP function
    # looks it up (the batch preflight), both as themselves.
    local.vertex ? {
      "generate/aiplatform.user" = { account = "generate", role = "roles/aiplatform.user" }
      "api/aiplatform.user"      = { account = "api", role = "roles/aiplatform.user" }
    } : {},
    var.function_build_service_account == "" ? { "fn_build/run.builder" = { account = "fn_build", role = "roles/run.builder" } } : {},
  )

  # Storage grants per bucket. The generate function lists and creates
  # (create-only uploads, no overwrite or delete); the thumbnail function reads
  # images and creates thumbnails; the export function reads images and creates
  # zips; the HTTP function signs read URLs (images, thumbnails, zips), which
  # work only if it may read the objects itself.
  bucket_grants = concat(
    [
      { account = "api", bucket = "images", role = "roles/storage.objectViewer" },
      { account = "generate", bucket = "images", role = "roles/storage.objectViewer" },
      { account = "generate", bucket = "images", role = "roles/storage.objectCreator" },
      { account = "economy", bucket = "images", role = "roles/storage.objectViewer" },
      { account = "economy", bucket = "images", role = "roles/storage.objectCreator" },
      { account = "thumbnail", bucket = "images", role = "roles/storage.objectViewer" },
      # The exporter reads images and creates zips under exports_prefix.
      { account = "export", bucket = "images", role = "roles/storage.objectViewer" },
      { account = "export", bucket = "images", role = "roles/storage.objectCreator" },
    ],
    local.separate_thumbnails_bucket ? [
      { account = "api", bucket = "thumbnails", role = "roles/storage.objectViewer" },
      { account = "thumbnail", bucket = "thumbnails", role = "roles/storage.objectViewer" },
      { account = "thumbnail", bucket = "thumbnails", role = "roles/storage.objectCreator" },
      ] : [
      { account = "thumbnail", bucket = "images", role = "roles/storage.objectCreator" },
    ],
  )

  # Token Creator on one service account, never on the project: V4 signed URLs
  # from Cloud Functions are signed through IAM signBlob with the HTTP function's
  # own identity; the Pub/Sub service agent mints the push invoker's OIDC tokens
  # (needed explicitly in projects created before April 2021).
  token_creators = {
    api_signs_as_itself = { account = "api", member = "serviceAccount:${google_service_account.this["api"].email}" }
    pubsub_agent_mints  = { account = "push_invoker", member = local.pubsub_service_agent }
  }
}

resource "google_service_account" "this" {
  for_each = local.service_accounts

  project      = var.project_id
  account_id   = "${var.name_prefix}-${replace(each.key, "_", "-")}"
  display_name = "${var.name_prefix}: ${each.value.display_name}"
  description  = each.value.description

  depends_on = [time_sleep.apis_ready]
}

resource "google_project_iam_member" "this" {
  for_each = local.project_grants

  project = var.project_id
  role    = each.value.role
  member  = "serviceAccount:${google_service_account.this[each.value.account].email}"
}

resource "google_storage_bucket_iam_member" "runtime" {
  for_each = { for grant in local.bucket_grants : "${grant.account}/${grant.bucket}/${grant.role}" => grant }

  bucket = google_storage_bucket.this[each.value.bucket].name
  role   = each.value.role
  member = "serviceAccount:${google_service_account.this[each.value.account].email}"
}

resource "google_service_account_iam_member" "token_creator" {
  for_each = local.token_creators

  service_account_id = google_service_account.this[each.value.account].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = each.value.member

  depends_on = [google_project_service_identity.pubsub]
}

# The push invoker may invoke the pushed functions and nothing else; the
# scheduler's invoker only the economy tick.
resource "google_cloud_run_v2_service_iam_member" "invoker" {
  for_each = {
    for key, fn in google_cloudfunctions2_function.this : key => fn if !local.functions[key].public
  }

  project  = var.project_id
  location = var.region
  name     = each.value.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.this[each.key == "economy" ? "scheduler_invoker" : "push_invoker"].email}"
}

# ---------------------------------------------------------------- IAM propagation
# IAM grants are eventually consistent: typically 2 minutes, sometimes 7 or more
# (IAM documentation, "Access change propagation"). A function build fails if
# its build account cannot act yet, a revision if its runtime account cannot read
# its secrets, the bucket notification if the storage agent cannot publish. So
# these wait once after the grants they need, and again only when that set of
# grants changes; later applies do not wait.
resource "time_sleep" "iam_propagation" {
  create_duration = var.first_apply_waits.iam

  triggers = {
    grants = sha1(jsonencode([
      keys(google_project_iam_member.this),
      keys(google_storage_bucket_iam_member.runtime),
      keys(google_secret_manager_secret_iam_member.runtime_accessor),
      keys(google_service_account_iam_member.token_creator),
      keys(google_pubsub_topic_iam_member.publisher),
    ]))
  }
}
