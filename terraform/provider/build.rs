//! Compiles the provider's declaration of Terraform's plugin protocol
//! (proto/tfplugin6.proto) and go-plugin's controller service with protox:
//! no system `protoc` needed.

use std::path::PathBuf;

const FILES: &[&str] = &["tfplugin6.proto", "goplugin.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for file in FILES {
        println!("cargo:rerun-if-changed=proto/{file}");
    }
    let descriptors = protox::compile(FILES, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("tfplugin6_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure()
        .build_client(false)
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        // Values travel inside these; their Debug must not print them.
        .skip_debug(["tfplugin6.DynamicValue", "tfplugin6.RawState"])
        .compile_fds(descriptors)?;
    Ok(())
}
