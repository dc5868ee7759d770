provider "google" {
  project        = var.project_id
  region         = var.region
  default_labels = var.labels
}

# Only for google_project_service_identity (the Pub/Sub service agent), a beta resource.
provider "google-beta" {
  project        = var.project_id
  region         = var.region
  default_labels = var.labels
}
