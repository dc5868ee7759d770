# Terraform creates the secrets, never their values: versions are added with
# `gcloud secrets versions add` (README.md, "First deploy"), so no secret value
# ever lands in the Terraform state. Functions read version "latest" at start.
# Keyed by the setting's name in lower case; settings.tf lists who reads which.
# With the Vertex AI backend there is no Gemini API key: the functions use their
# service accounts (iam.tf) instead. The Chat webhook's URL (its key and token let
# anyone post to the space) exists only with notifications.chat_webhook.
locals {
  secrets = merge(
    {
      api_key_hashes   = { env = "API_KEY_HASHES", format = "caller:sha256hex,caller:sha256hex" }
      link_signing_key = { env = "LINK_SIGNING_KEY", format = "random hex, 64 characters" }
    },
    local.vertex ? {} : { gemini_api_key = { env = "GEMINI_API_KEY", format = "a Gemini API key" } },
    var.notifications.chat_webhook ? { chat_webhook_url = { env = "CHAT_WEBHOOK_URL", format = "a Google Chat space's incoming-webhook URL" } } : {},
  )
}

resource "google_secret_manager_secret" "this" {
  for_each = local.secrets

  project   = var.project_id
  secret_id = "${var.name_prefix}-${replace(each.key, "_", "-")}"

  annotations = {
    env    = each.value.env
    format = each.value.format
    who    = join(", ", sort([for key, fn in local.functions : fn.entry_point if contains(fn.secrets, each.value.env)]))
  }

  replication {
    auto {}
  }

  depends_on = [time_sleep.apis_ready]
}

# Each function may read exactly the secrets it is given as environment variables.
resource "google_secret_manager_secret_iam_member" "runtime_accessor" {
  for_each = merge([
    for key, fn in local.functions : {
      for env in fn.secrets : "${key}/${env}" => { account = key, secret = lower(env) }
    }
  ]...)

  project   = var.project_id
  secret_id = google_secret_manager_secret.this[each.value.secret].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.this[each.value.account].email}"
}
