//! ServiceMonitors and the PrometheusRule.
//!
//! Every expression is scoped to this pipeline's series by the labels the Prometheus Operator
//! puts on every target of a ServiceMonitor: `namespace` and `service` (the gateway Service
//! `<name>-gateway`, the Riva Service `<name>-riva`). GPU series come from DCGM exporter,
//! which is scraped by its own ServiceMonitor: they are scoped by `gpuSelector`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::monitoring_labels;
use crate::model::{Component, Validated};
use crate::monitoring_crds::{
    Endpoint, LabelSelector, NamespaceSelector, PrometheusRule, PrometheusRuleSpec, Rule,
    RuleGroup, ServiceMonitor, ServiceMonitorSpec,
};

fn service_monitor(v: &Validated, component: Component) -> ServiceMonitor {
    let sm = &v.spec.observability.service_monitor;
    ServiceMonitor {
        metadata: ObjectMeta {
            name: Some(v.child_name(component)),
            namespace: Some(v.namespace.clone()),
            labels: Some(monitoring_labels(v, component, &sm.labels)),
            owner_references: v.owner.clone().map(|o| vec![o]),
            ..Default::default()
        },
        spec: ServiceMonitorSpec {
            job_label: None,
            selector: LabelSelector {
                match_labels: v.selector_labels(component),
            },
            namespace_selector: Some(NamespaceSelector {
                match_names: vec![v.namespace.clone()],
            }),
            endpoints: vec![Endpoint {
                port: "metrics".into(),
                path: "/metrics".into(),
                interval: sm.interval.clone(),
                scrape_timeout: sm.scrape_timeout.clone(),
                relabelings: vec![],
            }],
        },
    }
}

/// ServiceMonitor of the gateway's `metrics` port, when enabled.
pub fn build_gateway_service_monitor(v: &Validated) -> Option<ServiceMonitor> {
    v.spec
        .observability
        .service_monitor
        .enabled
        .then(|| service_monitor(v, Component::Gateway))
}

/// ServiceMonitor of Riva's Triton `metrics` port (8002), when enabled and Riva is managed.
pub fn build_riva_service_monitor(v: &Validated) -> Option<ServiceMonitor> {
    (v.spec.observability.service_monitor.enabled && v.riva_managed())
        .then(|| service_monitor(v, Component::Riva))
}

/// Label matchers of the gateway's series.
pub fn gateway_selector(v: &Validated) -> String {
    format!(
        r#"namespace="{}",service="{}""#,
        v.namespace,
        v.child_name(Component::Gateway)
    )
}

/// Label matchers of Riva's (Triton's) series.
pub fn riva_selector(v: &Validated) -> String {
    format!(
        r#"namespace="{}",service="{}""#,
        v.namespace,
        v.child_name(Component::Riva)
    )
}

/// Label matchers of the DCGM series of this pipeline's GPUs.
pub fn gpu_selector(v: &Validated) -> String {
    v.spec
        .observability
        .prometheus_rule
        .gpu_selector
        .clone()
        .unwrap_or_else(|| {
            // The Riva Deployment's pods: its name, the template's hash and a suffix. Not
            // `<riva>-.*`, which also matches the Riva pods of a pipeline named `<name>-riva`.
            format!(
                r#"exported_namespace="{}",exported_pod=~"{}-[a-z0-9]+-[a-z0-9]+""#,
                v.namespace,
                v.child_name(Component::Riva)
            )
        })
}

struct Alert {
    name: &'static str,
    expr: String,
    for_: String,
    severity: &'static str,
    summary: String,
    description: String,
    runbook: &'static str,
}

