locals {
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  # The five topics; the dead-letter one also keeps its messages for replay.
  topics = {
    jobs        = { name = var.pubsub.jobs_topic, retention = null }
    gcs_events  = { name = var.pubsub.gcs_events_topic, retention = null }
    dead_letter = { name = var.pubsub.dead_letter_topic, retention = var.pubsub.dead_letter_topic_retention }
    exports     = { name = var.pubsub.exports_topic, retention = null }
    sheet_rows  = { name = var.pubsub.sheet_rows_topic, retention = null }
  }

  # Who publishes to which topic: the HTTP function its jobs (first images,
  # re-rolls, the rows of cancelled jobs) and export requests, the economy tick
  # the jobs an expired Gemini batch did not make (and, as the sweeper, live jobs
  # and exports whose message was lost), the Cloud Storage service agent
  # the bucket notifications, the Pub/Sub service agent the dead letters.
  topic_publishers = {
    "jobs/api"     = { topic = "jobs", member = "serviceAccount:${google_service_account.this["api"].email}" }
    "jobs/economy" = { topic = "jobs", member = "serviceAccount:${google_service_account.this["economy"].email}" }
    gcs_events     = { topic = "gcs_events", member = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}" }
    dead_letter    = { topic = "dead_letter", member = local.pubsub_service_agent }
    "exports/api"  = { topic = "exports", member = "serviceAccount:${google_service_account.this["api"].email}" }
    # The sweeper (run with the economy tick) publishes exports whose message was lost.
    "exports/economy" = { topic = "exports", member = "serviceAccount:${google_service_account.this["economy"].email}" }
    # The exporter queues the delivery that goes on with a zip too large for one.
    "exports/export" = { topic = "exports", member = "serviceAccount:${google_service_account.this["export"].email}" }
  }
  # Every function that changes jobs queues their spreadsheets for the sheet writer
  # (which queues a spreadsheet again when it has more rows than one write).
  row_publishers = {
    for key in local.sheet_writers : "sheet_rows/${key}" => {
      topic  = "sheet_rows"
      member = "serviceAccount:${google_service_account.this[key].email}"
    }
  }

  # Direct push subscriptions (not Eventarc), as the local stack wires them
  # (devstack/stack.py): the endpoint's path names the topic, so the CloudEvent
  # that functions-framework builds has the topic as its source.
  push_subscriptions = {
    generate = {
      name        = "${var.pubsub.jobs_topic}-generate"
      topic       = google_pubsub_topic.this["jobs"].name
      function    = "generate"
      dead_letter = true
    }
    thumbnail = {
      name        = "${var.pubsub.gcs_events_topic}-thumbnail"
      topic       = google_pubsub_topic.this["gcs_events"].name
      function    = "thumbnail"
      dead_letter = true
    }
    dead_letter = {
      name        = "${var.pubsub.dead_letter_topic}-handler"
      topic       = google_pubsub_topic.this["dead_letter"].name
      function    = "dead_letter"
      dead_letter = false
    }
    export = {
      name        = "${var.pubsub.exports_topic}-export"
      topic       = google_pubsub_topic.this["exports"].name
      function    = "export"
      dead_letter = true
    }
    # No dead letters: a rows message only asks for rows to be written again, and
    # the sweeper follows up any job whose row is left stale.
    rows = {
      name        = "${var.pubsub.sheet_rows_topic}-rows"
      topic       = google_pubsub_topic.this["sheet_rows"].name
      function    = "rows"
      dead_letter = false
    }
  }
}

# ---------------------------------------------------------------- topics
resource "google_pubsub_topic" "this" {
  #checkov:skip=CKV_GCP_83:Encrypted with Google-managed keys; the messages hold job ids, prompts and object metadata, not secrets, and a CMEK key would add KMS cost and key management.
  for_each = local.topics

  name                       = each.value.name
  project                    = var.project_id
  message_retention_duration = each.value.retention

  depends_on = [time_sleep.apis_ready]
}

# ---------------------------------------------------------------- push subscriptions
resource "google_pubsub_subscription" "push" {
  for_each = local.push_subscriptions

  name                       = each.value.name
  project                    = var.project_id
  topic                      = each.value.topic
  ack_deadline_seconds       = var.pubsub.ack_deadline_seconds
  message_retention_duration = var.pubsub.message_retention_duration

  expiration_policy {
    ttl = "" # never expire, however quiet the topic
  }

  retry_policy {
    minimum_backoff = var.pubsub.retry_minimum_backoff
    maximum_backoff = var.pubsub.retry_maximum_backoff
  }

  dynamic "dead_letter_policy" {
    for_each = each.value.dead_letter ? [google_pubsub_topic.this["dead_letter"].id] : []
    content {
      dead_letter_topic     = dead_letter_policy.value
      max_delivery_attempts = var.pubsub.max_delivery_attempts
    }
  }

  push_config {
    push_endpoint = "${google_cloudfunctions2_function.this[each.value.function].service_config[0].uri}/projects/${var.project_id}/topics/${each.value.topic}"

    oidc_token {
      service_account_email = google_service_account.this["push_invoker"].email
      audience              = google_cloudfunctions2_function.this[each.value.function].service_config[0].uri
    }
  }

  # Deliveries before the invoker may call the function would only be 403s.
  depends_on = [
    google_cloud_run_v2_service_iam_member.invoker,
    google_service_account_iam_member.token_creator,
  ]
}

# ---------------------------------------------------------------- publishers
resource "google_pubsub_topic_iam_member" "publisher" {
  for_each = merge(local.topic_publishers, local.row_publishers)

  project = var.project_id
  topic   = google_pubsub_topic.this[each.value.topic].name
  role    = "roles/pubsub.publisher"
  member  = each.value.member

  depends_on = [google_project_service_identity.pubsub]
}

# ---------------------------------------------------------------- dead letters
# The Pub/Sub service agent forwards undeliverable messages: it publishes to the
# dead-letter topic (above) and acknowledges on the source subscriptions.
resource "google_pubsub_subscription_iam_member" "dead_letter_source_subscriber" {
  for_each = { for key, sub in local.push_subscriptions : key => sub if sub.dead_letter }

  project      = var.project_id
  subscription = google_pubsub_subscription.push[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent

  depends_on = [google_project_service_identity.pubsub]
}
