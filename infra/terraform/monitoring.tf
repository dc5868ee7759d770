# Log-based metrics over the functions' structured logs (shared/adapters/cloud_logging.py writes
# one JSON object per line: severity, message, job_id, state, duration_s, event,
# ...). Gen2 functions log as their Cloud Run service (resource cloud_run_revision).
locals {
  pipeline_logs = join(" AND ", [
    "resource.type=\"cloud_run_revision\"",
    "resource.labels.service_name=(${join(" OR ", [for name in values(local.function_names) : "\"${name}\""])})",
  ])

  # Counters; the time series carry the function as the resource label service_name.
  log_counters = {
    jobs_processed = {
      description = "Jobs that reached the end of the pipeline (log event job_finished)."
      filter      = "${local.pipeline_logs} AND jsonPayload.event=\"job_finished\""
    }
    job_errors = {
      description = "Failed jobs and variants (state failed) and every ERROR-or-worse entry of the functions."
      filter      = "${local.pipeline_logs} AND (jsonPayload.state=\"failed\" OR severity>=ERROR)"
    }
  }
}

resource "google_logging_metric" "counter" {
  for_each = local.log_counters

  project     = var.project_id
  name        = each.key
  description = "${each.value.description} The time series carry the function as the resource label service_name."
  filter      = each.value.filter

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }

  depends_on = [time_sleep.apis_ready]
}

resource "google_logging_metric" "job_duration_seconds" {
  project     = var.project_id
  name        = "job_duration_seconds"
  description = "Duration of finished jobs in seconds, from the duration_s field (seconds, a float) of the job_finished log entries."
  filter      = "${local.pipeline_logs} AND jsonPayload.event=\"job_finished\" AND jsonPayload.duration_s:*"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "s"
  }

  value_extractor = "EXTRACT(jsonPayload.duration_s)"

  # Bucket bounds in seconds: 1, 2, 4 ... 4096 s (about 68 min), then overflow.
  bucket_options {
    exponential_buckets {
      num_finite_buckets = 12
      growth_factor      = 2
      scale              = 1
    }
  }

  depends_on = [time_sleep.apis_ready]
}

# A new log-based metric can take up to 10 minutes to become visible to alert
# policies; until then creating the policy fails with 404 "Cannot find metric(s)"
# (terraform-provider-google issue #11102, open: the provider does not retry).
# The workaround used there: wait between the metric and the policy. The wait
# runs when the metric is (re)created, not on later applies.
resource "time_sleep" "log_metrics_visible" {
  create_duration = var.first_apply_waits.log_metrics

  triggers = {
    job_errors = google_logging_metric.counter["job_errors"].id
  }
}

resource "google_monitoring_alert_policy" "job_errors" {
  project      = var.project_id
  display_name = "${var.name_prefix}: job errors"
  combiner     = "OR"
  enabled      = true

  notification_channels = var.alerting.notification_channels

  conditions {
    display_name = "More than ${var.alerting.job_errors_threshold} job errors in ${var.alerting.job_errors_window}"

    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.counter["job_errors"].name}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alerting.job_errors_threshold
      duration        = "0s"

      aggregations {
        alignment_period     = var.alerting.job_errors_window
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }

      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "1800s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      Jobs or variants failed, or a function logged an error.
      Look at the functions' logs: `resource.type="cloud_run_revision" jsonPayload.state="failed"` or `severity>=ERROR`,
      and at the dead-letter topic `${var.pubsub.dead_letter_topic}` (its handler marks such jobs failed in the sheet).
    EOT
  }

  depends_on = [time_sleep.log_metrics_visible]
}
