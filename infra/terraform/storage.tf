locals {
  bucket_location            = var.storage.location != "" ? var.storage.location : upper(var.region)
  separate_thumbnails_bucket = var.storage.thumbnails_bucket_name != ""
  # Every bucket by role, each with the same settings: the private images bucket
  # (thumbnails too unless they get their own), and the functions' source zips.
  bucket_names = merge(
    {
      images = local.images_bucket_name
      source = "${var.project_id}-${var.name_prefix}-source"
    },
    local.separate_thumbnails_bucket ? { thumbnails = local.thumbnails_bucket_name } : {},
  )
}

resource "google_storage_bucket" "this" {
  #checkov:skip=CKV_GCP_62:Access logs of these buckets would be storage logs in another bucket; Cloud Audit Logs (Data Access for Cloud Storage) are the place to turn on if reads must be audited, and the source bucket holds only the functions' zips.
  for_each = local.bucket_names

  name                        = each.value
  project                     = var.project_id
  location                    = local.bucket_location
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  # Objects are written create-only; versioning only keeps what someone deletes, for a while.
  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.storage.noncurrent_version_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [time_sleep.apis_ready]
}

# ---------------------------------------------------------------- GCS notification -> Pub/Sub
# The Cloud Storage service agent publishes the notifications; the data source
# also makes Google create the agent if it does not exist yet.
data "google_storage_project_service_account" "gcs" {
  project = var.project_id

  depends_on = [time_sleep.apis_ready]
}

# Its publisher grant on the topic: pubsub.tf, google_pubsub_topic_iam_member.publisher.
# The topic is given as projects/P/topics/T (the topic's id), the only form the
# provider accepts since 7.0.
resource "google_storage_notification" "images_finalized" {
  bucket             = google_storage_bucket.this["images"].name
  topic              = google_pubsub_topic.this["gcs_events"].id
  payload_format     = "JSON_API_V1"
  event_types        = ["OBJECT_FINALIZE"]
  object_name_prefix = var.storage.images_prefix

  # Google checks at creation that the service agent may publish there.
  depends_on = [time_sleep.iam_propagation]
}

# ---------------------------------------------------------------- function source
# The deployable files: main.py, requirements.txt, functions/ and shared/ without
# Python caches. Cloud Build's scripts/package_source.py zips the same list, and
# .gcloudignore lets the same files through (tests/unit/test_infra.py checks both).
# Text files only: archive_file takes each file's content as a string.
locals {
  repo_root       = abspath("${path.module}/../..")
  source_patterns = ["main.py", "requirements.txt", "functions/**", "shared/**"]
  source_files = sort([
    for file in flatten([for pattern in local.source_patterns : tolist(fileset(local.repo_root, pattern))]) :
    file if !strcontains(file, "__pycache__")
  ])
}

data "archive_file" "source" {
  count = var.source_archive_path == "" ? 1 : 0

  type        = "zip"
  output_path = "${path.module}/.terraform/build/function-source.zip" # .terraform/ is git-ignored

  dynamic "source" {
    for_each = local.source_files
    content {
      filename = source.value
      content  = file("${local.repo_root}/${source.value}")
    }
  }
}

locals {
  source_archive_path   = var.source_archive_path != "" ? var.source_archive_path : data.archive_file.source[0].output_path
  source_archive_sha256 = var.source_archive_path != "" ? filesha256(var.source_archive_path) : data.archive_file.source[0].output_sha256
}

# Named by the zip's hash: a new name (and so a new build) exactly when the code changes.
resource "google_storage_bucket_object" "source" {
  name         = "function-source-${local.source_archive_sha256}.zip"
  bucket       = google_storage_bucket.this["source"].name
  source       = local.source_archive_path
  content_type = "application/zip"
}
