//! Generated protobuf types and tonic stubs.
//!
//! - [`voice`]: the gateway's own `voice_workflow` protocol (seed-compatible, see
//!   `proto/voice_workflow.proto`).
//! - [`riva`]: NVIDIA Riva ASR/TTS, generated from `proto/riva/proto/*.proto`, which are printed
//!   from the descriptors shipped in PyPI `nvidia-riva-client` 2.28.0 (`tools/desc2proto.py`).
//!
//! [`FILE_DESCRIPTOR_SET`] holds every file, for gRPC reflection and for the test that compares
//! our Riva definitions with NVIDIA's.

#![allow(clippy::all, missing_debug_implementations)]

/// `voice_workflow` package.
pub mod voice {
    tonic::include_proto!("voice_workflow");
}

/// `nvidia.riva.*` packages.
pub mod riva {
    tonic::include_proto!("nvidia.riva");

    /// `nvidia.riva.asr`
    pub mod asr {
        tonic::include_proto!("nvidia.riva.asr");
    }

    /// `nvidia.riva.tts`
    pub mod tts {
        tonic::include_proto!("nvidia.riva.tts");
    }
}

/// Encoded `FileDescriptorSet` of every proto in this crate.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/voice_descriptor.bin"));
