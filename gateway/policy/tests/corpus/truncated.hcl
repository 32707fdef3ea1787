path "a" {
 capabilities = ["read"
