fn main() -> std::process::ExitCode {
    terraform_provider_keybridge::plugin::main()
}
