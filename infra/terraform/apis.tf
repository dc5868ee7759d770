locals {
  # Why each API: see README.md, "Resources". Vertex AI only with that backend.
  required_apis = setunion(local.base_apis, local.vertex ? ["aiplatform.googleapis.com"] : [])
  base_apis = toset([
    "artifactregistry.googleapis.com",     # function container images
    "cloudbuild.googleapis.com",           # builds the functions from the source zip
    "cloudfunctions.googleapis.com",       # Cloud Functions gen2
    "cloudresourcemanager.googleapis.com", # project IAM bindings, the project data source
    "cloudscheduler.googleapis.com",       # the economy lane's tick
    "drive.googleapis.com",                # deliveries into a team's Google Drive folder (export function)
    "firestore.googleapis.com",            # job state
    "iam.googleapis.com",                  # service accounts
    "iamcredentials.googleapis.com",       # signBlob for V4 signed URLs, OIDC tokens for push
    "logging.googleapis.com",              # structured logs, log-based metrics
    "monitoring.googleapis.com",           # alert policy
    "pubsub.googleapis.com",               # jobs, GCS events, dead letters
    "run.googleapis.com",                  # the Cloud Run services behind gen2 functions
    "secretmanager.googleapis.com",        # Gemini key, API-key hashes, link-signing key
    "storage.googleapis.com",              # images and source buckets
  ])
}

resource "google_project_service" "apis" {
  for_each = var.enable_apis ? local.required_apis : toset([])

  project                    = var.project_id
  service                    = each.value
  disable_on_destroy         = false
  disable_dependent_services = false
}

# Enabling an API is eventually consistent: the provider's guide
# ("google_project_service", Newly activated service errors) recommends a
# time_sleep before using it. Everything that calls a Google API depends on this
# wait, which runs when the set of APIs changes and never on later applies.
resource "time_sleep" "apis_ready" {
  create_duration = var.enable_apis ? var.first_apply_waits.apis : "0s"

  triggers = {
    apis = join(",", sort(keys(google_project_service.apis)))
  }
}

# Needs the Resource Manager API: read only once the APIs are ready (on the first
# apply that means during apply, not plan).
data "google_project" "this" {
  project_id = var.project_id

  depends_on = [time_sleep.apis_ready]
}

# The Pub/Sub service agent (service-NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com)
# exists only once something asked for it; create it before granting it roles.
# Still a google-beta resource in 8.x.
resource "google_project_service_identity" "pubsub" {
  provider = google-beta

  project = var.project_id
  service = "pubsub.googleapis.com"

  depends_on = [time_sleep.apis_ready]
}
