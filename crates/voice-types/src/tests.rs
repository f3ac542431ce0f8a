use kube::CustomResourceExt;

use crate::*;

fn crd_json() -> serde_json::Value {
    serde_json::to_value(VoicePipeline::crd()).unwrap()
}

#[test]
fn crd_names_and_subresources() {
    let crd = VoicePipeline::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("voicepipelines.voice.workflow.io")
    );
    assert_eq!(crd.spec.names.short_names, Some(vec!["vp".to_string()]));
    assert_eq!(crd.spec.scope, "Namespaced");
    let v = &crd.spec.versions[0];
    assert!(v.subresources.as_ref().unwrap().status.is_some());
    let cols: Vec<_> = v
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        cols,
        ["Ready", "Gateway", "Riva", "Reason", "Endpoint", "Age"]
    );
}

/// Every property in the schema has a description, so `kubectl explain` is the manual.
#[test]
fn every_field_is_described() {
    fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (k, v) in props {
                let p = format!("{path}.{k}");
                if !path.is_empty() && v.get("description").is_none() && !p.starts_with(".metadata")
                {
                    missing.push(p.clone());
                }
                walk(&p, v, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
        if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
            walk(&format!("{path}{{}}"), ap, missing);
        }
    }
    let crd = crd_json();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut missing = vec![];
    walk("", schema, &mut missing);
    // `.spec`/`.status` themselves are described by their struct docs.
    missing.retain(|p| !p.starts_with(".apiVersion") && !p.starts_with(".kind"));
    assert!(
        missing.is_empty(),
        "fields without description: {missing:#?}"
    );
}

#[test]
fn schema_has_defaults_and_cel_rules() {
    let s = serde_json::to_string(&crd_json()).unwrap();
    for needle in [
        r#""default":"kube-prometheus-stack""#,
        r#""default":50051"#,
        "has(self.managed) != has(self.external)",
        "duration(self.scrapeTimeout) <= duration(self.interval)",
        "isURL(self)",
        r#""x-kubernetes-list-type":"map""#,
        "self.metadata.name.size() <= 50",
    ] {
        assert!(s.contains(needle), "CRD lacks {needle}");
    }
}

#[test]
fn serde_defaults_match_minimal_yaml() {
    let vp: VoicePipeline = serde_yaml::from_str(
        r#"
apiVersion: voice.workflow.io/v1alpha1
kind: VoicePipeline
metadata: {name: demo, namespace: voice}
spec:
  llm: {url: "http://llm.llm.svc:8000/v1"}
  riva: {external: {uri: "riva.riva.svc:50051"}}
"#,
    )
    .unwrap();
    assert_eq!(vp.spec.gateway, GatewaySpec::default());
    assert_eq!(vp.spec.llm.model, "meta/llama-3.1-8b-instruct");
    assert_eq!(vp.spec.observability, ObservabilitySpec::default());
    assert_eq!(
        vp.spec.observability.dashboards.labels["grafana_dashboard"],
        "1"
    );
}
