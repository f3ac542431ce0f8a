//! The Grafana dashboard ConfigMap: every panel of the seed's observability guide plus
//! Riva/Triton panels, templated on the datasource, the namespace and the pipeline (the
//! gateway Service), so one dashboard JSON serves every pipeline once imported.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::model::{Component, LABEL_PIPELINE_NAMESPACE, Validated};

const SEL: &str = r#"namespace="$namespace",service="$pipeline""#;
const RIVA_SEL: &str = r#"namespace="$namespace",service="$riva""#;

fn target(expr: impl Into<String>, legend: &str, ref_id: char) -> Value {
    json!({"datasource": {"type": "prometheus", "uid": "${datasource}"}, "expr": expr.into(),
           "legendFormat": legend, "refId": ref_id.to_string()})
}

fn q(quantile: &str, metric: &str, sel: &str) -> String {
    format!("histogram_quantile({quantile}, sum by (le) (rate({metric}_bucket{{{sel}}}[5m])))")
}

/// A panel at grid position (x, y), w×h.
fn panel(
    id: u32,
    title: &str,
    kind: &str,
    unit: &str,
    pos: (u32, u32, u32, u32),
    targets: Vec<Value>,
) -> Value {
    json!({
        "id": id, "title": title, "type": kind,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": pos.0, "y": pos.1, "w": pos.2, "h": pos.3},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": targets,
    })
}

