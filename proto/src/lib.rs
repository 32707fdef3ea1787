//! The Keybridge gRPC API, package `keybridge.v1`.
//!
//! Generated from `proto/keybridge/v1/*.proto` at build time. Messages that
//! carry secret material (values, unseal keys, tokens, snapshots) have a
//! hand-written `Debug` that prints no content.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod audit;

pub mod v1 {
    tonic::include_proto!("keybridge.v1");

    /// The encoded `FileDescriptorSet` of the API, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keybridge_descriptor");

    macro_rules! redacted_debug {
        ($($ty:ty => [$($field:ident),*]),* $(,)?) => {$(
            impl std::fmt::Debug for $ty {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    let mut s = f.debug_struct(stringify!($ty));
                    $( s.field(stringify!($field), &self.$field); )*
                    s.finish_non_exhaustive()
                }
            }
        )*};
    }

    redacted_debug! {
        SecretValue => [],
        LogicalRequest => [path],
        LogicalResponse => [lease, warnings],
        RegisterPluginChunk => [name, sha256],
        Fields => [],
        InitResponse => [unseal_threshold, recovery_threshold],
        UnsealRequest => [reset, migrate],
        RekeyRequest => [key_shares, key_threshold],
        RekeyResponse => [unseal_threshold, recovery],
        SnapshotChunk => [force],
        CreateTokenResponse => [info],
        RevokeTokenRequest => [],
        RenewTokenRequest => [increment_seconds],
        LookupTokenRequest => [],
        AuditHashRequest => [path],
        AuditVerificationKey => [device, checkpoint_seq],
        LoginRequest => [path, role],
        LoginResponse => [info],
        WriteAuthConfigRequest => [path],
    }
}
