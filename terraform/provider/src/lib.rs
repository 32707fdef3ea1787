//! `terraform-provider-keybridge`: Keybridge as a Terraform provider.
//!
//! Terraform starts the binary, which answers go-plugin's handshake
//! ([`plugin`]) and serves Terraform's plugin protocol 6.9 ([`provider`])
//! over gRPC with mutual TLS on a private Unix socket. Resources talk to the
//! gateway through its public gRPC API only ([`gateway`]).

pub mod diag;
pub mod docs;
pub mod error;
pub mod gateway;
pub mod plugin;
pub mod provider;
pub mod resources;
pub mod schema;
pub mod tls;
pub mod value;

#[allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]
pub mod tfplugin6 {
    tonic::include_proto!("tfplugin6");

    impl std::fmt::Debug for DynamicValue {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("DynamicValue").finish_non_exhaustive()
        }
    }

    /// Values (secrets among them) travel in these buffers: wiped when dropped.
    impl Drop for DynamicValue {
        fn drop(&mut self) {
            use zeroize::Zeroize;
            self.msgpack.zeroize();
            self.json.zeroize();
        }
    }

    impl Drop for RawState {
        fn drop(&mut self) {
            use zeroize::Zeroize;
            self.json.zeroize();
        }
    }

    impl std::fmt::Debug for RawState {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RawState").finish_non_exhaustive()
        }
    }
}

pub mod goplugin {
    tonic::include_proto!("plugin");
}
