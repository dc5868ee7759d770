locals {
  bucket_location            = var.bucket_location != "" ? var.bucket_location : upper(var.region)
  images_bucket_name         = var.images_bucket_name != "" ? var.images_bucket_name : "${var.project_id}-images"
  separate_thumbnails_bucket = var.thumbnails_bucket_name != ""
  # THUMBNAILS_BUCKET: the code falls back to IMAGES_BUCKET when it is empty; we pass it either way.
  thumbnails_bucket_name = local.separate_thumbnails_bucket ? google_storage_bucket.thumbnails[0].name : google_storage_bucket.images.name
  bucket_names = {
    images     = google_storage_bucket.images.name
    thumbnails = local.thumbnails_bucket_name
  }
}

# ---------------------------------------------------------------- images (and, by default, thumbnails)
resource "google_storage_bucket" "images" {
  #checkov:skip=CKV_GCP_62:Access logs of this bucket would be storage logs in another bucket; Cloud Audit Logs (Data Access for Cloud Storage) are the place to turn on if reads must be audited.
  name                        = local.images_bucket_name
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
      days_since_noncurrent_time = var.noncurrent_version_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "thumbnails" {
  #checkov:skip=CKV_GCP_62:Access logs of this bucket would be storage logs in another bucket; Cloud Audit Logs (Data Access for Cloud Storage) are the place to turn on if reads must be audited.
  count = local.separate_thumbnails_bucket ? 1 : 0

  name                        = var.thumbnails_bucket_name
  project                     = var.project_id
  location                    = local.bucket_location
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

# ---------------------------------------------------------------- GCS notification -> Pub/Sub
# The Cloud Storage service agent publishes the notifications; the data source
# also makes Google create the agent if it does not exist yet.
data "google_storage_project_service_account" "gcs" {
  project = var.project_id

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic_iam_member" "gcs_events_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.gcs_events.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_storage_notification" "images_finalized" {
  bucket             = google_storage_bucket.images.name
  topic              = google_pubsub_topic.gcs_events.id
  payload_format     = "JSON_API_V1"
  event_types        = ["OBJECT_FINALIZE"]
  object_name_prefix = var.images_prefix

  depends_on = [google_pubsub_topic_iam_member.gcs_events_publisher]
}

# ---------------------------------------------------------------- function source
resource "google_storage_bucket" "source" {
  #checkov:skip=CKV_GCP_62:Holds only the functions' source zips, read by Cloud Build; access logs add cost and no signal.
  name                        = "${var.project_id}-${var.name_prefix}-source"
  project                     = var.project_id
  location                    = local.bucket_location
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

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
  bucket       = google_storage_bucket.source.name
  source       = local.source_archive_path
  content_type = "application/zip"
}
