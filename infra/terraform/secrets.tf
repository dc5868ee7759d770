# Terraform creates the secrets, never their values: versions are added with
# `gcloud secrets versions add` (README.md, "First deploy"), so no secret value
# ever lands in the Terraform state. Functions read version "latest" at start.

resource "google_secret_manager_secret" "gemini_api_key" {
  project   = var.project_id
  secret_id = "${var.name_prefix}-gemini-api-key"

  annotations = {
    env = "GEMINI_API_KEY"
    who = "generate function"
  }

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret" "api_key_hashes" {
  project   = var.project_id
  secret_id = "${var.name_prefix}-api-key-hashes"

  annotations = {
    env    = "API_KEY_HASHES"
    who    = "HTTP function"
    format = "caller:sha256hex,caller:sha256hex"
  }

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret" "link_signing_key" {
  project   = var.project_id
  secret_id = "${var.name_prefix}-link-signing-key"

  annotations = {
    env = "LINK_SIGNING_KEY"
    who = "HTTP, generate, thumbnail and dead-letter functions"
  }

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

# Each function may read exactly the secrets it is given as environment variables.
resource "google_secret_manager_secret_iam_member" "runtime_accessor" {
  for_each = merge([
    for key, fn in local.functions : {
      for env, secret_id in fn.secrets : "${key}/${env}" => {
        account   = key
        secret_id = secret_id
      }
    }
  ]...)

  project   = var.project_id
  secret_id = each.value.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.runtime[each.value.account].email}"
}
