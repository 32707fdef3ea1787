//! Compiles proto/keybridge/v1/*.proto with protox (pure Rust, no system
//! `protoc`) and generates the tonic client and server code from it.

use std::path::PathBuf;

const FILES: &[&str] = &[
    "keybridge/v1/secrets.proto",
    "keybridge/v1/sys.proto",
    "keybridge/v1/audit.proto",
    "keybridge/v1/auth.proto",
    "keybridge/v1/sync.proto",
    "keybridge/v1/logical.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for file in FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(FILES, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("keybridge_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&descriptors))?;

    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        // Messages that carry secret values get a redacting Debug in lib.rs.
        .skip_debug([
            "keybridge.v1.SecretValue",
            "keybridge.v1.LogicalRequest",
            "keybridge.v1.LogicalResponse",
            "keybridge.v1.RegisterPluginChunk",
            "keybridge.v1.Fields",
            "keybridge.v1.InitResponse",
            "keybridge.v1.UnsealRequest",
            "keybridge.v1.RekeyRequest",
            "keybridge.v1.RekeyResponse",
            "keybridge.v1.SnapshotChunk",
            "keybridge.v1.CreateTokenResponse",
            "keybridge.v1.RevokeTokenRequest",
            "keybridge.v1.RenewTokenRequest",
            "keybridge.v1.LookupTokenRequest",
            "keybridge.v1.AuditHashRequest",
            "keybridge.v1.AuditVerificationKey",
            "keybridge.v1.LoginRequest",
            "keybridge.v1.LoginResponse",
            "keybridge.v1.WriteAuthConfigRequest",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}
