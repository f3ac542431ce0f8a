//! `voice-operator render -f FILE`: every child object the operator would apply for the
//! pipelines in a file, as YAML, without a cluster. A reviewer sees a change before GitOps
//! applies it. Defaults are the CRD's (they are the same serde defaults).

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use voice_types::VoicePipeline;

use crate::build::{Children, build};
use crate::model::validate;

/// Renders every `VoicePipeline` document of `yaml` (other kinds are skipped). Pipelines
/// without a namespace are rendered in `default_namespace`.
pub fn render(yaml: &str, default_namespace: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut found = 0;
    for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value =
            serde_yaml::Value::deserialize(doc).with_context(|| format!("document {}", i + 1))?;
        if value.is_null() || value["kind"] != "VoicePipeline" {
            continue;
        }
        let mut vp: VoicePipeline = serde_yaml::from_value(value)
            .with_context(|| format!("document {}: not a valid VoicePipeline", i + 1))?;
        vp.metadata
            .namespace
            .get_or_insert_with(|| default_namespace.to_string());
        let v = validate(&vp).with_context(|| format!("VoicePipeline {:?}", vp.metadata.name))?;
        found += 1;
        let Children {
            gateway_config,
            gateway_deployment,
            gateway_service,
            gateway_pdb,
            riva_deployment,
            riva_service,
            gateway_service_monitor,
            riva_service_monitor,
            prometheus_rule,
            dashboard,
        } = build(&v);
        push(&mut out, &gateway_config)?;
        push(&mut out, &gateway_deployment)?;
        push(&mut out, &gateway_service)?;
        push_opt(&mut out, &gateway_pdb)?;
        push_opt(&mut out, &riva_deployment)?;
        push_opt(&mut out, &riva_service)?;
        push_opt(&mut out, &gateway_service_monitor)?;
        push_opt(&mut out, &riva_service_monitor)?;
        push_opt(&mut out, &prometheus_rule)?;
        push_opt(&mut out, &dashboard)?;
    }
    if found == 0 {
        bail!("no VoicePipeline in the input");
    }
    Ok(out)
}

fn push<K: Serialize + kube::Resource<DynamicType = ()>>(
    out: &mut String,
    k: &K,
) -> anyhow::Result<()> {
    let mut v = serde_json::to_value(k)?;
    // Typed k8s-openapi objects serialize without apiVersion/kind only when built by hand.
    v["apiVersion"] = K::api_version(&()).into();
    v["kind"] = K::kind(&()).into();
    let obj = v.as_object_mut().expect("an object");
    let mut ordered = serde_json::Map::new();
    for k in ["apiVersion", "kind", "metadata", "spec", "data"] {
        if let Some(v) = obj.remove(k) {
            ordered.insert(k.to_string(), v);
        }
    }
    ordered.extend(std::mem::take(obj));
    out.push_str("---\n");
    out.push_str(&serde_yaml::to_string(&ordered)?);
    Ok(())
}

fn push_opt<K: Serialize + kube::Resource<DynamicType = ()>>(
    out: &mut String,
    k: &Option<K>,
) -> anyhow::Result<()> {
    k.as_ref().map_or(Ok(()), |k| push(out, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_child_of_the_managed_example() {
        let out = render(
            include_str!("../../../examples/managed-riva-gpu.yaml"),
            "voice",
        )
        .unwrap();
        for kind in [
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "ServiceMonitor",
            "PrometheusRule",
        ] {
            assert!(out.contains(&format!("kind: {kind}\n")), "no {kind}");
        }
        assert_eq!(out.matches("\n---\n").count() + 1, 10, "ten children");
        // Rendering a file that was never stored: no owner references (no uid yet).
        assert!(!out.contains("ownerReferences"));
    }

    #[test]
    fn rejects_a_file_without_pipelines() {
        assert!(render("apiVersion: v1\nkind: Secret\n", "x").is_err());
    }
}
