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
