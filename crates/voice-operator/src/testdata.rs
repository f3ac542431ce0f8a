//! Pipelines for unit tests, read from the repository's `examples/`.

use voice_types::VoicePipeline;

/// The `VoicePipeline` document of a multi-document example, as if stored in namespace
/// `voice` under the name `demo`.
fn from_example(yaml: &str) -> VoicePipeline {
    let doc = serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .find(|v| v["kind"] == "VoicePipeline")
        .expect("example has a VoicePipeline");
    let mut vp: VoicePipeline = serde_yaml::from_value(doc).unwrap();
    vp.metadata.name = Some("demo".into());
    vp.metadata.namespace = Some("voice".into());
    vp.metadata.uid = Some("0b6d2f44-0000-4000-8000-000000000001".into());
    vp.metadata.generation = Some(1);
    vp
}

use serde::Deserialize;

/// examples/minimal.yaml: external Riva, all defaults.
pub fn external() -> VoicePipeline {
    from_example(include_str!("../../../examples/minimal.yaml"))
}

/// examples/managed-riva-gpu.yaml: managed Riva on GPU, everything enabled.
pub fn managed() -> VoicePipeline {
    from_example(include_str!("../../../examples/managed-riva-gpu.yaml"))
}

/// examples/external-riva.yaml: two replicas, API key, dashboards in another namespace.
pub fn external_full() -> VoicePipeline {
    from_example(include_str!("../../../examples/external-riva.yaml"))
}
