# Written for and checked against the google and google-beta provider 8.x (the
# current major as of 2026-11), Terraform >= 1.5 (Cloud Build runs 1.9.8).
# Upgrade notes from 6.x: README.md, "Provider versions".
terraform {
  required_version = ">= 1.9"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 8.0"
    }
    google-beta = {
      source  = "hashicorp/google-beta"
      version = "~> 8.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.4"
    }
    # time_sleep: the waits a new project needs (apis.tf, iam.tf, monitoring.tf).
    time = {
      source  = "hashicorp/time"
      version = "~> 0.13"
    }
  }
}
