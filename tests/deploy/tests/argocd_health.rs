//! The Argo CD health check (deploy/argocd/health.lua) run by a real Lua 5.1 interpreter, as
//! Argo CD's gopher-lua runs it, against the cases of deploy/argocd/health_test.yaml.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use serde::Deserialize;

fn argocd_dir() -> PathBuf {
    test_support::repo_root().join("deploy/argocd")
}

#[derive(Debug, Deserialize)]
struct Cases {
    tests: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    input_path: String,
    health_status: Health,
}

#[derive(Debug, Deserialize, PartialEq)]
struct Health {
    status: String,
    message: String,
}

/// Runs health.lua on one object, the way Argo CD does (the object as global `obj`).
fn health_of(object: &serde_json::Value) -> Health {
    let dir = argocd_dir();
    let mut lua = Command::new("lua5.1")
        .arg(dir.join("harness.lua"))
        .arg(dir.join("health.lua"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lua5.1 runs (make deps installs it)");
    lua.stdin
        .take()
        .unwrap()
        .write_all(object.to_string().as_bytes())
        .unwrap();
    let out = lua.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "health.lua failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("health as JSON")
}

#[test]
fn every_case_maps_conditions_to_the_expected_health() {
    let dir = argocd_dir();
    let cases: Cases =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("health_test.yaml")).unwrap())
            .unwrap();
    assert!(cases.tests.len() >= 7, "the cases went missing");
    let mut seen = std::collections::BTreeSet::new();
    for case in &cases.tests {
        let object: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(dir.join(&case.input_path)).unwrap())
                .unwrap();
        let health = health_of(&object);
        assert_eq!(health, case.health_status, "case {}", case.input_path);
        seen.insert(health.status);
    }
    for status in ["Healthy", "Progressing", "Degraded"] {
        assert!(seen.contains(status), "no case ends {status}");
    }
}

#[test]
fn the_argocd_configmap_carries_health_lua_verbatim() {
    let dir = argocd_dir();
    let cm: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("argocd-cm.yaml")).unwrap())
            .unwrap();
    let embedded = cm["data"]["resource.customizations.health.voice.workflow.io_VoicePipeline"]
        .as_str()
        .expect("the health key");
    let lua = std::fs::read_to_string(dir.join("health.lua")).unwrap();
    assert_eq!(
        embedded, lua,
        "deploy/argocd/argocd-cm.yaml differs from health.lua"
    );
}

/// health.lua on what voice-operator itself writes (`status::compute` and `status::invalid`),
/// not only on hand-written fixtures: each state a pipeline passes through maps to the Argo CD
/// health a person expects.
#[test]
fn what_the_operator_writes_maps_to_the_expected_health() {
    use voice_operator::model::validate;
    use voice_operator::status::{self, Observed, Outcome, PassError, Rollout};

    let yaml =
        std::fs::read_to_string(test_support::repo_root().join("examples/minimal.yaml")).unwrap();
    let mut vp: voice_types::VoicePipeline = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .find(|d| d["kind"] == "VoicePipeline")
        .map(|d| serde_yaml::from_value(d).unwrap())
        .unwrap();
    vp.metadata.namespace = Some("voice".into());
    vp.metadata.generation = Some(2);
    let v = validate(&vp).unwrap();
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap(),
    );
    let rollout = |available: i32, deadline_exceeded: bool| Rollout {
        deadline_exceeded,
        ..Rollout::settled(1, available)
    };
    let observed = |gateway: Rollout| Observed::clean(gateway, "voice");
    let error = |reason: &str, permanent: bool| PassError {
        reason: reason.into(),
        message: format!("{reason} (test)"),
        permanent,
    };
    let mut cases: Vec<(&str, voice_types::VoicePipelineStatus, &str)> = vec![];
    let status_of = |o: &Observed| status::compute(&v, None, o, &now);
    cases.push((
        "rolling out",
        status_of(&observed(rollout(0, false))),
        "Progressing",
    ));
    let crashing = |deadline_exceeded: bool| Rollout {
        pod_problem: Some(voice_operator::pods::PodProblem {
            reason: "CrashLoopBackOff".into(),
            message: "pod demo-gateway-x: container gateway keeps exiting".into(),
        }),
        ..rollout(0, deadline_exceeded)
    };
    cases.push((
        "a pod in a crash loop",
        status_of(&observed(crashing(false))),
        "Progressing",
    ));
    cases.push((
        "a pod in a crash loop, past the deadline",
        status_of(&observed(crashing(true))),
        "Degraded",
    ));
    let mut o = observed(rollout(1, false));
    o.services_pending = vec!["demo-gateway".into()];
    cases.push(("creating its Service", status_of(&o), "Progressing"));
    cases.push((
        "serving",
        status_of(&observed(rollout(1, false))),
        "Healthy",
    ));
    let mut o = observed(rollout(1, false));
    o.monitoring = Outcome::Failed("forbidden".into());
    cases.push(("serving, monitoring refused", status_of(&o), "Healthy"));
    cases.push((
        "past its progress deadline",
        status_of(&observed(rollout(0, true))),
        "Degraded",
    ));
    let mut o = observed(rollout(1, false));
    o.error = Some(error("Forbidden", true));
    cases.push(("refused for good (RBAC)", status_of(&o), "Degraded"));
    let mut o = observed(rollout(1, false));
    o.error = Some(error("ApiUnreachable", false));
    cases.push(("a transient error, retried", status_of(&o), "Progressing"));
    cases.push((
        "an invalid spec",
        status::invalid(Some(2), None, "invalid spec: test", &now),
        "Degraded",
    ));
    for (what, st, expected) in cases {
        let object = serde_json::json!({
            "apiVersion": "voice.workflow.io/v1alpha1",
            "kind": "VoicePipeline",
            "metadata": {"name": "demo", "namespace": "voice", "generation": 2},
            "status": st,
        });
        let health = health_of(&object);
        assert_eq!(health.status, expected, "{what}: {health:?}\n{object:#}");
    }
}
