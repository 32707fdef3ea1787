path "a" { capabilities = [1, true, {a = 1}] }
