# Job state: `batches`, `jobs`, `usage`, `idempotency` and `economy_batches`
# collections. Reads are by document id, plus equality/`in` queries on jobs
# (spreadsheet, worksheet, state; spreadsheet, scene for style anchors) that
# single-field indexes serve, and two that order open jobs by age (the economy
# tick and the sweeper take the oldest first), served by one composite index.
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
  for_each = toset(["idempotency", "usage", "usage_reservations", "usage_settled"])

  project    = var.project_id
  database   = "(default)"
  collection = each.value
  field      = "expires_at"

  # A TTL field needs no index; leaving index_config empty removes the default ones.
  index_config {}
  ttl_config {}

  depends_on = [google_firestore_database.default, time_sleep.apis_ready]
}

# Open jobs of a lane, oldest first: `lane ==`, `state ==` (or `in`), order by `created_at`.
resource "google_firestore_index" "jobs_by_age" {
  project    = var.project_id
  database   = "(default)"
  collection = "jobs"

  fields {
    field_path = "lane"
    order      = "ASCENDING"
  }
  fields {
    field_path = "state"
    order      = "ASCENDING"
  }
  fields {
    field_path = "created_at"
    order      = "ASCENDING"
  }

  depends_on = [google_firestore_database.default, time_sleep.apis_ready]
}

# The sheet writer's query: a spreadsheet's jobs whose follow-ups (their rows)
# have not run, oldest change first (FirestoreJobStore.unfollowed_in).
resource "google_firestore_index" "jobs_unfollowed_by_sheet" {
  project    = var.project_id
  database   = "(default)"
  collection = "jobs"

  fields {
    field_path = "spreadsheet_id"
    order      = "ASCENDING"
  }
  fields {
    field_path = "followups_since"
    order      = "ASCENDING"
  }

  depends_on = [google_firestore_database.default, time_sleep.apis_ready]
}

# Maps that grow with a day's reservations and settled images, and a request's
# kept answer: never queried, so they get no index entries (each map key would
# cost two of a document's 40,000).
resource "google_firestore_field" "unindexed" {
  for_each = {
    "usage/reservations" = { collection = "usage", field = "reservations" }
    "usage/settled"      = { collection = "usage", field = "settled" }
    "idempotency/body"   = { collection = "idempotency", field = "body" }
    "idempotency/intent" = { collection = "idempotency", field = "intent" }
    # An export's image list (up to tens of KB): read with its batch, never queried.
    "batches/export.contents" = { collection = "batches", field = "export.contents" }
  }

  project    = var.project_id
  database   = "(default)"
  collection = each.value.collection
  field      = each.value.field

  index_config {}

  depends_on = [google_firestore_database.default, time_sleep.apis_ready]
}
