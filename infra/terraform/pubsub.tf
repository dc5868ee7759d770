locals {
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  # Direct push subscriptions (not Eventarc), as the local stack wires them
  # (devstack/stack.py): the endpoint's path names the topic, so the CloudEvent
  # that functions-framework builds has the topic as its source.
  push_subscriptions = {
    generate = {
      name        = "${var.jobs_topic}-generate"
      topic       = google_pubsub_topic.jobs.name
      function    = "generate"
      dead_letter = true
    }
    thumbnail = {
      name        = "${var.gcs_events_topic}-thumbnail"
      topic       = google_pubsub_topic.gcs_events.name
      function    = "thumbnail"
      dead_letter = true
    }
    dead_letter = {
      name        = "${var.dead_letter_topic}-handler"
      topic       = google_pubsub_topic.dead_letter.name
      function    = "dead_letter"
      dead_letter = false
    }
  }
}

# ---------------------------------------------------------------- topics
resource "google_pubsub_topic" "jobs" {
  #checkov:skip=CKV_GCP_83:Encrypted with Google-managed keys; job messages hold ids and prompts, not secrets, and a CMEK key would add KMS cost and key management.
  name    = var.jobs_topic
  project = var.project_id

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "gcs_events" {
  #checkov:skip=CKV_GCP_83:Encrypted with Google-managed keys; notifications hold object metadata only.
  name    = var.gcs_events_topic
  project = var.project_id

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Encrypted with Google-managed keys, like the topics it collects from.
  name                       = var.dead_letter_topic
  project                    = var.project_id
  message_retention_duration = var.dead_letter_topic_retention

  depends_on = [google_project_service.apis]
}

# ---------------------------------------------------------------- push subscriptions
resource "google_pubsub_subscription" "push" {
  for_each = local.push_subscriptions

  name                       = each.value.name
  project                    = var.project_id
  topic                      = each.value.topic
  ack_deadline_seconds       = var.ack_deadline_seconds
  message_retention_duration = var.message_retention_duration

  expiration_policy {
    ttl = "" # never expire, however quiet the topic
  }

  retry_policy {
    minimum_backoff = var.retry_minimum_backoff
    maximum_backoff = var.retry_maximum_backoff
  }

  dynamic "dead_letter_policy" {
    for_each = each.value.dead_letter ? [google_pubsub_topic.dead_letter.id] : []
    content {
      dead_letter_topic     = dead_letter_policy.value
      max_delivery_attempts = var.max_delivery_attempts
    }
  }

  push_config {
    push_endpoint = "${google_cloudfunctions2_function.pushed[each.value.function].service_config[0].uri}/projects/${var.project_id}/topics/${each.value.topic}"

    oidc_token {
      service_account_email = google_service_account.push_invoker.email
      audience              = google_cloudfunctions2_function.pushed[each.value.function].service_config[0].uri
    }
  }

  lifecycle {
    precondition {
      condition     = tonumber(trimsuffix(var.retry_minimum_backoff, "s")) <= tonumber(trimsuffix(var.retry_maximum_backoff, "s"))
      error_message = "retry_minimum_backoff must not exceed retry_maximum_backoff."
    }
  }

  # Deliveries before the invoker may call the function would only be 403s.
  depends_on = [
    google_cloud_run_v2_service_iam_member.push_invoker,
    google_service_account_iam_member.pubsub_agent_token_creator,
  ]
}

# ---------------------------------------------------------------- dead letters
# The Pub/Sub service agent forwards undeliverable messages: it publishes to the
# dead-letter topic and acknowledges on the source subscriptions.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent

  depends_on = [google_project_service_identity.pubsub]
}

resource "google_pubsub_subscription_iam_member" "dead_letter_source_subscriber" {
  for_each = { for key, sub in local.push_subscriptions : key => sub if sub.dead_letter }

  project      = var.project_id
  subscription = google_pubsub_subscription.push[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent

  depends_on = [google_project_service_identity.pubsub]
}

# ---------------------------------------------------------------- jobs topic publisher
resource "google_pubsub_topic_iam_member" "jobs_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.jobs.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${google_service_account.runtime["api"].email}"
}
