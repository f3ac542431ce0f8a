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
