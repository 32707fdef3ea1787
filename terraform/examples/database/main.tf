# The origin document's two database resources, with only these changes:
#
# - the prefix: `vault_` became `keybridge_`;
# - `backend = "database"` on both. The document leaves `backend` out on the
#   connection (hashicorp/vault requires it too) and gives the role
#   `backend = <the connection's name>`: a mistake in the document, since
#   `backend` is the mount, not the connection (that is `db_name`);
# - the connection URL points at var.db_address and var.db_ca_file (the test
#   database), keeping `sslmode=verify-full` with `sslrootcert`.
#
# The `database/` mount must exist (`keybridge mount enable --type database
# database/`, or a keybridge_mount resource that these depend on).
#
#   terraform apply -var db_address=db.internal:5432 -var db_ca_file=/etc/keybridge/db-ca.pem \
#     -var db_password=...

terraform {
  required_version = ">= 1.11"
  required_providers {
    keybridge = {
      source = "keybridge/keybridge"
    }
  }
}

provider "keybridge" {}

variable "db_address" {
  description = "host:port of the PostgreSQL server."
  type        = string
}

variable "db_ca_file" {
  description = "The CA certificate that signed the server's, as a path on the gateway's machine."
  type        = string
}

variable "db_password" {
  description = "vault_admin's password."
  type        = string
  sensitive   = true
}

resource "keybridge_database_secret_backend_connection" "postgres" {
  backend       = "database"
  name          = "app"
  allowed_roles = ["app-readonly"]

  postgresql {
    connection_url = "postgresql://{{username}}:{{password}}@${var.db_address}/app?sslmode=verify-full&sslrootcert=${var.db_ca_file}"
    username       = "vault_admin"
    password       = var.db_password
  }
}

resource "keybridge_database_secret_backend_role" "app_readonly" {
  backend = "database"
  name    = "app-readonly"
  db_name = keybridge_database_secret_backend_connection.postgres.name
  creation_statements = [
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
    "GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\";",
  ]
  default_ttl = 86400  # 24h
  max_ttl     = 259200 # 72h
}
