# The economy lane's tick: Cloud Scheduler calls run_economy with an OIDC token of
# its own service account (run.invoker on that function only, iam.tf). It calls the
# service's run.app URI, not the cloudfunctions.net URL: the function's ingress is
# internal-only, and Cloud Run counts a Scheduler request as internal only on the
# run.app URL (on the other, it is refused with PERMISSION_DENIED). A tick
# submits pending economy variants in Gemini batches and collects finished ones;
# leases on each batch keep overlapping ticks apart, so a retried or late tick is
# harmless.
resource "google_cloud_scheduler_job" "economy" {
  name        = "${var.name_prefix}-economy-tick"
  project     = var.project_id
  region      = var.region
  description = "Economy lane tick: submit and collect Gemini batches (run_economy)."
  schedule    = var.economy.schedule
  time_zone   = var.economy.time_zone
  # A tick stops starting work after ECONOMY_TICK_BUDGET_S; the function's timeout
  # bounds the rest.
  attempt_deadline = "${local.function_sizing.economy.timeout_seconds}s"

  retry_config {
    retry_count = 0 # the next tick is the retry
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.this["economy"].service_config[0].uri

    oidc_token {
      service_account_email = google_service_account.this["scheduler_invoker"].email
      audience              = google_cloudfunctions2_function.this["economy"].service_config[0].uri
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.invoker]
}
