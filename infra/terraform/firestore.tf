# Job state: `batches`, `jobs`, `usage` and `idempotency` collections. Reads are
# by document id, plus two equality/`in` queries on jobs (spreadsheet, worksheet,
# state; spreadsheet, scene for style anchors) that single-field indexes serve,
# so no composite index is needed.
resource "google_firestore_database" "default" {
  count = var.firestore.create_database ? 1 : 0

  project                 = var.project_id
  name                    = "(default)"
  location_id             = var.firestore.location != "" ? var.firestore.location : var.region
  type                    = "FIRESTORE_NATIVE"
  delete_protection_state = "DELETE_PROTECTION_ENABLED"
  deletion_policy         = "ABANDON"

  depends_on = [time_sleep.apis_ready]
}

# Idempotency records and daily usage documents carry `expires_at`; Firestore's
# TTL deletes them some time after it (the code treats expired records as absent).
resource "google_firestore_field" "ttl" {
  for_each = toset(["idempotency", "usage"])

  project    = var.project_id
  database   = "(default)"
  collection = each.value
  field      = "expires_at"

  # A TTL field needs no index; leaving index_config empty removes the default ones.
  index_config {}
  ttl_config {}

  depends_on = [google_firestore_database.default, time_sleep.apis_ready]
}
