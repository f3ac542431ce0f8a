//! The PrometheusRule of `voice-operator render` passes `promtool check rules`, and the rule
//! unit tests of tests/observability/rules/ show each alert firing on this pipeline's series
//! and silent on another pipeline's.

use observability_tests::{alert_names, check_and_test_rules, only_kind, render, rule_file};

/// Renders `example`, checks and unit-tests its rule with `test_file`, and requires the test
/// file to make every alert of the rule fire once and stay silent once, and to name no alert
/// the rule does not have (promtool passes an expected-silent test of an unknown alert).
fn prove(example: &str, test_file: &str, must_have: &[&str]) {
    let docs = render(example, "voice");
    let rules = rule_file(only_kind(&docs, "PrometheusRule"));
    let names = alert_names(&rules);
    for m in must_have {
        assert!(
            names.iter().any(|n| n == m),
            "{example}: no alert {m} in {names:?}"
        );
    }
    let rules_name = example.replace(".yaml", ".rules.yaml");
    let seen = check_and_test_rules(&rules, &rules_name, test_file);
    for n in &names {
        let s = seen.iter().find(|s| &s.0 == n);
        assert!(
            s.is_some_and(|s| s.1 && s.2),
            "{test_file}: alert {n} must fire in one test and stay silent in another (seen: {s:?})"
        );
    }
    for s in &seen {
        assert!(
            names.contains(&s.0),
            "{test_file} tests {}, which the rule of {example} does not have ({names:?})",
            s.0
        );
    }
}

#[test]
fn managed_riva_rule_checks_and_every_alert_fires_only_on_its_pipeline() {
    prove(
        "managed-riva-gpu.yaml",
        "managed-riva-gpu.test.yaml",
        &[
            "VoiceGatewayHighLatency",
            "VoiceGatewayHighErrorRate",
            "GPUMemoryHigh",
        ],
    );
}

#[test]
fn external_riva_rule_uses_its_thresholds_and_has_no_riva_alerts() {
    prove(
        "external-riva.yaml",
        "external-riva.test.yaml",
        &["VoiceGatewayHighLatency", "VoiceGatewayHighErrorRate"],
    );
}

#[test]
fn minimal_rule_passes_promtool_check() {
    let docs = render("minimal.yaml", "voice");
    let rules = rule_file(only_kind(&docs, "PrometheusRule"));
    let dir = observability_tests::TempDir::new("obs-minimal");
    let path = dir.join("minimal.rules.yaml");
    observability_tests::write_yaml(&path, &rules);
    let out = observability_tests::promtool_ok(&["check", "rules", path.to_str().unwrap()]);
    let n = alert_names(&rules).len();
    assert!(out.contains(&format!("{n} rules found")), "{out}");
}
