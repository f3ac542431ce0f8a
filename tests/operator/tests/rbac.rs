//! The operator runs with exactly the RBAC of `deploy/` (a ServiceAccount token), and it is
//! enough: every child kind is created, patched and deleted, pods are read for the status, the
//! finalizer works, Events are published, and two replicas share the work through the leader
//! Lease.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use operator_tests::{
    Operator, apply_ok, bind_volume, condition, ensure_namespace, example,
    minimal_with_dashboards_in, plane, wait_for, wait_ready, wait_reason,
};
use serde_json::json;
use test_support::{Plane, eventually, repo_root};
use voice_operator::controller::LeaderElection;
use voice_operator::monitoring_crds::PrometheusRule;
use voice_types::VoicePipeline;

const TIMEOUT: Duration = Duration::from_secs(60);
const OPERATOR_NS: &str = "voice-operator-system";

fn leader(name: &str, identity: &str) -> Option<LeaderElection> {
    Some(LeaderElection {
        namespace: OPERATOR_NS.into(),
        name: name.into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(6),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_rbac_is_enough_and_two_replicas_share_a_lease() {
    let plane = plane();
    for f in ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"] {
        let out = plane
            .kubectl()
            .args(["apply", "-f"])
            .arg(repo_root().join("deploy").join(f))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ns = plane.namespace("rbac").await;
    ensure_namespace(&ns.client, "grafana").await;
    let sa = plane
        .service_account_client(OPERATOR_NS, "voice-operator")
        .await;
    let lease_name = format!("lease-{}", ns.name);
    let a = Operator::start_with(sa.clone(), &[&ns.name], leader(&lease_name, "replica-a")).await;
    let b = Operator::start_with(sa.clone(), &[&ns.name], leader(&lease_name, "replica-b")).await;

    // Every kind of child, the finalizer and a cross-namespace dashboard.
    bind_volume(plane, &ns.name, "riva-models");
    apply_ok(plane, &ns.name, &example("managed-riva-gpu.yaml"));
    apply_ok(plane, &ns.name, &example("external-riva.yaml"));
    let api: Api<VoicePipeline> = Api::namespaced(ns.client.clone(), &ns.name);
    for name in ["voice", "support-line"] {
        let vp = wait_ready(&api, name, TIMEOUT).await;
        for t in [
            "GatewayAvailable",
            "RivaAvailable",
            "MonitoringConfigured",
            "DashboardsConfigured",
        ] {
            let (status, reason, message) = condition(&vp, t).unwrap();
            assert_eq!(status, "True", "{name} {t}: {reason}: {message}");
        }
    }

    // One leader holds the Lease; the other stands by, ready.
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), OPERATOR_NS);
    let holder = leases
        .get(&lease_name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert!(holder == "replica-a" || holder == "replica-b", "{holder}");
    assert_eq!(a.admin_get("/readyz").await.0, 200);
    assert_eq!(b.admin_get("/readyz").await.0, 200);
    let leading = a.metric("voice_operator_leader").await + b.metric("voice_operator_leader").await;
    assert_eq!(leading, 1.0, "exactly one leader");

    // Pods, read-only: a Riva pod no node can hold is reported with the scheduler's reason.
    let riva_gpus = |n: i32| json!({"spec": {"riva": {"managed": {"gpu": {"count": n}}}}});
    api.patch(
        "voice",
        &PatchParams::default(),
        &Patch::Merge(&riva_gpus(9)),
    )
    .await
    .unwrap();
    wait_reason(&api, "voice", "RivaAvailable", "Unschedulable", TIMEOUT).await;
    api.patch(
        "voice",
        &PatchParams::default(),
        &Patch::Merge(&riva_gpus(1)),
    )
    .await
    .unwrap();
    wait_ready(&api, "voice", TIMEOUT).await;

    // Delete verbs: a switched-off PrometheusRule goes.
    let off = json!({"spec": {"observability": {"prometheusRule": {"enabled": false}}}});
    api.patch("voice", &PatchParams::default(), &Patch::Merge(&off))
        .await
        .unwrap();
    let rules: Api<PrometheusRule> = Api::namespaced(ns.client.clone(), &ns.name);
    eventually(TIMEOUT, || async {
        rules
            .get_opt("voice-alerts")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;

    // Events: a reconcile error is published by the operator's ServiceAccount.
    let bad =
        json!({"spec": {"observability": {"dashboards": {"namespace": "no-such-namespace"}}}});
    api.patch("support-line", &PatchParams::default(), &Patch::Merge(&bad))
        .await
        .unwrap();
    let events: Api<Event> = Api::namespaced(ns.client.clone(), &ns.name);
    eventually(TIMEOUT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reporting_controller.as_deref() == Some("voice-operator")
                    && e.type_.as_deref() == Some("Warning")
            })
            .then_some(())
    })
    .await;
    let fix = json!({"spec": {"observability": {"dashboards": {"namespace": "grafana"}}}});
    api.patch("support-line", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .unwrap();

    // The leader goes (gracefully, releasing the Lease): the standby takes over.
    let (leader_op, standby) = if holder == "replica-a" {
        (a, b)
    } else {
        (b, a)
    };
    leader_op.stop().await.unwrap();
    eventually(TIMEOUT, || async {
        (standby.metric("voice_operator_leader").await == 1.0).then_some(())
    })
    .await;
    let scale = json!({"spec": {"gateway": {"replicas": 3}}});
    api.patch("voice", &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .unwrap();
    let vp = wait_for(
        &api,
        "voice",
        TIMEOUT,
        "3 gateway replicas observed",
        |vp| {
            vp.status
                .as_ref()
                .and_then(|s| s.gateway.as_ref())
                .is_some_and(|g| g.ready == "3/3")
                && vp.status.as_ref().and_then(|s| s.observed_generation) == vp.metadata.generation
        },
    )
    .await;
    assert_eq!(condition(&vp, "Ready").unwrap().0, "True");

    // Deleting: the finalizer (patch on the pipeline, delete in another namespace) works.
    api.delete("support-line", &DeleteParams::default())
        .await
        .unwrap();
    let grafana: Api<ConfigMap> = Api::namespaced(ns.client.clone(), "grafana");
    let dash = format!("voice-dashboard.{}.support-line", ns.name);
    eventually(TIMEOUT, || async {
        let gone = api.get_opt("support-line").await.ok()?.is_none()
            && grafana.get_opt(&dash).await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
    let _ = standby.stop().await;
    let _ = leases.delete(&lease_name, &DeleteParams::default()).await;
}

/// Installs the ClusterRole of `deploy/rbac.yaml` with `rule` (its exact text) replaced by
/// `instead`, bound to a new ServiceAccount `sa` in the operator's namespace: an operator whose
/// RBAC misses a right (for example one upgraded without its new ClusterRole). Returns a client
/// with that account's token.
async fn operator_without(plane: &Plane, sa: &str, rule: &str, instead: &str) -> kube::Client {
    let rbac = std::fs::read_to_string(repo_root().join("deploy/rbac.yaml")).unwrap();
    assert!(rbac.contains(rule), "deploy/rbac.yaml has no rule\n{rule}");
    let cluster_role_and_binding: String = rbac
        .split("\n---\n")
        .take(2)
        .collect::<Vec<_>>()
        .join("\n---\n")
        .replace(rule, instead)
        .replace("name: voice-operator\n", &format!("name: {sa}\n"));
    assert!(
        !cluster_role_and_binding.contains(rule)
            && cluster_role_and_binding.matches(sa).count() == 4,
        "the ClusterRole less the rule, and its binding to {sa} (names: role, binding, roleRef, subject):\n{cluster_role_and_binding}"
    );
    for args in [
        vec!["apply", "-f", "namespace.yaml"],
        vec!["create", "serviceaccount", sa, "-n", OPERATOR_NS],
    ] {
        let out = plane
            .kubectl()
            .current_dir(repo_root().join("deploy"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || stderr.contains("already exists"),
            "{args:?}: {stderr}"
        );
    }
    let out = plane
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(cluster_role_and_binding.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    plane.service_account_client(OPERATOR_NS, sa).await
}

/// A pass that fails on the pipeline's own write (here its status: the operator runs with the
/// deploy/ ClusterRole less `voicepipelines/status`) reaches the pipeline's owner as a Warning
/// Event, not only the operator's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_write_the_api_server_refuses_is_an_event() {
    let plane = plane();
    let client = operator_without(
        plane,
        "voice-operator-no-status",
        "  - apiGroups: [voice.workflow.io]\n    resources: [voicepipelines/status]\n    verbs: [patch]\n",
        "",
    )
    .await;
    let ns = plane.namespace("no-status").await;
    let op = Operator::start(client, &[&ns.name]).await;
    apply_ok(plane, &ns.name, &example("minimal.yaml"));
    let events: Api<Event> = Api::namespaced(ns.client.clone(), &ns.name);
    let note = eventually(Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find_map(|e| {
            (e.reporting_controller.as_deref() == Some("voice-operator")
                && e.type_.as_deref() == Some("Warning")
                && e.reason.as_deref() == Some("StatusWriteFailed")
                && e.regarding.as_ref()?.name.as_deref() == Some("demo"))
            .then_some(e.note.unwrap_or_default())
        })
    })
    .await;
    assert!(
        note.contains("status") && note.contains("forbidden"),
        "{note}"
    );
    // The pipeline is gone with its namespace; its status was never written.
    op.stop().await.unwrap();
}

/// Without the pods rule (an operator upgraded without its new ClusterRole), the pod watch is
/// refused, and the operator retries it and logs a warning. Everything else goes on: pipelines
/// become Ready, the operator is ready, and drift is undone. Only the pods' problems are
/// missing from the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_pods_rule_pipelines_still_become_ready() {
    let plane = plane();
    let client = operator_without(
        plane,
        "voice-operator-no-pods",
        "  - apiGroups: [\"\"]\n    resources: [pods]\n    verbs: [list, watch]\n",
        "",
    )
    .await;
    let ns = plane.namespace("no-pods").await;
    // The account really may not read the pods.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    match pods.list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("pods readable without the pods rule: {other:?}"),
    }
    let op = Operator::start(client, &[&ns.name]).await;
    apply_ok(plane, &ns.name, &example("minimal.yaml"));
    let api: Api<VoicePipeline> = Api::namespaced(ns.client.clone(), &ns.name);
    let vp = wait_ready(&api, "demo", TIMEOUT).await;
    assert_eq!(condition(&vp, "GatewayAvailable").unwrap().0, "True");
    assert_eq!(op.admin_get("/readyz").await.0, 200);
    // The controller still watches the children: a scaled gateway is put back.
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    let scaled = json!({"spec": {"replicas": 4}});
    deployments
        .patch(
            "demo-gateway",
            &PatchParams::default(),
            &Patch::Merge(&scaled),
        )
        .await
        .unwrap();
    eventually(TIMEOUT, || async {
        let d = deployments.get("demo-gateway").await.ok()?;
        (d.metadata.generation >= Some(2) && d.spec?.replicas == Some(1)).then_some(())
    })
    .await;
    op.stop().await.unwrap();
}

/// A pipeline whose dashboards namespace the operator may not write (like a Helm install whose
/// `dashboardNamespaces` does not list it) says so in `DashboardsConfigured`, and still goes
/// when deleted: the operator may not delete there either, but the status never placed a
/// dashboard there, so the finalizer does not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_namespace_the_operator_may_not_write_does_not_block_deletion() {
    let plane = plane();
    // ConfigMaps only where a Role grants them, as the chart does for its namespaces.
    let client = operator_without(
        plane,
        "voice-operator-scoped-configmaps",
        "    resources: [services, configmaps]\n",
        "    resources: [services]\n",
    )
    .await;
    let ns = plane.namespace("dash-forbidden").await;
    let elsewhere = plane.namespace("dash-not-granted").await;
    let role = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: voice-operator-configmaps}}
rules:
  - {{apiGroups: [""], resources: [configmaps], verbs: [list, watch, create, patch, delete]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: voice-operator-configmaps}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: voice-operator-configmaps}}
subjects:
  - {{kind: ServiceAccount, name: voice-operator-scoped-configmaps, namespace: {OPERATOR_NS}}}
"#
    );
    apply_ok(plane, &ns.name, &role);
    let op = Operator::start(client, &[&ns.name]).await;
    let pipeline = minimal_with_dashboards_in("demo", &elsewhere.name);
    apply_ok(plane, &ns.name, &pipeline);
    let api: Api<VoicePipeline> = Api::namespaced(ns.client.clone(), &ns.name);
    let vp = wait_reason(&api, "demo", "DashboardsConfigured", "ApplyFailed", TIMEOUT).await;
    let (_, _, message) = condition(&vp, "DashboardsConfigured").unwrap();
    assert!(message.contains("forbidden"), "{message}");
    assert!(
        vp.finalizers()
            .iter()
            .any(|f| f == "voice.workflow.io/dashboards")
    );

    api.delete("demo", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(30), || async {
        api.get_opt("demo").await.ok()?.is_none().then_some(())
    })
    .await;
    op.stop().await.unwrap();
}
