path "sys/*" {
  policy = "sudo"
}
path "eng/+/role/*" {
  capabilities = ["update", "list"]
  denied_parameters = { "*" = [] }
  required_parameters = ["name"]
  min_wrapping_ttl = "1s"
}
