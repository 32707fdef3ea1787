path { capabilities = ["read"] }
path "a" "b" { capabilities = ["read"] }
