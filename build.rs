//! Generates the gRPC code from `proto/` with the protoc compiled into the
//! `protoc-bin-vendored` crate: no download and no system protoc needed;
//! and rebuilds the crate when `migrations/` changes.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let descriptor = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("ledger_descriptor.bin");
    let mut config = prost_build::Config::new();
    config
        .protoc_executable(protoc_bin_vendored::protoc_bin_path()?)
        // For server reflection (grpcurl, Evans list and call the service).
        .file_descriptor_set_path(&descriptor);
    tonic_prost_build::configure().compile_with_config(config, &["proto/ledger/v1/ledger.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    // `sqlx::migrate!` embeds `migrations/` at compile time, and a proc
    // macro's reads are not tracked on stable Rust: a new migration must
    // rebuild the crate (what sqlx's documentation prescribes).
    println!("cargo:rerun-if-changed=migrations");
    Ok(())
}
