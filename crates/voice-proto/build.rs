//! Compiles `proto/` with the `protoc` shipped in `protoc-bin-vendored`, so a fresh machine
//! builds without a system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Audio travels as `bytes::Bytes`: forwarding a chunk is a reference-count increment.
        .bytes(".")
        .file_descriptor_set_path(out.join("voice_descriptor.bin"))
        .compile_with_config(
            config,
            &[
                "proto/voice_workflow.proto",
                "proto/riva/proto/riva_audio.proto",
                "proto/riva/proto/riva_common.proto",
                "proto/riva/proto/riva_asr.proto",
                "proto/riva/proto/riva_tts.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
