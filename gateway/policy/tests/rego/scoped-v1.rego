package keybridge.lint

import rego.v1

deny contains msg if {
  input.kind == "policy_rule"
  "sudo" in input.capabilities
  msg := sprintf("%s: sudo is prohibited", [input.path])
}

deny contains msg if {
  input.kind == "role"
  not input.ttl
  msg := sprintf("role %s must define a TTL", [input.name])
}
