//! The dashboards of `voice-operator render`: structurally what Grafana imports, every query
//! parses and names the seed's metrics, and against a real Prometheus scraping a gateway under
//! load the gateway panels return data.

use std::time::Duration;

use observability_tests::exporters::{Exposition, GpuPod, SimulatedExporter};
use observability_tests::{
    Gateway, PanelQuery, Prometheus, ScrapeJob, Sim, TempDir, assert_importable,
    assert_queries_parse, dashboard_of, metric_names, panel_queries, poll, render, speak,
    substitute,
};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

const EXAMPLES: &[&str] = &[
    "managed-riva-gpu.yaml",
    "external-riva.yaml",
    "minimal.yaml",
];

/// The gateway's metrics (SYSTEM.md), as queried: histograms by their series.
const GATEWAY: &[&str] = &[
    "voice_gateway_asr_latency_seconds_bucket",
    "voice_gateway_llm_ttft_seconds_bucket",
    "voice_gateway_llm_total_seconds_bucket",
    "voice_gateway_llm_tokens_total_bucket",
    "voice_gateway_tts_latency_seconds_bucket",
    "voice_gateway_tts_characters_total_bucket",
    "voice_gateway_e2e_latency_seconds_bucket",
    "voice_gateway_requests_total",
    "voice_gateway_active_streams",
    "voice_gateway_asr_errors_total",
    "voice_gateway_llm_errors_total",
    "voice_gateway_tts_errors_total",
    "up",
];
/// DCGM exporter (the seed's guide).
const DCGM: &[&str] = &[
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    "DCGM_FI_PROF_SM_ACTIVE",
];
/// Riva's Triton (the seed's guide).
const TRITON: &[&str] = &[
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_gpu_utilization",
];

/// The dashboard ConfigMaps of `example` rendered in namespace `voice`.
fn dashboards(example: &str) -> Vec<(Yaml, Json)> {
    render(example, "voice")
        .into_iter()
        .filter(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .map(|cm| {
            let d = dashboard_of(&cm);
            (cm, d)
        })
        .collect()
}

/// `current` values of the dashboard's query variables: what a user sees selected.
fn variable_values(d: &Json) -> Vec<(String, String)> {
    d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            (
                v["name"].as_str().expect("name").to_string(),
                v["current"]["value"]
                    .as_str()
                    .expect("current value")
                    .to_string(),
            )
        })
        .collect()
}

/// The current value of variable `name` among `vars`.
fn current(vars: &[(String, String)], name: &str) -> String {
    vars.iter()
        .find(|v| v.0 == name)
        .map(|v| v.1.clone())
        .unwrap_or_else(|| panic!("no variable {name}"))
}

/// The dashboard's queries with its variables replaced by their current values.
fn concrete_queries(d: &Json) -> Vec<PanelQuery> {
    let vals = variable_values(d);
    let vals: Vec<(&str, &str)> = vals.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    panel_queries(d)
        .into_iter()
        .map(|mut q| {
            q.expr = substitute(&q.expr, &vals, "1m");
            q
        })
        .collect()
}

#[test]
fn dashboards_are_what_grafana_imports() {
    for ex in EXAMPLES {
        let ds = dashboards(ex);
        assert_eq!(ds.len(), 1, "{ex}: one dashboard ConfigMap");
        for (cm, d) in ds {
            let name = cm["metadata"]["name"].as_str().expect("name");
            assert_importable(&d, ex);
            let key = format!("{name}.json");
            assert!(
                cm["data"].get(key.as_str()).is_some(),
                "{ex}: data key {key}"
            );
        }
    }
}

