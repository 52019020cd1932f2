//! Compiles the bare hello-world service (`proto/helloworld.proto`) that the harness serves as
//! the baseline, with the vendored protoc as `libs/proto/build.rs` does, and records the build
//! profile and compiler version for the report.

use std::path::Path;
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = Path::new(&std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &[proto_dir.join("helloworld.proto")],
        std::slice::from_ref(&proto_dir),
    )?;
    println!("cargo:rerun-if-changed={}", proto_dir.display());

    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=BENCH_BUILD_PROFILE={profile}");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BENCH_RUSTC_VERSION={version}");
    Ok(())
}
