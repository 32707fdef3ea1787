# The origin document's setup on Keybridge: the `secret/` mount, the
# `app-service` policy, Kubernetes login for service account `app-sa` in
# namespace `production` (1h tokens), and the database secret replicated to
# AWS Secrets Manager. No secret value (database password, AWS key) is
# stored in Terraform's state or plan: they arrive as ephemeral variables
# and go to write-only arguments.
#
#   export KEYBRIDGE_ADDR=https://keybridge.internal:8400 KEYBRIDGE_TOKEN=... KEYBRIDGE_CACERT=ca.pem
#   terraform apply \
#     -var aws_access_key_id=AKIA... -var aws_secret_access_key=... \
#     -var db_password=... -var k8s_signing_keys_pem="$(cat sa.pub)"

terraform {
  required_version = ">= 1.11"
  required_providers {
    keybridge = {
      source = "keybridge/keybridge"
    }
  }
}

provider "keybridge" {}

variable "aws_region" {
  type    = string
  default = "us-east-1"
}

variable "aws_endpoint_url" {
  description = "Only for an AWS-compatible test endpoint (moto, LocalStack)."
  type        = string
  default     = null
}

variable "aws_access_key_id" {
  type = string
}

variable "aws_secret_access_key" {
  type      = string
  sensitive = true
  ephemeral = true
}

variable "aws_credentials_version" {
  description = "Bump after changing aws_secret_access_key, to send it again."
  type        = number
  default     = 1
}

variable "db_password" {
  type      = string
  sensitive = true
  ephemeral = true
}

variable "db_password_version" {
  description = "Bump after changing db_password, to write it again."
  type        = number
  default     = 1
}

variable "k8s_signing_keys_pem" {
  description = "The cluster's service-account signing public keys (PEM)."
  type        = string
}

variable "k8s_issuer" {
  type    = string
  default = "https://kubernetes.default.svc.cluster.local"
}

# Every gateway starts with a local `secret/` mount: adopt it.
import {
  to = keybridge_mount.secret
  id = "secret"
}

resource "keybridge_mount" "secret" {
  path = "secret"
  type = "local"
}

resource "keybridge_mount" "aws" {
  path = "aws"
  type = "aws"
  config = merge(
    { region = var.aws_region, access_key_id = var.aws_access_key_id },
    var.aws_endpoint_url == null ? {} : { endpoint_url = var.aws_endpoint_url },
  )
  config_wo         = { secret_access_key = var.aws_secret_access_key }
  config_wo_version = var.aws_credentials_version
}

resource "keybridge_policy" "app_service" {
  name   = "app-service"
  policy = <<-EOT
    path "secret/data/database/*" {
      capabilities = ["read"]
    }
    path "database/creds/app-readonly" {
      capabilities = ["create", "read"]
    }
    path "pki/issue/app-tls" {
      capabilities = ["create", "read"]
      allowed_parameters = {
        "common_name" = ["*.app.internal"]
        "ttl" = ["24h"]
      }
    }
    # Deny all other paths by default
    path "*" {
      capabilities = ["deny"]
    }
  EOT
}

resource "keybridge_auth_backend" "kubernetes" {
  path     = "kubernetes"
  type     = "kubernetes"
  pem_keys = var.k8s_signing_keys_pem
  issuer   = var.k8s_issuer
  audience = "keybridge"
}

resource "keybridge_auth_kubernetes_role" "app_service" {
  backend                          = keybridge_auth_backend.kubernetes.path
  role_name                        = "app-service"
  bound_service_account_names      = ["app-sa"]
  bound_service_account_namespaces = ["production"]
  policies                         = [keybridge_policy.app_service.name]
  ttl                              = "1h"
}

resource "keybridge_secret" "database" {
  path            = "${keybridge_mount.secret.path}/database/app"
  data_wo         = { username = "app", password = var.db_password }
  data_wo_version = var.db_password_version
}

resource "keybridge_replication_rule" "database_to_aws" {
  name    = "database-to-aws"
  source  = "${keybridge_mount.secret.path}/database/"
  targets = ["${keybridge_mount.aws.path}/database/"]
}
