//! deploy/monitoring: the operator's own alerts pass `promtool check rules` and their unit
//! tests; its dashboard is importable and its queries parse; every metric they read is one the
//! operator's admin port really exposes (a running `voice-operator`, scraped by a real
//! Prometheus, which also evaluates the dashboard and the VoiceOperatorDown expression).

use std::process::{Command, Stdio};
use std::time::Duration;

use observability_tests::{
    PanelQuery, Proc, Prometheus, ScrapeJob, TempDir, alert_names, assert_importable,
    assert_queries_parse, bins, check_and_test_rules, dashboard_of, free_port, http_get,
    metric_names, only_kind, panel_queries, poll, read_yaml_documents, rule_file, substitute,
};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

const JOB: &str = "voice-operator-metrics";

fn rules() -> Yaml {
    let docs = read_yaml_documents("deploy/monitoring/prometheusrule.yaml");
    let pr = only_kind(&docs, "PrometheusRule");
    assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pr["metadata"]["labels"]["release"], "kube-prometheus-stack");
    rule_file(pr)
}

fn dashboard() -> (Yaml, Json) {
    let docs = read_yaml_documents("deploy/monitoring/dashboard.yaml");
    let cm = only_kind(&docs, "ConfigMap").clone();
    let d = dashboard_of(&cm);
    (cm, d)
}

/// Dashboard queries with `$job` set to the ServiceMonitor's job.
fn queries(d: &Json) -> Vec<PanelQuery> {
    panel_queries(d)
        .into_iter()
        .map(|mut q| {
            q.expr = substitute(&q.expr, &[("job", JOB)], "1m");
            q
        })
        .collect()
}

#[test]
fn operator_alerts_check_and_fire_as_tested() {
    let rules = rules();
    let names = alert_names(&rules);
    for a in [
        "VoiceOperatorDown",
        "VoiceOperatorReconcileErrors",
        "VoiceOperatorPipelineStalled",
        "VoiceOperatorMalformedPipeline",
        "VoiceOperatorSlowReconciles",
    ] {
        assert!(names.iter().any(|n| n == a), "no {a} in {names:?}");
    }
    let seen = check_and_test_rules(&rules, "operator.rules.yaml", "operator.test.yaml");
    for n in &names {
        let s = seen.iter().find(|s| &s.0 == n);
        assert!(
            s.is_some_and(|s| s.1 && s.2),
            "alert {n} must fire in one test and stay silent in another ({s:?})"
        );
    }
    for s in &seen {
        assert!(
            names.contains(&s.0),
            "operator.test.yaml tests unknown alert {}",
            s.0
        );
    }
}