fn row(id: u32, title: &str, y: u32) -> Value {
    json!({"id": id, "title": title, "type": "row", "collapsed": false,
           "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
}

/// What the panels depend on. They read the namespace and the pipeline from the dashboard's
/// variables, so every pipeline with the same GPU selector and the same kind of Riva has the
/// same panels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PanelsKey {
    /// The DCGM series' label matchers (without braces).
    gpu: String,
    /// Riva/Triton panels too.
    riva_managed: bool,
}

impl PanelsKey {
    fn of(v: &Validated) -> Self {
        let riva_managed = v.riva_managed();
        let gpu = match (
            &v.spec.observability.prometheus_rule.gpu_selector,
            riva_managed,
        ) {
            (Some(sel), _) => sel.clone(),
            (None, true) => {
                r#"exported_namespace="$namespace",exported_pod=~"$riva-[a-z0-9]+-[a-z0-9]+""#
                    .into()
            }
            // External Riva: its GPUs are not this pipeline's to pick; show them all, as the seed did.
            (None, false) => String::new(),
        };
        PanelsKey { gpu, riva_managed }
    }
}

/// The dashboard JSON model, whole: what [`dashboard_text`] writes, as a value the tests read.
#[cfg(test)]
fn dashboard_json(v: &Validated) -> Value {
    let mut d = dashboard_without_panels(v);
    d["panels"] = Value::Array(panels(&PanelsKey::of(v)));
    d
}

/// The dashboard's panels.
fn panels(key: &PanelsKey) -> Vec<Value> {
    let gpu = &key.gpu;
    let e2e = "voice_gateway_e2e_latency_seconds";
    let mut panels = vec![
        row(1, "Latency", 0),
        panel(
            2,
            "E2E latency (final transcript → first audio)",
            "timeseries",
            "s",
            (0, 1, 12, 8),
            vec![
                target(q("0.5", e2e, SEL), "P50", 'A'),
                target(q("0.95", e2e, SEL), "P95", 'B'),
                target(q("0.99", e2e, SEL), "P99", 'C'),
            ],
        ),
        panel(
            3,
            "Component latency P95",
            "timeseries",
            "s",
            (12, 1, 12, 8),
            vec![
                target(
                    q("0.95", "voice_gateway_asr_latency_seconds", SEL),
                    "ASR",
                    'A',
                ),
                target(
                    q("0.95", "voice_gateway_llm_ttft_seconds", SEL),
                    "LLM TTFT",
                    'B',
                ),
                target(
                    q("0.95", "voice_gateway_tts_latency_seconds", SEL),
                    "TTS",
                    'C',
                ),
            ],
        ),
        panel(
            4,
            "Latency waterfall (P95)",
            "bargauge",
            "s",
            (0, 9, 12, 6),
            vec![
                target(
                    q("0.95", "voice_gateway_asr_latency_seconds", SEL),
                    "ASR",
                    'A',
                ),
                target(
                    q("0.95", "voice_gateway_llm_ttft_seconds", SEL),
                    "LLM TTFT",
                    'B',
                ),
                target(
                    q("0.95", "voice_gateway_tts_latency_seconds", SEL),
                    "TTS",
                    'C',
                ),
                target(q("0.95", e2e, SEL), "E2E", 'D'),
            ],
        ),
        panel(
            5,
            "LLM generation time and tokens (P95)",
            "timeseries",
            "s",
            (12, 9, 12, 6),
            vec![
                target(
                    q("0.95", "voice_gateway_llm_total_seconds", SEL),
                    "LLM total",
                    'A',
                ),
                target(
                    q("0.95", "voice_gateway_llm_tokens_total", SEL),
                    "tokens",
                    'B',
                ),
            ],
        ),
        row(6, "Traffic", 15),
        panel(
            7,
            "Request rate",
            "timeseries",
            "reqps",
            (0, 16, 8, 8),
            vec![target(
                format!("sum by (status) (rate(voice_gateway_requests_total{{{SEL}}}[5m]))"),
                "{{status}}",
                'A',
            )],
        ),
        panel(
            8,
            "Errors by backend",
            "timeseries",
            "reqps",
            (8, 16, 8, 8),
            vec![
                target(
                    format!(
                        "sum by (error_type) (rate(voice_gateway_asr_errors_total{{{SEL}}}[5m]))"
                    ),
                    "ASR {{error_type}}",
                    'A',
                ),
                target(
                    format!(
                        "sum by (error_type) (rate(voice_gateway_llm_errors_total{{{SEL}}}[5m]))"
                    ),
                    "LLM {{error_type}}",
                    'B',
                ),
                target(
                    format!(
                        "sum by (error_type) (rate(voice_gateway_tts_errors_total{{{SEL}}}[5m]))"
                    ),
                    "TTS {{error_type}}",
                    'C',
                ),
            ],
        ),
        panel(
            9,
            "Active streams",
            "timeseries",
            "short",
            (16, 16, 8, 8),
            vec![target(
                format!("sum(voice_gateway_active_streams{{{SEL}}})"),
                "streams",
                'A',
            )],
        ),
        panel(
            10,
            "Error ratio",
            "stat",
            "percentunit",
            (0, 24, 8, 4),
            vec![target(
                format!(
                    "sum(rate(voice_gateway_requests_total{{{SEL},status=\"error\"}}[5m])) / sum(rate(voice_gateway_requests_total{{{SEL}}}[5m]))"
                ),
                "errors",
                'A',
            )],
        ),
        panel(
            11,
            "Gateway pods up",
            "stat",
            "short",
            (8, 24, 8, 4),
            vec![target(format!("sum(up{{{SEL}}})"), "up", 'A')],
        ),
        panel(
            12,
            "TTS characters per call (P95)",
            "stat",
            "short",
            (16, 24, 8, 4),
            vec![target(
                q("0.95", "voice_gateway_tts_characters_total", SEL),
                "chars",
                'A',
            )],
        ),
        row(13, "GPU (DCGM)", 28),
        panel(
            14,
            "GPU utilisation",
            "timeseries",
            "percent",
            (0, 29, 12, 8),
            vec![target(
                format!("DCGM_FI_DEV_GPU_UTIL{{{gpu}}}"),
                "GPU {{gpu}} {{Hostname}}",
                'A',
            )],
        ),
        panel(
            15,
            "GPU memory used",
            "timeseries",
            "percent",
            (12, 29, 12, 8),
            vec![target(
                format!(
                    "DCGM_FI_DEV_FB_USED{{{gpu}}} / (DCGM_FI_DEV_FB_USED{{{gpu}}} + DCGM_FI_DEV_FB_FREE{{{gpu}}}) * 100"
                ),
                "GPU {{gpu}} {{Hostname}}",
                'A',
            )],
        ),
    ];
    if key.riva_managed {
        panels.extend([
            row(16, "Riva / Triton", 37),
            panel(17, "Inference requests", "timeseries", "reqps", (0, 38, 8, 8), vec![
                target(format!("sum by (model) (rate(nv_inference_request_success{{{RIVA_SEL}}}[5m]))"), "ok {{model}}", 'A'),
                target(format!("sum by (model) (rate(nv_inference_request_failure{{{RIVA_SEL}}}[5m]))"), "failed {{model}}", 'B'),
            ]),
            panel(18, "Time per inference request / in queue", "timeseries", "µs", (8, 38, 8, 8), vec![
                target(
                    format!("sum by (model) (rate(nv_inference_request_duration_us{{{RIVA_SEL}}}[5m])) / sum by (model) (rate(nv_inference_request_success{{{RIVA_SEL}}}[5m]))"),
                    "request {{model}}",
                    'A',
                ),
                target(
                    format!("sum by (model) (rate(nv_inference_queue_duration_us{{{RIVA_SEL}}}[5m])) / sum by (model) (rate(nv_inference_request_success{{{RIVA_SEL}}}[5m]))"),
                    "queue {{model}}",
                    'B',
                ),
            ]),
            panel(19, "Executions and Triton GPU utilisation", "timeseries", "short", (16, 38, 8, 8), vec![
                target(format!("sum by (model) (rate(nv_inference_exec_count{{{RIVA_SEL}}}[5m]))"), "exec/s {{model}}", 'A'),
                target(format!("nv_gpu_utilization{{{RIVA_SEL}}}"), "GPU {{gpu_uuid}}", 'B'),
            ]),
        ]);
    }
    panels
}

/// The dashboard JSON model but its panels: what names this pipeline.
fn dashboard_without_panels(v: &Validated) -> Value {
    let var = |name: &str, label: &str, query: String, current: String| {
        json!({"name": name, "label": label, "type": "query",
               "datasource": {"type": "prometheus", "uid": "${datasource}"},
               "query": {"query": query, "refId": name}, "definition": query,
               "current": {"text": current, "value": current}, "refresh": 2, "sort": 1})
    };
    let mut vars = vec![
        json!({"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
               "current": {"text": "Prometheus", "value": "prometheus"}}),
        var(
            "namespace",
            "Namespace",
            "label_values(voice_gateway_active_streams, namespace)".into(),
            v.namespace.clone(),
        ),
        var(
            "pipeline",
            "Pipeline (gateway Service)",
            "label_values(voice_gateway_active_streams{namespace=\"$namespace\"}, service)".into(),
            v.child_name(Component::Gateway),
        ),
    ];
    if v.riva_managed() {
        vars.push(var(
            "riva",
            "Riva Service",
            "label_values(nv_inference_exec_count{namespace=\"$namespace\"}, service)".into(),
            v.child_name(Component::Riva),
        ));
    }
    json!({
        "uid": dashboard_uid(v),
        "title": format!("Voice pipeline {}/{}", v.namespace, v.name),
        "tags": ["voice-pipeline", "riva", "voice-gateway"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": vars},
    })
}

/// The dashboard as compact JSON text: `serde_json::to_string(&dashboard_json(v))`, with the
/// panels' text (most of it) serialized once per [`PanelsKey`] instead of once per pipeline
/// and pass. Building and serializing the panels was a tenth of the operator's CPU in the
/// 1,000-pipeline run (BENCHMARKS.md, "Fifteenth session").
fn dashboard_text(v: &Validated) -> String {
    let rest = serde_json::to_string(&dashboard_without_panels(v)).expect("JSON values serialize");
    let panels = panels_text(&PanelsKey::of(v));
    // serde_json's objects are sorted by key, and "panels" sorts before the others (the
    // tests hold the text to the model's).
    let rest = rest.strip_prefix('{').expect("an object with keys");
    format!("{{\"panels\":{panels},{rest}")
}

/// The panels' JSON text, from a small cache: pipelines share a handful of keys, and a
/// user-written GPU selector cannot grow it past [`PANELS_KEPT`].
fn panels_text(key: &PanelsKey) -> Arc<str> {
    static CACHE: Mutex<Vec<(PanelsKey, Arc<str>)>> = Mutex::new(Vec::new());
    if let Some((_, text)) = CACHE
        .lock()
        .expect("not poisoned")
        .iter()
        .find(|(k, _)| k == key)
    {
        return text.clone();
    }
    let text: Arc<str> = serde_json::to_string(&panels(key))
        .expect("JSON values serialize")
        .into();
    let mut cache = CACHE.lock().expect("not poisoned");
    if cache.len() >= PANELS_KEPT {
        cache.remove(0);
    }
    cache.push((key.clone(), text.clone()));
    text
}

/// Distinct panel sets kept by [`panels_text`].
const PANELS_KEPT: usize = 8;

/// Stable Grafana uid (at most 40 characters) of a pipeline's dashboard.
fn dashboard_uid(v: &Validated) -> String {
    let h = Sha256::digest(format!("{}/{}", v.namespace, v.name));
    let hex: String = h.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("voice-{hex}")
}

/// The dashboard ConfigMap, when enabled. In the pipeline's namespace it is owned by the
/// pipeline; elsewhere no owner reference can reach it, and the finalizer removes it.
pub fn build_dashboard(v: &Validated) -> Option<ConfigMap> {
    let d = &v.spec.observability.dashboards;
    if !d.enabled {
        return None;
    }
    let mut labels = d.labels.clone();
    labels.extend(v.labels(Component::Dashboards));
    labels.insert(LABEL_PIPELINE_NAMESPACE.into(), v.namespace.clone());
    let same_ns = v.dashboards_namespace == v.namespace;
    let name = v.child_name(Component::Dashboards);
    // Compact: Grafana reads it the same, and every byte is paid for again on each write and
    // watch event. Pretty-printed, the minimal example's dashboard was 15.0 kB instead of
    // 9.4 kB, and its apply cost kube-apiserver 3.4-3.9 ms of CPU instead of 2.4-2.6 ms
    // (BENCHMARKS.md, "What each write costs the API server").
    let json = dashboard_text(v);
    Some(ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(v.dashboards_namespace.clone()),
            labels: Some(labels),
            annotations: d
                .folder
                .as_ref()
                .map(|f| BTreeMap::from([("grafana_folder".to_string(), f.clone())])),
            owner_references: if same_ns {
                v.owner.clone().map(|o| vec![o])
            } else {
                None
            },
            ..Default::default()
        },
        data: Some(BTreeMap::from([(format!("{name}.json"), json)])),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::validate;
    use crate::testdata;

    fn exprs(v: &Value) -> String {
        v["panels"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
            .map(|t| t["expr"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn every_seed_panel_is_there() {
        let d = dashboard_json(&validate(&testdata::managed()).unwrap());
        let all = exprs(&d);
        for m in [
            "histogram_quantile(0.5, sum by (le) (rate(voice_gateway_e2e_latency_seconds_bucket",
            "histogram_quantile(0.99, sum by (le) (rate(voice_gateway_e2e_latency_seconds_bucket",
            "voice_gateway_asr_latency_seconds_bucket",
            "voice_gateway_llm_ttft_seconds_bucket",
            "voice_gateway_tts_latency_seconds_bucket",
            "voice_gateway_requests_total",
            "voice_gateway_asr_errors_total",
            "voice_gateway_llm_errors_total",
            "voice_gateway_tts_errors_total",
            "voice_gateway_active_streams",
            "DCGM_FI_DEV_GPU_UTIL",
            "DCGM_FI_DEV_FB_USED",
            "DCGM_FI_DEV_FB_FREE",
            "nv_inference_request_success",
            "nv_inference_request_failure",
            "nv_inference_queue_duration_us",
            "nv_inference_request_duration_us",
            "nv_inference_exec_count",
            "nv_gpu_utilization",
        ] {
            assert!(all.contains(m), "no panel queries {m}");
        }
        let vars: Vec<_> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(vars, ["datasource", "namespace", "pipeline", "riva"]);
        let ids: Vec<_> = d["panels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_u64().unwrap())
            .collect();
        let unique: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "panel ids are unique: {ids:?}");
    }

    #[test]
    fn the_text_is_the_json_model_with_shared_panels() {
        let mut pipelines = vec![
            testdata::managed(),
            testdata::external(),
            testdata::external_full(),
        ];
        // More GPU selectors than the cache keeps: an evicted key is built again, the same.
        for i in 0..PANELS_KEPT + 2 {
            let mut vp = testdata::managed();
            vp.spec.observability.prometheus_rule.gpu_selector = Some(format!(r#"gpu="{i}""#));
            pipelines.push(vp);
        }
        for round in 0..2 {
            for vp in &pipelines {
                let v = validate(vp).unwrap();
                let text = dashboard_text(&v);
                let model = serde_json::to_string(&dashboard_json(&v)).unwrap();
                assert_eq!(text, model, "round {round}, {:?}", PanelsKey::of(&v));
            }
        }
        // Two pipelines with one key share the panels and differ in what names them.
        let mut other = testdata::managed();
        other.metadata.name = Some("other".into());
        let (a, b) = (
            dashboard_json(&validate(&testdata::managed()).unwrap()),
            dashboard_json(&validate(&other).unwrap()),
        );
        assert_eq!(a["panels"], b["panels"]);
        assert_ne!(a["uid"], b["uid"]);
        assert_ne!(a["templating"], b["templating"]);
        let custom = dashboard_text(&validate(&pipelines[3]).unwrap());
        assert!(
            custom.contains(r#"DCGM_FI_DEV_GPU_UTIL{gpu=\"0\"}"#),
            "{custom}"
        );
    }

    #[test]
    fn dashboard_in_another_namespace_has_no_owner() {
        let v = validate(&testdata::external_full()).unwrap();
        let cm = build_dashboard(&v).unwrap();
        assert_eq!(cm.metadata.namespace.as_deref(), Some("grafana"));
        assert!(cm.metadata.owner_references.is_none());
        assert_eq!(
            cm.metadata.labels.as_ref().unwrap()["grafana_dashboard"],
            "1"
        );
        assert_eq!(
            cm.metadata.labels.as_ref().unwrap()[LABEL_PIPELINE_NAMESPACE],
            "voice"
        );
        assert_eq!(cm.metadata.annotations.unwrap()["grafana_folder"], "Voice");
        let same = build_dashboard(&validate(&testdata::external()).unwrap()).unwrap();
        assert!(same.metadata.owner_references.is_some());
    }
}
