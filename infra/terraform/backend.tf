# Partial configuration: the state bucket and prefix are given at init time, e.g.
#   terraform init -backend-config="bucket=my-project-tfstate" -backend-config="prefix=image-pipeline"
# (Cloud Build passes them from its substitutions). See README.md, "First deploy".
terraform {
  backend "gcs" {}
}
