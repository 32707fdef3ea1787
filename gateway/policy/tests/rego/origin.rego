package vault
deny[msg] {
  input.capabilities[_] == "sudo"
  msg := "sudo capabilities are prohibited in production policies"
}
deny[msg] {
  input.path == "*"
  input.capabilities[_] != "deny"
  msg := "wildcard paths must explicitly deny access"
}
deny[msg] {
  not input.ttl
  msg := "all dynamic secret roles must define a TTL"
}
