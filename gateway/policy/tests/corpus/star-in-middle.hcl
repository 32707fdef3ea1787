path "secret/*/x" { capabilities = ["read"] }
