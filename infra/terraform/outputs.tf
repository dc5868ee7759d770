output "http_function_url" {
  description = "Base URL of the HTTP function (PUBLIC_BASE_URL): give it to the sheet's Apps Script."
  value       = local.public_base_url
}

output "http_function_run_uri" {
  description = "The HTTP function's Cloud Run URL (run.app); serves the same routes."
  value       = google_cloudfunctions2_function.this["api"].service_config[0].uri
}

output "function_names" {
  description = "Deployed function names by role (api, generate, thumbnail, dead_letter, economy, export)."
  value       = { for key, fn in google_cloudfunctions2_function.this : key => fn.name }
}

output "service_account_emails" {
  description = "Runtime service account of each function (api, generate, thumbnail, dead_letter, economy, export), plus the push and scheduler invokers and the function build account."
  value = merge(
    { for key, sa in google_service_account.this : key => sa.email if key != "fn_build" },
    { function_build = local.function_build_service_account },
  )
}

output "sheet_editor_emails" {
  description = "Service accounts to share the spreadsheet with as editors (the functions that write rows)."
  value       = [for key in local.sheet_writers : google_service_account.this[key].email]
}

output "sheet_reader_emails" {
  description = "Service accounts to share the spreadsheet with as viewers (the HTTP function reads the header and scene_id column before a batch is paid for)."
  value       = [google_service_account.this["api"].email]
}

output "export_service_account_email" {
  description = "The export function's service account: share the team's Google Drive delivery folder (in a shared drive) with it as Content manager."
  value       = google_service_account.this["export"].email
}

output "images_bucket" {
  description = "Private images bucket (IMAGES_BUCKET)."
  value       = google_storage_bucket.this["images"].name
}

output "thumbnails_bucket" {
  description = "Bucket of the thumbnails (THUMBNAILS_BUCKET): the images bucket unless storage.thumbnails_bucket_name is set."
  value       = google_storage_bucket.this[local.separate_thumbnails_bucket ? "thumbnails" : "images"].name
}

output "source_bucket" {
  description = "Bucket of the functions' source zips."
  value       = google_storage_bucket.this["source"].name
}

output "source_object" {
  description = "Source zip the functions were built from (named by its SHA-256)."
  value       = google_storage_bucket_object.source.name
}

output "topics" {
  description = "Pub/Sub topic names: jobs, GCS events, dead letters, exports."
  value       = { for key, topic in google_pubsub_topic.this : key => topic.name }
}

output "subscriptions" {
  description = "Push subscription names by function."
  value       = { for key, sub in google_pubsub_subscription.push : key => sub.name }
}

output "secret_ids" {
  description = "Secret Manager secrets whose versions must be added before the first apply of the functions."
  value       = { for key, secret in google_secret_manager_secret.this : local.secrets[key].env => secret.secret_id }
}
