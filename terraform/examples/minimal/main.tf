# The smallest useful configuration: one secret whose value never reaches
# Terraform's state or plan files.
#
#   export KEYBRIDGE_ADDR=http://127.0.0.1:8400 KEYBRIDGE_TOKEN=...
#   terraform apply -var api_key=...

terraform {
  required_version = ">= 1.11"
  required_providers {
    keybridge = {
      source = "keybridge/keybridge"
    }
  }
}

# Address and token from KEYBRIDGE_ADDR and KEYBRIDGE_TOKEN.
provider "keybridge" {}

variable "api_key" {
  type      = string
  sensitive = true
  # Ephemeral (Terraform 1.10+): the value is not kept in plan or state.
  ephemeral = true
}

resource "keybridge_secret" "api" {
  path            = "secret/app/api"
  data_wo         = { key = var.api_key }
  data_wo_version = 1 # bump to send a new api_key
  custom_metadata = { owner = "app-team" }
}

output "api_secret_version" {
  value = keybridge_secret.api.version
}
