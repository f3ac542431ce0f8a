//! What a user installs is accepted by a real API server: every manifest in deploy/ (the
//! kustomize base, the Helm chart rendered with default and scoped values, the Argo CD patch,
//! the monitoring files) and examples/ passes `kubectl apply --dry-run=server`; the chart
//! lints, and it grants exactly the rights of the kustomize base.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_yaml::Value;
use test_support::{Plane, repo_root};

const CHART: &str = "deploy/helm/voice-operator";

fn output_of(mut cmd: Command, stdin: Option<&str>) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    (
        out.status.success(),
        if out.status.success() {
            text
        } else {
            text + &err
        },
    )
}

#[track_caller]
fn succeed(cmd: Command, stdin: Option<&str>) -> String {
    let described = format!("{cmd:?}");
    let (ok, text) = output_of(cmd, stdin);
    assert!(ok, "{described} failed:\n{text}");
    text
}

fn helm(plane: &Plane) -> Command {
    let helm = plane.dir.join("bin/helm");
    assert!(
        helm.exists(),
        "{} is missing: `make plane` builds it (tests/plane/build.sh --with-helm)",
        helm.display()
    );
    Command::new(helm)
}

/// `helm template` of the chart into NAMESPACE with extra `--set` values.
fn render_chart(plane: &Plane, namespace: &str, sets: &[&str]) -> String {
    let mut cmd = helm(plane);
    cmd.args(["template", "voice-operator"])
        .arg(repo_root().join(CHART));
    cmd.args(["--namespace", namespace]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    succeed(cmd, None)
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}
use serde::Deserialize as _;

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect()
}

/// Dry-runs MANIFEST (a file, `-k` directory or `-` for stdin) in NAMESPACE.
fn dry_run(plane: &Plane, namespace: Option<&str>, args: &[&str], stdin: Option<&str>) {
    let mut cmd = plane.kubectl();
    cmd.args(["apply", "--dry-run=server"]);
    if let Some(ns) = namespace {
        cmd.args(["-n", ns]);
    }
    cmd.args(args);
    succeed(cmd, stdin);
}

fn ensure_namespace(plane: &Plane, name: &str) {
    let manifest = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
    let mut cmd = plane.kubectl();
    cmd.args([
        "apply",
        "--server-side",
        "--field-manager=deploy-tests",
        "-f",
        "-",
    ]);
    succeed(cmd, Some(&manifest));
}

fn install_crd(plane: &Plane) {
    let mut cmd = plane.kubectl();
    cmd.args([
        "apply",
        "--server-side",
        "--field-manager=deploy-tests",
        "-f",
    ])
    .arg(repo_root().join("crds"));
    succeed(cmd, None);
    plane.wait_crd_established("voicepipelines.voice.workflow.io");
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"));
    files.sort();
    files
}

#[test]
fn the_chart_lints_with_default_and_scoped_values() {
    let plane = Plane::shared();
    for sets in [
        vec![],
        vec![
            "watchNamespaces={team-a,team-b}",
            "serviceMonitor.enabled=true",
        ],
    ] {
        let mut cmd = helm(plane);
        cmd.args(["lint", "--strict"]).arg(repo_root().join(CHART));
        for set in &sets {
            cmd.args(["--set", set]);
        }
        succeed(cmd, None);
    }
}

#[test]
fn the_chart_refuses_replicas_without_leader_election() {
    let plane = Plane::shared();
    let mut cmd = helm(plane);
    cmd.args(["template", "voice-operator"])
        .arg(repo_root().join(CHART))
        .args(["--set", "leaderElection.enabled=false"]);
    let (ok, text) = output_of(cmd, None);
    assert!(
        !ok && text.contains("needs leaderElection.enabled=true"),
        "two replicas without leader election rendered:\n{text}"
    );
    // One replica without it is fine.
    let one = render_chart(
        plane,
        "voice-operator-system",
        &["leaderElection.enabled=false", "replicaCount=1"],
    );
    assert!(!one.contains("--leader-elect"), "{one}");
}