#[test]
fn every_query_parses_and_names_the_seeds_metrics() {
    for ex in EXAMPLES {
        for (_, d) in dashboards(ex) {
            let qs = concrete_queries(&d);
            assert!(!qs.is_empty(), "{ex}: no queries");
            assert_queries_parse(&qs, ex);

            let mut gpu = 0;
            let mut triton = 0;
            for q in &qs {
                let names = metric_names(&q.expr);
                assert!(
                    !names.is_empty(),
                    "{ex} {}: no metric in {}",
                    q.panel,
                    q.expr
                );
                let in_any = |n: &String| {
                    [GATEWAY, DCGM, TRITON]
                        .iter()
                        .any(|l| l.contains(&n.as_str()))
                };
                assert!(
                    names.iter().all(in_any),
                    "{ex} {} {}: unknown metric in {names:?}",
                    q.panel,
                    q.ref_id
                );
                // A panel reads one source: the gateway, DCGM or Triton.
                let family = |l: &[&str]| names.iter().all(|n| l.contains(&n.as_str()));
                assert!(
                    family(GATEWAY) || family(DCGM) || family(TRITON),
                    "{ex} {}: mixed {names:?}",
                    q.panel
                );
                gpu += usize::from(family(DCGM));
                triton += usize::from(family(TRITON));
                if family(TRITON) {
                    assert!(
                        q.expr.contains(r#"service="voice-riva""#),
                        "{ex} {}: not scoped to Riva: {}",
                        q.panel,
                        q.expr
                    );
                } else if family(GATEWAY) {
                    assert!(
                        q.expr.contains(r#"service="voice-gateway""#)
                            || q.expr.contains(r#"service="support-line-gateway""#)
                            || q.expr.contains(r#"service="demo-gateway""#),
                        "{ex} {}: not scoped to the gateway: {}",
                        q.panel,
                        q.expr
                    );
                }
            }
            assert!(gpu >= 2, "{ex}: GPU utilisation and memory panels");
            let managed = *ex == "managed-riva-gpu.yaml";
            assert_eq!(
                triton > 0,
                managed,
                "{ex}: Triton panels exactly when Riva is managed"
            );
            if managed {
                let all: String = qs
                    .iter()
                    .map(|q| q.expr.as_str())
                    .collect::<Vec<_>>()
                    .join("\n");
                for m in TRITON.iter().chain(&[
                    "DCGM_FI_DEV_GPU_UTIL",
                    "DCGM_FI_DEV_FB_USED",
                    "DCGM_FI_DEV_FB_FREE",
                ]) {
                    assert!(all.contains(m), "{ex}: no panel reads {m}");
                }
                // DCGM series of this pipeline's Riva pods only.
                assert!(
                    all.contains(r#"exported_namespace="voice",exported_pod=~"voice-riva-[a-z0-9]+-[a-z0-9]+""#),
                    "{ex}: GPU selector"
                );
            }
        }
    }
}

/// Kind of a live gateway query, by the metrics it reads.
fn kind(q: &PanelQuery) -> &'static str {
    let names = metric_names(&q.expr);
    let has = |s: &str| names.iter().any(|n| n.contains(s));
    if has("_errors_total") {
        "backend-errors"
    } else if has("e2e") {
        "e2e"
    } else if has("asr") {
        "asr"
    } else if has("llm") {
        "llm"
    } else if has("tts") {
        "tts"
    } else if has("requests_total") && q.expr.contains(r#"status="error""#) {
        "error-rate"
    } else if has("requests_total") {
        "request-rate"
    } else if has("active_streams") {
        "active-streams"
    } else {
        "other"
    }
}

#[test]
fn gateway_panels_return_data_from_a_real_prometheus() {
    let (_, d) = dashboards("managed-riva-gpu.yaml").remove(0);
    let vars = variable_values(&d);
    let (namespace, service) = (current(&vars, "namespace"), current(&vars, "pipeline"));

    // Every backend call fails with probability 0.1: the error panels get series too.
    let sim = Sim::start(&["--error-rate", "0.1", "--seed", "7"]).expect("voice-sim");
    let gw = Gateway::start(&sim).expect("voice-gateway");
    // In a cluster the ServiceMonitor relabelling adds these labels; here static_configs do.
    let prom = Prometheus::start(&[ScrapeJob {
        job: service.clone(),
        target: format!("127.0.0.1:{}", gw.admin_port),
        labels: vec![
            ("namespace".into(), namespace.clone()),
            ("service".into(), service.clone()),
            ("pod".into(), format!("{service}-7d9c6b8f5-x2x4z")),
            ("endpoint".into(), "metrics".into()),
        ],
    }])
    .expect("prometheus");

    // The load starts once Prometheus scrapes the gateway, so that it sees the counters grow.
    poll(
        Duration::from_secs(20),
        "first scrape of the gateway",
        || {
            let r = prom
                .query(&format!(r#"up{{service="{service}"}} == 1"#))
                .ok()?;
            (!r.is_empty()).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", prom.log()));
    let dir = TempDir::new("obs-load");
    let wav = dir.join("turn.wav");
    speak("What is the weather like in Paris today?", &wav).expect("speak");
    let mut ok = 0;
    for i in 0..16 {
        // Mostly spoken turns (ASR), some text turns.
        let w = (i % 4 != 3).then_some(wav.as_path());
        ok += usize::from(gw.turn(w, "Tell me a short joke.").expect("voice-client"));
        // Spread the load over several scrapes, so that rate() sees increases.
        std::thread::sleep(Duration::from_millis(400));
    }
    assert!(ok >= 4, "only {ok} of 16 turns succeeded");

    let queries: Vec<PanelQuery> = concrete_queries(&d)
        .into_iter()
        .filter(|q| {
            metric_names(&q.expr)
                .iter()
                .all(|n| GATEWAY.contains(&n.as_str()))
        })
        .collect();
    let kinds: Vec<&str> = queries.iter().map(kind).collect();
    for k in [
        "e2e",
        "asr",
        "llm",
        "tts",
        "request-rate",
        "error-rate",
        "active-streams",
        "backend-errors",
    ] {
        assert!(kinds.contains(&k), "no {k} panel query in the dashboard");
    }
    // Wait until Prometheus has scraped the whole load: its count of requests equals the
    // gateway's own.
    let (_, text) =
        observability_tests::http_get(gw.admin_port, "/metrics").expect("gateway /metrics");
    let counted: f64 = text
        .lines()
        .filter(|l| l.starts_with("voice_gateway_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(counted >= 1.0, "the gateway counted no request:\n{text}");
    poll(Duration::from_secs(30), "requests scraped", || {
        let v = prom
            .query(&format!(r#"sum(voice_gateway_requests_total{{namespace="{namespace}",service="{service}"}})"#))
            .ok()?;
        let n: f64 = v.first()?["value"][1].as_str()?.parse().ok()?;
        (n == counted).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", prom.log()));
    std::thread::sleep(Duration::from_secs(3));

    let mut backend_error_series = 0;
    let mut failures = vec![];
    for (q, k) in queries.iter().zip(&kinds) {
        let res = prom
            .query(&q.expr)
            .unwrap_or_else(|e| panic!("{} {}: {e}", q.panel, q.ref_id));
        if *k == "backend-errors" {
            backend_error_series += res.len();
            continue;
        }
        let finite = res.iter().any(|s| {
            s["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        });
        if !finite {
            failures.push(format!("{} [{}] {}: {res:?}", q.panel, q.ref_id, q.expr));
        }
    }
    assert!(
        failures.is_empty(),
        "panels without data:\n{}",
        failures.join("\n")
    );
    assert!(
        backend_error_series > 0,
        "no backend error series although the simulator injects faults"
    );

    // The template variables resolve to the values the queries were built with.
    for (name, current) in &vars {
        let def = d["templating"]["list"]
            .as_array()
            .expect("list")
            .iter()
            .find(|v| &v["name"] == name)
            .and_then(|v| v["definition"].as_str())
            .expect("definition")
            .to_string();
        let Some(inner) = def
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
        else {
            continue;
        };
        let (sel, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        if sel.starts_with("nv_") {
            continue; // no Riva here
        }
        let sel = substitute(
            sel,
            &vars
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
            "1m",
        );
        let res = prom
            .query(&format!("group by ({}) ({sel})", label.trim()))
            .expect("variable query");
        let values: Vec<&str> = res
            .iter()
            .filter_map(|s| s["metric"][label.trim()].as_str())
            .collect();
        assert!(
            values.contains(&current.as_str()),
            "variable {name}: {values:?} lacks {current}"
        );
    }
    drop(prom);
    drop(gw);
    drop(sim);
}

/// The GPU (DCGM) and Riva/Triton panels against a real Prometheus scraping SIMULATED
/// exporters (`observability_tests::exporters`: no GPU or Riva here) that serve the upstream
/// names and label sets: the panels return data for this pipeline's Riva pods and GPUs, and
/// none of another pipeline's in the same namespace.
#[test]
fn gpu_and_triton_panels_return_data_from_a_real_prometheus() {
    let (_, d) = dashboards("managed-riva-gpu.yaml").remove(0);
    let vars = variable_values(&d);
    let (namespace, riva) = (current(&vars, "namespace"), current(&vars, "riva"));
    let other = "other-riva".to_string();

    // Two Riva Services in one namespace (this pipeline's and another's), each with its
    // Triton metrics; one dcgm-exporter with a GPU for each Riva pod.
    let triton = |models: &[&str]| {
        SimulatedExporter::start(Exposition::Triton {
            models: models.iter().map(|m| m.to_string()).collect(),
        })
        .expect("simulated Triton exporter")
    };
    let ours = triton(&["conformer-en-US-asr-streaming", "fastpitch_hifigan-en-US"]);
    let theirs = triton(&["other-model"]);
    let dcgm = SimulatedExporter::start(Exposition::Dcgm {
        pods: vec![
            GpuPod {
                namespace: namespace.clone(),
                pod: format!("{riva}-6c9d8f7b5-abcde"),
                gpu: 0,
            },
            GpuPod {
                namespace: namespace.clone(),
                pod: format!("{other}-59f7d6c4b-fghij"),
                gpu: 1,
            },
        ],
    })
    .expect("simulated dcgm-exporter");
    // The target labels a ServiceMonitor's relabelling gives each: the Riva Services' own, and
    // the exporter's (namespace gpu-operator), which with honor_labels false push the
    // exporter's `namespace` and `pod` labels to `exported_namespace` and `exported_pod`.
    let job = |service: &str, namespace: &str, port: u16, endpoint: &str| ScrapeJob {
        job: service.into(),
        target: format!("127.0.0.1:{port}"),
        labels: vec![
            ("namespace".into(), namespace.into()),
            ("service".into(), service.into()),
            ("pod".into(), format!("{service}-7d9c6b8f5-x2x4z")),
            ("endpoint".into(), endpoint.into()),
        ],
    };
    let prom = Prometheus::start(&[
        job(&riva, &namespace, ours.port, "metrics"),
        job(&other, &namespace, theirs.port, "metrics"),
        job(
            "nvidia-dcgm-exporter",
            "gpu-operator",
            dcgm.port,
            "gpu-metrics",
        ),
    ])
    .expect("prometheus");
    // rate() needs two samples of every counter: wait for the third scrape of each target.
    poll(
        Duration::from_secs(30),
        "three scrapes of every target",
        || {
            let r = prom
                .query("count(count_over_time(up[1m]) >= 3) == 3")
                .ok()?;
            (!r.is_empty()).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", prom.log()));

    let values: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let queries: Vec<PanelQuery> = concrete_queries(&d)
        .into_iter()
        .filter(|q| {
            let names = metric_names(&q.expr);
            names.iter().all(|n| DCGM.contains(&n.as_str()))
                || names.iter().all(|n| TRITON.contains(&n.as_str()))
        })
        .collect();
    assert!(
        queries.len() >= 7,
        "GPU and Triton panel queries: {queries:?}"
    );
    let mut failures = vec![];
    for q in &queries {
        let res = prom
            .query(&q.expr)
            .unwrap_or_else(|e| panic!("{} {}: {e}", q.panel, q.ref_id));
        let finite = |s: &Json| {
            s["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        };
        if res.is_empty() || !res.iter().all(finite) {
            failures.push(format!(
                "{} [{}] no data: {} → {res:?}",
                q.panel, q.ref_id, q.expr
            ));
        }
        for s in &res {
            let m = &s["metric"];
            if m.get("model").is_some_and(|v| v == "other-model")
                || m.get("service")
                    .is_some_and(|v| v.as_str() == Some(other.as_str()))
                || m.get("exported_pod")
                    .and_then(Json::as_str)
                    .is_some_and(|p| !p.starts_with(&format!("{riva}-")))
            {
                failures.push(format!(
                    "{} [{}] reads another pipeline's series: {m}",
                    q.panel, q.ref_id
                ));
            }
        }
        if q.panel == "GPU memory used" {
            // 60000 MiB used of 60000 + 21000 on this pipeline's GPU 0.
            let v: f64 = res
                .first()
                .and_then(|s| s["value"][1].as_str()?.parse().ok())
                .unwrap_or(0.0);
            assert!(
                (v - 6_000_000.0 / 81_000.0).abs() < 0.01,
                "GPU memory used: {v}"
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The Riva variable lists this pipeline's Riva Service.
    let def = d["templating"]["list"]
        .as_array()
        .expect("list")
        .iter()
        .find(|v| v["name"] == "riva")
        .and_then(|v| v["definition"].as_str())
        .expect("riva variable")
        .to_string();
    let sel = substitute(
        def.strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(", service)"))
            .expect("label_values(selector, service)"),
        &values,
        "1m",
    );
    let res = prom
        .query(&format!("group by (service) ({sel})"))
        .expect("variable query");
    let services: Vec<&str> = res
        .iter()
        .filter_map(|s| s["metric"]["service"].as_str())
        .collect();
    assert!(
        services.contains(&riva.as_str()),
        "riva variable: {services:?}"
    );
}