#[test]
fn operator_dashboard_is_importable_and_parses() {
    let (cm, d) = dashboard();
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_importable(&d, "operator dashboard");
    let qs = queries(&d);
    assert_queries_parse(&qs, "operator dashboard");
    for q in &qs {
        assert!(
            q.expr.contains(&format!(r#"job="{JOB}""#)),
            "{}: not scoped to the operator: {}",
            q.panel,
            q.expr
        );
    }
    let docs = read_yaml_documents("deploy/monitoring/servicemonitor.yaml");
    let sm = only_kind(&docs, "ServiceMonitor");
    let svc = read_yaml_documents("deploy/service.yaml");
    let svc = only_kind(&svc, "Service");
    // The ServiceMonitor's job label is the Service's name; it scrapes the Service's port.
    assert_eq!(svc["metadata"]["name"], JOB);
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
}

/// `# TYPE name type` lines of an exposition.
fn types(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("# TYPE ")?.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

/// Whether `name` (as queried) is a series of an exposed metric.
fn exposed(name: &str, types: &[(String, String)]) -> bool {
    types.iter().any(|(base, ty)| match ty.as_str() {
        "counter" => name == format!("{base}_total") || (base.ends_with("_total") && name == base),
        "histogram" => ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name == format!("{base}{s}")),
        _ => name == base,
    })
}

/// The operator against an API server that is not there: its admin port serves /metrics
/// while it waits for the leader Lease.
fn start_operator(dir: &TempDir) -> (Proc, u16) {
    let kubeconfig = dir.join("kubeconfig");
    let dead = free_port();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: none, cluster: {{server: 'https://127.0.0.1:{dead}', insecure-skip-tls-verify: true}}}}]\nusers: [{{name: none, user: {{token: none}}}}]\ncontexts: [{{name: none, context: {{cluster: none, user: none}}}}]\ncurrent-context: none\n"
        ),
    )
    .expect("kubeconfig");
    let port = free_port();
    let child = Command::new(&bins().operator)
        .args([
            "run",
            "--leader-elect",
            "--leader-elect-namespace",
            "voice-operator-system",
        ])
        .arg(format!("--admin-addr=127.0.0.1:{port}"))
        .args(["--identity", "observability-test"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn voice-operator");
    let p = Proc(child);
    poll(Duration::from_secs(20), "operator /metrics", || {
        http_get(port, "/metrics").ok().filter(|(s, _)| *s == 200)
    })
    .expect("operator admin port");
    (p, port)
}

#[test]
fn operator_metrics_are_exposed_scraped_and_queried() {
    let dir = TempDir::new("obs-operator");
    let (mut operator, port) = start_operator(&dir);
    let (_, text) = http_get(port, "/metrics").expect("/metrics");
    let mut types = types(&text);
    assert!(
        types.iter().any(|t| t.0.starts_with("voice_operator_")),
        "no operator metrics in:\n{text}"
    );
    // Labelled families appear once they have a series: the operator's own registry and
    // encoder (what its admin port serves) with one series each.
    let mut registry = prometheus_client::registry::Registry::default();
    let m = voice_operator::metrics::Metrics::new(&mut registry);
    m.error("InvalidSpec");
    m.write("Deployment", "apply");
    let mut all = String::new();
    prometheus_client::encoding::text::encode(&mut all, &registry).expect("encode");
    for t in self::types(&all) {
        if !types.contains(&t) {
            types.push(t);
        }
    }
    for (name, ty) in &types {
        assert!(
            all.contains(&format!("# TYPE {name} {ty}")),
            "the admin port serves {name} ({ty}) that the registry does not have"
        );
    }

    // Every metric the alerts and the dashboard read is exposed, with its exposed name.
    let rules = rules();
    let mut exprs: Vec<(String, String)> = rules["groups"][0]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .map(|r| {
            (
                r["alert"].as_str().unwrap_or_default().to_string(),
                r["expr"].as_str().expect("expr").to_string(),
            )
        })
        .collect();
    let (_, d) = dashboard();
    let qs = queries(&d);
    exprs.extend(qs.iter().map(|q| (q.panel.clone(), q.expr.clone())));
    for (what, expr) in &exprs {
        for n in metric_names(expr) {
            assert!(
                n == "up" || exposed(&n, &types),
                "{what}: {n} is not exposed by the operator; it exposes {types:?}"
            );
        }
    }

    // A real Prometheus scrapes it as the ServiceMonitor would.
    let prom = Prometheus::start(&[ScrapeJob {
        job: JOB.into(),
        target: format!("127.0.0.1:{port}"),
        labels: vec![
            ("namespace".into(), "voice-operator-system".into()),
            ("service".into(), JOB.into()),
            ("pod".into(), "voice-operator-6f7d8c9b5-abcde".into()),
        ],
    }])
    .expect("prometheus");
    let up = format!(r#"up{{job="{JOB}"}} == 1"#);
    poll(Duration::from_secs(20), "operator scraped twice", || {
        let r = prom
            .query(&format!(r#"count_over_time(up{{job="{JOB}"}}[1m]) >= 2"#))
            .ok()?;
        (!r.is_empty()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", prom.log()));
    assert!(!prom.query(&up).expect("up").is_empty());
    // Panels of metrics that exist without any reconcile return data; all of them parse.
    let always = [
        "up",
        "voice_operator_leader",
        "voice_operator_pipelines",
        "voice_operator_pipelines_by_condition",
        "voice_operator_reconciles_total",
        "voice_operator_apply_skipped_total",
    ];
    let mut with_data = 0;
    for q in &qs {
        let res = prom
            .query(&q.expr)
            .unwrap_or_else(|e| panic!("{} {}: {e}", q.panel, q.ref_id));
        if metric_names(&q.expr)
            .iter()
            .all(|n| always.contains(&n.as_str()))
        {
            assert!(
                !res.is_empty(),
                "{} [{}] {}: no data",
                q.panel,
                q.ref_id,
                q.expr
            );
            with_data += 1;
        }
    }
    assert!(with_data >= 4, "only {with_data} panels checked for data");
    // Standing by without an API server: not the leader.
    let leader = prom
        .query(&format!(r#"sum(voice_operator_leader{{job="{JOB}"}})"#))
        .expect("leader");
    assert_eq!(leader[0]["value"][1], "0", "{leader:?}");

    // VoiceOperatorDown's expression: silent while it runs, true once it is gone.
    let down = rules["groups"][0]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .find(|r| r["alert"] == "VoiceOperatorDown")
        .and_then(|r| r["expr"].as_str())
        .expect("VoiceOperatorDown")
        .to_string();
    assert!(
        prom.query(&down).expect("down").is_empty(),
        "{down} while the operator runs"
    );
    let _ = operator.0.kill();
    let _ = operator.0.wait();
    poll(
        Duration::from_secs(20),
        "VoiceOperatorDown expression",
        || prom.query(&down).ok().filter(|r| !r.is_empty()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", prom.log()));
}
