# Log-based metrics over the functions' structured logs (shared/logs.py writes
# one JSON object per line: severity, message, job_id, state, duration_ms, event,
# ...). Gen2 functions log as their Cloud Run service (resource cloud_run_revision).
locals {
  pipeline_logs = join(" AND ", [
    "resource.type=\"cloud_run_revision\"",
    "resource.labels.service_name=(${join(" OR ", [for name in values(local.function_names) : "\"${name}\""])})",
  ])
}

resource "google_logging_metric" "jobs_processed" {
  project     = var.project_id
  name        = "jobs_processed"
  description = "Jobs that reached the end of the pipeline (log event job_finished); the time series carry the function as the resource label service_name."
  filter      = "${local.pipeline_logs} AND jsonPayload.event=\"job_finished\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }

  depends_on = [google_project_service.apis]
}

resource "google_logging_metric" "job_duration_seconds" {
  project     = var.project_id
  name        = "job_duration_seconds"
  description = "Duration of finished jobs, from the duration_ms field of the job_finished log entries (the values are milliseconds, hence unit ms)."
  filter      = "${local.pipeline_logs} AND jsonPayload.event=\"job_finished\" AND jsonPayload.duration_ms:*"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "ms"
  }

  value_extractor = "EXTRACT(jsonPayload.duration_ms)"

  # 1 s, 2 s, 4 s ... about 68 min.
  bucket_options {
    exponential_buckets {
      num_finite_buckets = 12
      growth_factor      = 2
      scale              = 1000
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_logging_metric" "job_errors" {
  project     = var.project_id
  name        = "job_errors"
  description = "Failed jobs and variants (state failed) and every ERROR-or-worse entry of the functions; the time series carry the function as the resource label service_name."
  filter      = "${local.pipeline_logs} AND (jsonPayload.state=\"failed\" OR severity>=ERROR)"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }

  depends_on = [google_project_service.apis]
}

resource "google_monitoring_alert_policy" "job_errors" {
  project      = var.project_id
  display_name = "${var.name_prefix}: job errors"
  combiner     = "OR"
  enabled      = true

  notification_channels = var.notification_channels

  conditions {
    display_name = "More than ${var.job_errors_alert_threshold} job errors in ${var.job_errors_alert_window}"

    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.job_errors.name}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.job_errors_alert_threshold
      duration        = "0s"

      aggregations {
        alignment_period     = var.job_errors_alert_window
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
      and at the dead-letter topic `${var.dead_letter_topic}` (its handler marks such jobs failed in the sheet).
    EOT
  }

  depends_on = [google_project_service.apis]
}