/// The PrometheusRule, when enabled: the seed's three alerts with the spec's thresholds, and
/// what an on-call person of this pipeline needs besides.
pub fn build_prometheus_rule(v: &Validated) -> Option<PrometheusRule> {
    let obs = &v.spec.observability;
    let p = &obs.prometheus_rule;
    if !p.enabled {
        return None;
    }
    let id = format!("{}/{}", v.namespace, v.name);
    let g = gateway_selector(v);
    let f = p.for_duration.clone();
    let pct = |r: f64| format!("{}%", r * 100.0);
    let mut alerts = vec![
        Alert {
            name: "VoiceGatewayHighLatency",
            expr: format!(
                "histogram_quantile(0.95, sum by (le) (rate(voice_gateway_e2e_latency_seconds_bucket{{{g}}}[5m]))) > {}",
                p.e2e_latency_p95_seconds
            ),
            for_: f.clone(),
            severity: "warning",
            summary: format!("Voice pipeline {id}: P95 latency is high"),
            description: format!(
                "P95 end-to-end latency (final transcript to first audio) is {{{{ $value | humanizeDuration }}}} (threshold: {}s).",
                p.e2e_latency_p95_seconds
            ),
            runbook: "Compare the component panels of the pipeline's dashboard (ASR, LLM TTFT, TTS P95): the slowest one is the cause. LLM: check the model server's queue and GPU; Riva: check Triton queue time and GPU utilisation; all of them: check gateway CPU throttling and active streams against maxConcurrentStreams.",
        },
        Alert {
            name: "VoiceGatewayHighErrorRate",
            expr: format!(
                "(sum(rate(voice_gateway_requests_total{{{g},status=\"error\"}}[5m])) / sum(rate(voice_gateway_requests_total{{{g}}}[5m]))) > {}",
                p.error_ratio
            ),
            for_: f.clone(),
            severity: "critical",
            summary: format!(
                "Voice pipeline {id}: error rate above {}",
                pct(p.error_ratio)
            ),
            description: "{{ $value | humanizePercentage }} of the gateway's requests fail.".into(),
            runbook: "The backend alerts (ASR, LLM, TTS error rate) name the failing backend; `kubectl logs -l app.kubernetes.io/component=gateway` shows the errors. Check the backends' endpoints in the pipeline's status and the LLM API key Secret.",
        },
    ];
    for (backend, metric, what) in [
        ("ASR", "voice_gateway_asr_errors_total", "Riva ASR"),
        ("LLM", "voice_gateway_llm_errors_total", "the LLM endpoint"),
        ("TTS", "voice_gateway_tts_errors_total", "Riva TTS"),
    ] {
        alerts.push(Alert {
            name: match backend {
                "ASR" => "VoiceGatewayASRErrors",
                "LLM" => "VoiceGatewayLLMErrors",
                _ => "VoiceGatewayTTSErrors",
            },
            expr: format!(
                "(sum(rate({metric}{{{g}}}[5m])) / sum(rate(voice_gateway_requests_total{{{g}}}[5m]))) > {}",
                p.error_ratio
            ),
            for_: f.clone(),
            severity: "warning",
            summary: format!("Voice pipeline {id}: {backend} errors above {} of requests", pct(p.error_ratio)),
            description: format!("Calls from the gateway to {what} fail: {{{{ $value | humanizePercentage }}}} of requests (by error_type on the dashboard)."),
            runbook: match backend {
                "LLM" => "Check the LLM endpoint (spec.llm.url) answers /v1/chat/completions, the model name, and the API key Secret; error_type tells timeouts from HTTP errors.",
                _ => "Check Riva is serving (RivaAvailable condition, Riva pods, Triton failures alert) and the language/voice/sample rate in spec.gateway exist in the deployed Riva models.",
            },
        });
    }
    alerts.push(Alert {
        name: "VoiceGatewayTargetDown",
        expr: format!("up{{{g}}} == 0"),
        for_: f.clone(),
        severity: "critical",
        summary: format!("Voice pipeline {id}: a gateway pod's metrics cannot be scraped"),
        description: "Prometheus cannot scrape gateway pod {{ $labels.pod }}.".into(),
        runbook: "`kubectl get pods -l app.kubernetes.io/instance=<pipeline>` and describe the failing pod: crash loops, OOM kills and failed probes show there.",
    });
    if obs.service_monitor.enabled {
        alerts.push(Alert {
            name: "VoiceGatewayMetricsAbsent",
            expr: format!("absent(up{{{g}}})"),
            for_: "15m".into(),
            severity: "warning",
            summary: format!("Voice pipeline {id}: no gateway target in Prometheus"),
            description: "Prometheus has no scrape target for the gateway although its ServiceMonitor exists.".into(),
            runbook: "Check that Prometheus selects the ServiceMonitor: its `release` label (spec.observability.release) must match the Prometheus serviceMonitorSelector, and the namespace must be in its serviceMonitorNamespaceSelector. Check that gateway pods exist (replicas > 0).",
        });
    }
    alerts.push(Alert {
        name: "VoiceGatewayStalledStreams",
        // `or vector(0)`: a gateway that has not completed a turn yet has no requests series.
        expr: format!(
            "(sum(voice_gateway_active_streams{{{g}}}) > 0) and ((sum(rate(voice_gateway_requests_total{{{g}}}[10m])) or vector(0)) == 0)"
        ),
        for_: "10m".into(),
        severity: "warning",
        summary: format!("Voice pipeline {id}: streams open but no turn completes"),
        description: "{{ $value }} streams are open and no request has completed in 10 minutes.".into(),
        runbook: "Streams hang on a backend that accepts connections but does not answer. Check ASR/LLM/TTS latency panels, then the backends; restarting a gateway pod drops its streams.",
    });
    // The GPUs are this pipeline's when it manages Riva, or when the spec names them.
    if v.spec.riva.managed.is_some() || p.gpu_selector.is_some() {
        let gpu = gpu_selector(v);
        alerts.push(Alert {
            name: "GPUMemoryHigh",
            expr: format!(
                "(DCGM_FI_DEV_FB_USED{{{gpu}}} / (DCGM_FI_DEV_FB_USED{{{gpu}}} + DCGM_FI_DEV_FB_FREE{{{gpu}}})) > {}",
                p.gpu_memory_ratio
            ),
            for_: f.clone(),
            severity: "warning",
            summary: format!("Voice pipeline {id}: GPU memory above {}", pct(p.gpu_memory_ratio)),
            description: "GPU {{ $labels.gpu }} memory at {{ $value | humanizePercentage }}.".into(),
            runbook: "Riva loads every deployed model into GPU memory: deploy fewer models or give Riva a larger GPU (spec.riva.managed.gpu). Check no other workload shares the GPU.",
        });
    }
    if v.spec.riva.managed.is_some() {
        let r = riva_selector(v);
        alerts.push(Alert {
            name: "RivaTargetDown",
            expr: format!("up{{{r}}} == 0"),
            for_: f.clone(),
            severity: "critical",
            summary: format!("Voice pipeline {id}: Riva/Triton metrics cannot be scraped"),
            description: "Prometheus cannot scrape Riva pod {{ $labels.pod }} (Triton metrics, port 8002).".into(),
            runbook: "Riva is down or still loading models (up to the startup timeout). `kubectl describe pod` the Riva pod: GPU scheduling, the model PVC, the NGC key Secret and OOM kills show there.",
        });
        if obs.service_monitor.enabled {
            alerts.push(Alert {
                name: "RivaMetricsAbsent",
                expr: format!("absent(up{{{r}}})"),
                for_: "15m".into(),
                severity: "warning",
                summary: format!("Voice pipeline {id}: no Riva target in Prometheus"),
                description: "Prometheus has no scrape target for Riva although its ServiceMonitor exists.".into(),
                runbook: "Check the Riva pods exist and Prometheus selects the ServiceMonitor (release label).",
            });
        }
        alerts.push(Alert {
            name: "RivaInferenceFailures",
            expr: format!(
                "(sum(rate(nv_inference_request_failure{{{r}}}[5m])) / (sum(rate(nv_inference_request_success{{{r}}}[5m])) + sum(rate(nv_inference_request_failure{{{r}}}[5m])))) > {}",
                p.error_ratio
            ),
            for_: f.clone(),
            severity: "critical",
            summary: format!("Voice pipeline {id}: Triton inference failures above {}", pct(p.error_ratio)),
            description: "{{ $value | humanizePercentage }} of Riva's Triton inference requests fail.".into(),
            runbook: "Read the Riva pod's log for the failing model; GPU memory exhaustion (GPUMemoryHigh) and a wrong model repository are the usual causes.",
        });
    }
    let rules = alerts
        .into_iter()
        .map(|a| Rule {
            alert: a.name.into(),
            expr: a.expr,
            for_: a.for_,
            // `namespace` too: the sums drop the series' labels, and Alertmanager routes by
            // namespace; two pipelines of one name in two namespaces stay two alerts.
            labels: BTreeMap::from([
                ("severity".to_string(), a.severity.to_string()),
                ("voice_pipeline".into(), v.name.clone()),
                ("namespace".into(), v.namespace.clone()),
            ]),
            annotations: BTreeMap::from([
                ("summary".to_string(), a.summary),
                ("description".into(), a.description),
                ("runbook".into(), a.runbook.into()),
            ]),
        })
        .collect();
    Some(PrometheusRule {
        metadata: ObjectMeta {
            name: Some(v.child_name(Component::Alerts)),
            namespace: Some(v.namespace.clone()),
            labels: Some(monitoring_labels(v, Component::Alerts, &p.labels)),
            owner_references: v.owner.clone().map(|o| vec![o]),
            ..Default::default()
        },
        spec: PrometheusRuleSpec {
            groups: vec![RuleGroup {
                name: format!("voice-pipeline.{}.{}", v.namespace, v.name),
                rules,
            }],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::validate;
    use crate::testdata;

    fn alert<'a>(r: &'a PrometheusRule, name: &str) -> &'a Rule {
        r.spec.groups[0]
            .rules
            .iter()
            .find(|a| a.alert == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn seed_alerts_with_spec_thresholds() {
        let mut vp = testdata::managed();
        vp.spec
            .observability
            .prometheus_rule
            .e2e_latency_p95_seconds = 2.5;
        vp.spec.observability.prometheus_rule.error_ratio = 0.02;
        vp.spec.observability.prometheus_rule.for_duration = "3m".into();
        let r = build_prometheus_rule(&validate(&vp).unwrap()).unwrap();
        let lat = alert(&r, "VoiceGatewayHighLatency");
        assert!(lat.expr.ends_with("> 2.5"), "{}", lat.expr);
        assert!(
            lat.expr
                .contains(r#"namespace="voice",service="demo-gateway""#)
        );
        assert_eq!(lat.for_, "3m");
        assert!(
            alert(&r, "VoiceGatewayHighErrorRate")
                .expr
                .ends_with("> 0.02")
        );
        assert!(alert(&r, "GPUMemoryHigh").expr.ends_with("> 0.9"));
        for a in &r.spec.groups[0].rules {
            for k in ["summary", "description", "runbook"] {
                assert!(!a.annotations[k].is_empty(), "{} lacks {k}", a.alert);
            }
            assert!(["warning", "critical"].contains(&a.labels["severity"].as_str()));
            assert_eq!(a.labels["voice_pipeline"], "demo", "{}", a.alert);
            assert_eq!(a.labels["namespace"], "voice", "{}", a.alert);
        }
    }

    #[test]
    fn gpu_memory_alert_for_external_riva_only_with_a_gpu_selector() {
        let mut vp = testdata::external();
        vp.spec.observability.prometheus_rule.gpu_selector = Some(r#"Hostname="gpu-7""#.into());
        let r = build_prometheus_rule(&validate(&vp).unwrap()).unwrap();
        let gpu = alert(&r, "GPUMemoryHigh");
        assert!(
            gpu.expr
                .contains(r#"DCGM_FI_DEV_FB_USED{Hostname="gpu-7"}"#),
            "{}",
            gpu.expr
        );
        assert!(
            !r.spec.groups[0]
                .rules
                .iter()
                .any(|a| a.alert.starts_with("Riva")),
            "no Riva alerts for an external Riva"
        );
    }

    #[test]
    fn riva_alerts_only_when_managed() {
        let r = build_prometheus_rule(&validate(&testdata::external()).unwrap()).unwrap();
        let names: Vec<_> = r.spec.groups[0]
            .rules
            .iter()
            .map(|a| a.alert.as_str())
            .collect();
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("Riva") || n.starts_with("GPU")),
            "{names:?}"
        );
        assert!(
            names.contains(&"VoiceGatewayLLMErrors")
                && names.contains(&"VoiceGatewayMetricsAbsent")
        );
    }

    #[test]
    fn service_monitors_carry_release_label_and_intervals() {
        let v = validate(&testdata::external_full()).unwrap();
        let sm = build_gateway_service_monitor(&v).unwrap();
        assert_eq!(
            sm.metadata.labels.as_ref().unwrap()["release"],
            "kube-prometheus-stack"
        );
        assert_eq!(sm.spec.endpoints[0].interval, "30s");
        assert_eq!(sm.spec.endpoints[0].port, "metrics");
        assert!(build_riva_service_monitor(&v).is_none());
        let managed = validate(&testdata::managed()).unwrap();
        let riva = build_riva_service_monitor(&managed).unwrap();
        assert_eq!(
            riva.spec.selector.match_labels["app.kubernetes.io/component"],
            "riva"
        );
    }

    #[test]
    fn empty_release_omits_the_label() {
        let mut vp = testdata::external();
        vp.spec.observability.release = String::new();
        let sm = build_gateway_service_monitor(&validate(&vp).unwrap()).unwrap();
        assert!(!sm.metadata.labels.unwrap().contains_key("release"));
    }
}