#[test]
fn the_chart_grants_exactly_the_rights_of_the_kustomize_base() {
    let plane = Plane::shared();
    let chart = documents(&render_chart(plane, "voice-operator-system", &[]));
    let mut kustomize = plane.kubectl();
    kustomize.arg("kustomize").arg(repo_root().join("deploy"));
    let base = documents(&succeed(kustomize, None));

    let rules = |docs: &[Value], kind: &str| -> Vec<Value> {
        of_kind(docs, kind)
            .iter()
            .map(|r| r["rules"].clone())
            .collect()
    };
    for kind in ["ClusterRole", "Role"] {
        assert_eq!(
            rules(&chart, kind),
            rules(&base, kind),
            "{kind} rules differ between chart and base"
        );
    }
    let pod = |docs: &[Value]| of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"].clone();
    let (chart_pod, base_pod) = (pod(&chart), pod(&base));
    for field in ["securityContext", "terminationGracePeriodSeconds"] {
        assert_eq!(
            chart_pod[field], base_pod[field],
            "pod {field} differs between chart and base"
        );
    }
    let container = |p: &Value| p["containers"][0].clone();
    for field in [
        "securityContext",
        "livenessProbe",
        "readinessProbe",
        "ports",
        "resources",
    ] {
        assert_eq!(
            container(&chart_pod)[field],
            container(&base_pod)[field],
            "container {field} differs between chart and base"
        );
    }
}

#[test]
fn a_scoped_chart_has_no_cluster_wide_rights() {
    let plane = Plane::shared();
    let docs = documents(&render_chart(
        plane,
        "ops",
        &[
            "watchNamespaces={team-a,team-b}",
            "dashboardNamespaces={grafana}",
        ],
    ));
    assert!(
        of_kind(&docs, "ClusterRole").is_empty() && of_kind(&docs, "ClusterRoleBinding").is_empty()
    );
    let namespaces: Vec<&str> = of_kind(&docs, "Role")
        .iter()
        .filter_map(|r| r["metadata"]["namespace"].as_str())
        .collect();
    for ns in ["team-a", "team-b", "grafana", "ops"] {
        assert!(namespaces.contains(&ns), "no Role in {ns}: {namespaces:?}");
    }
    let env = &of_kind(&docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"];
    let value = |name: &str| {
        env.as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {name}"))["value"]
            .as_str()
            .map(String::from)
    };
    assert_eq!(value("WATCH_NAMESPACE").as_deref(), Some("team-a,team-b"));
    assert_eq!(value("DASHBOARD_NAMESPACES").as_deref(), Some("grafana"));
}

#[test]
fn the_chart_ships_the_generated_crd() {
    let root = repo_root();
    let name = "voice.workflow.io_voicepipelines.yaml";
    let generated = std::fs::read_to_string(root.join("crds").join(name)).unwrap();
    let shipped = std::fs::read_to_string(root.join(CHART).join("crds").join(name)).unwrap();
    assert_eq!(
        generated, shipped,
        "the chart's CRD is stale: run `make crds`"
    );
}

#[tokio::test]
async fn every_manifest_passes_server_side_dry_run() {
    let plane = Plane::shared();
    install_crd(plane);
    let ns = plane.namespace("deploy").await;

    // The kustomize base, into its own namespace.
    ensure_namespace(plane, "voice-operator-system");
    dry_run(
        plane,
        None,
        &["-k", repo_root().join("deploy").to_str().unwrap()],
        None,
    );

    // The chart, cluster-wide and scoped to the test's namespace.
    let chart = render_chart(plane, &ns.name, &["serviceMonitor.enabled=true"]);
    dry_run(plane, Some(&ns.name), &["-f", "-"], Some(&chart));
    let watch = format!("watchNamespaces={{{}}}", ns.name);
    let scoped = render_chart(plane, &ns.name, &[watch.as_str()]);
    dry_run(plane, Some(&ns.name), &["-f", "-"], Some(&scoped));

    // The Argo CD health patch, into Argo CD's namespace.
    ensure_namespace(plane, "argocd");
    dry_run(
        plane,
        None,
        &[
            "-f",
            repo_root()
                .join("deploy/argocd/argocd-cm.yaml")
                .to_str()
                .unwrap(),
        ],
        None,
    );

    // The operator's own monitoring (a kustomization naming the operator's namespace).
    dry_run(
        plane,
        None,
        &[
            "-k",
            repo_root().join("deploy/monitoring").to_str().unwrap(),
        ],
        None,
    );
    // The examples name no namespace: into the test's.
    let examples = yaml_files(&repo_root().join("examples"));
    assert!(examples.len() >= 3, "examples went missing");
    for file in examples {
        dry_run(plane, Some(&ns.name), &["-f", file.to_str().unwrap()], None);
    }
}
