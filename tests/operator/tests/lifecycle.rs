//! A pipeline over its life: a spec change rolls out and is observed; drift of a child is
//! undone; a switched-off component's children are deleted; steady state writes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use operator_tests::{
    Operator, apply_ok, bind_volume, condition, delete_with_its_dashboard, example,
    minimal_with_dashboards_in, plane, wait_for, wait_ready,
};
use serde_json::json;
use test_support::{Plane, eventually};
use voice_operator::monitoring_crds::{PrometheusRule, ServiceMonitor};
use voice_types::VoicePipeline;

const TIMEOUT: Duration = Duration::from_secs(60);

fn hash_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()["voice.workflow.io/config-hash"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_change_rolls_out_drift_is_undone_and_disabled_children_go() {
    let plane = plane();
    let ns = plane.namespace("lifecycle").await;
    let c = ns.client.clone();
    let op = Operator::start(c.clone(), &[&ns.name]).await;
    apply_ok(plane, &ns.name, &example("minimal.yaml"));
    let api: Api<VoicePipeline> = Api::namespaced(c.clone(), &ns.name);
    let vp = wait_ready(&api, "demo", TIMEOUT).await;
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns.name);
    let before = deployments.get("demo-gateway").await.unwrap();

    // Without leader election this replica leads by configuration (VoiceOperatorNoLeader stays
    // silent for a single-replica install).
    assert_eq!(op.metric("voice_operator_leader").await, 1.0);

    // Steady state: nothing is written, neither children nor status.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = op.metric("voice_operator_api_writes_total").await;
    let rv_vp = api.get("demo").await.unwrap().resource_version();
    let rv_dep = deployments
        .get("demo-gateway")
        .await
        .unwrap()
        .resource_version();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = op.metric("voice_operator_api_writes_total").await;
    assert_eq!(
        after,
        writes,
        "writes in steady state:\n{}",
        op.admin_get("/metrics").await.1
    );
    assert_eq!(
        api.get("demo").await.unwrap().resource_version(),
        rv_vp,
        "status rewritten in steady state"
    );
    assert_eq!(
        deployments
            .get("demo-gateway")
            .await
            .unwrap()
            .resource_version(),
        rv_dep
    );

    // A spec change: three replicas and a new prompt roll out and are observed.
    let patch = json!({"spec": {"gateway": {"replicas": 3}, "llm": {"systemPrompt": "Be terse."}}});
    api.patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let vp2 = wait_ready(&api, "demo", TIMEOUT).await;
    assert!(vp2.metadata.generation > vp.metadata.generation);
    assert_eq!(
        vp2.status.as_ref().unwrap().gateway.as_ref().unwrap().ready,
        "3/3"
    );
    let after = deployments.get("demo-gateway").await.unwrap();
    assert_ne!(
        hash_of(&before),
        hash_of(&after),
        "a config change changes the pod template"
    );
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), &ns.name);
    assert_eq!(
        cms.get("demo-gateway").await.unwrap().data.unwrap()["LLM_SYSTEM_PROMPT"],
        "Be terse."
    );
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(c.clone(), &ns.name);
    assert!(
        pdbs.get_opt("demo-gateway").await.unwrap().is_some(),
        "3 replicas: a PDB"
    );
    // The Ready condition moved (it went False while rolling out) only when its status did.
    let ready = vp2.status.as_ref().unwrap().condition("Ready").unwrap();
    assert_eq!(ready.observed_generation, vp2.metadata.generation);

    // Drift: kubectl scale is undone.
    let out = plane.kubectl_output(&[
        "scale",
        "-n",
        &ns.name,
        "deployment/demo-gateway",
        "--replicas=7",
    ]);
    assert!(out.status.success());
    eventually(Duration::from_secs(10), || async {
        (deployments.get("demo-gateway").await.ok()?.spec?.replicas == Some(3)).then_some(())
    })
    .await;
    // Drift: an edited ConfigMap is restored, a deleted Service recreated.
    let edit = json!({"data": {"RIVA_URI": "elsewhere:1"}});
    cms.patch(
        "demo-gateway",
        &PatchParams::default(),
        &Patch::Merge(&edit),
    )
    .await
    .unwrap();
    let services: Api<Service> = Api::namespaced(c.clone(), &ns.name);
    services
        .delete("demo-gateway", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(10), || async {
        let uri_ok =
            cms.get("demo-gateway").await.ok()?.data?["RIVA_URI"] == "riva-api.riva.svc:50051";
        let svc = services.get_opt("demo-gateway").await.ok()??;
        (uri_ok && svc.metadata.deletion_timestamp.is_none()).then_some(())
    })
    .await;
    // Drift: the operator's label removed, so the ConfigMap leaves the operator's watch. The
    // watch reports it deleted (kube-apiserver sends the object as it was, labels and all), and
    // the operator applies it again, label included.
    let unlabel = json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": null}}});
    cms.patch(
        "demo-gateway",
        &PatchParams::default(),
        &Patch::Merge(&unlabel),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(10), || async {
        let labels = cms.get("demo-gateway").await.ok()?.metadata.labels?;
        (labels.get("app.kubernetes.io/managed-by")? == "voice-operator").then_some(())
    })
    .await;

    // Switched off: alerts, dashboards, the PDB (one replica), ServiceMonitors.
    let off = json!({"spec": {"gateway": {"replicas": 1}, "observability": {
        "prometheusRule": {"enabled": false}, "dashboards": {"enabled": false}, "serviceMonitor": {"enabled": false}}}});
    api.patch("demo", &PatchParams::default(), &Patch::Merge(&off))
        .await
        .unwrap();
    let vp3 = wait_ready(&api, "demo", TIMEOUT).await;
    assert_eq!(
        condition(&vp3, "MonitoringConfigured").unwrap().1,
        "Disabled"
    );
    let rules: Api<PrometheusRule> = Api::namespaced(c.clone(), &ns.name);
    let sms: Api<ServiceMonitor> = Api::namespaced(c.clone(), &ns.name);
    eventually(Duration::from_secs(10), || async {
        let gone = rules.get_opt("demo-alerts").await.ok()?.is_none()
            && sms.get_opt("demo-gateway").await.ok()?.is_none()
            && pdbs.get_opt("demo-gateway").await.ok()?.is_none()
            && cms
                .get_opt(&format!("voice-dashboard.{}.demo", ns.name))
                .await
                .ok()?
                .is_none();
        gone.then_some(())
    })
    .await;
    op.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riva_made_external_deletes_its_children_and_repoints_the_gateway() {
    let plane = plane();
    let ns = plane.namespace("riva-switch").await;
    let c = ns.client.clone();
    let _op = Operator::start(c.clone(), &[&ns.name]).await;
    bind_volume(plane, &ns.name, "riva-models");
    apply_ok(plane, &ns.name, &example("managed-riva-gpu.yaml"));
    let api: Api<VoicePipeline> = Api::namespaced(c.clone(), &ns.name);
    wait_ready(&api, "voice", TIMEOUT).await;
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns.name);
    assert!(deployments.get_opt("voice-riva").await.unwrap().is_some());

    let patch = json!({"spec": {"riva": {"managed": null, "external": {"uri": "riva-api.riva.svc:50051"}}}});
    api.patch("voice", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let vp = wait_for(&api, "voice", TIMEOUT, "external and Ready", |vp| {
        condition(vp, "RivaAvailable").is_some_and(|c| c.1 == "External")
            && condition(vp, "Ready").is_some_and(|c| c.0 == "True")
            && vp.status.as_ref().and_then(|s| s.observed_generation) == vp.metadata.generation
    })
    .await;
    assert_eq!(vp.status.unwrap().riva.unwrap().ready, "external");
    let services: Api<Service> = Api::namespaced(c.clone(), &ns.name);
    let sms: Api<ServiceMonitor> = Api::namespaced(c.clone(), &ns.name);
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), &ns.name);
    eventually(Duration::from_secs(10), || async {
        let gone = deployments.get_opt("voice-riva").await.ok()?.is_none()
            && services.get_opt("voice-riva").await.ok()?.is_none()
            && sms.get_opt("voice-riva").await.ok()?.is_none();
        let data: BTreeMap<String, String> = cms.get("voice-gateway").await.ok()?.data?;
        (gone && data["RIVA_URI"] == "riva-api.riva.svc:50051").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_tell_the_truth() {
    let plane = plane();
    let ns = plane.namespace("admin").await;
    let op = Operator::start(ns.client.clone(), &[&ns.name]).await;
    eventually(Duration::from_secs(20), || async {
        (op.admin_get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(op.admin_get("/livez").await.0, 200);
    apply_ok(plane, &ns.name, &example("minimal.yaml"));
    let api: Api<VoicePipeline> = Api::namespaced(ns.client.clone(), &ns.name);
    wait_ready(&api, "demo", TIMEOUT).await;
    let (_, metrics) = op.admin_get("/metrics").await;
    for m in [
        "voice_operator_reconciles_total",
        "voice_operator_reconcile_duration_seconds_bucket",
        "voice_operator_api_writes_total",
    ] {
        assert!(metrics.contains(m), "/metrics lacks {m}:\n{metrics}");
    }
    // A child the API server refuses: a component condition says why, Ready stays (the
    // gateway serves), and the error is counted by reason.
    let bad =
        json!({"spec": {"observability": {"dashboards": {"namespace": "no-such-namespace"}}}});
    api.patch("demo", &PatchParams::default(), &Patch::Merge(&bad))
        .await
        .unwrap();
    let vp = wait_for(&api, "demo", TIMEOUT, "DashboardsConfigured=False", |vp| {
        condition(vp, "DashboardsConfigured").is_some_and(|c| c.0 == "False")
    })
    .await;
    let (_, _, msg) = condition(&vp, "DashboardsConfigured").unwrap();
    assert!(msg.contains("no-such-namespace"), "{msg}");
    assert_eq!(
        condition(&vp, "Ready").unwrap().0,
        "True",
        "the pipeline still serves"
    );
    let not_found = || op.metric("voice_operator_reconcile_errors_total{reason=\"NotFound\"}");
    eventually(Duration::from_secs(10), || async {
        (not_found().await > 0.0).then_some(())
    })
    .await;
    // Retried with a growing backoff (1, 2, 4, 8 s…), not every second: a refusal that lasts
    // must not become a stream of failed writes.
    let before = not_found().await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let retries = not_found().await - before;
    assert!(
        (1.0..=5.0).contains(&retries),
        "{retries} failed passes in 12 s; the backoff allows 3 or 4"
    );
    // The dashboard finalizer goes with the pipeline while the operator still runs; a pipeline
    // left behind would keep the namespace Terminating on the shared plane for good.
    api.delete("demo", &Default::default()).await.unwrap();
    eventually(TIMEOUT, || async {
        api.get_opt("demo").await.ok()?.is_none().then_some(())
    })
    .await;
    op.stop().await.unwrap();
}

/// An operator that restarts (an upgrade, a leader failover) finds its pipelines as it left
/// them. Its first pass re-applies each child (it keeps no memory across restarts, and a new
/// version may build them differently), which changes nothing that is already as desired. Those
/// passes may run while its caches are still listing, and still no pipeline's status is
/// rewritten, `Ready` does not flap, and no child changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_operator_changes_nothing_for_ready_pipelines() {
    const PIPELINES: usize = 6;
    let plane = plane();
    let ns = plane.namespace("restart").await;
    let c = ns.client.clone();
    let api: Api<VoicePipeline> = Api::namespaced(c.clone(), &ns.name);
    let first = Operator::start(c.clone(), &[&ns.name]).await;
    let names: Vec<String> = (0..PIPELINES).map(|i| format!("demo-{i}")).collect();
    for name in &names {
        apply_ok(
            plane,
            &ns.name,
            &example("minimal.yaml").replace("name: demo\n", &format!("name: {name}\n")),
        );
    }
    for name in &names {
        wait_ready(&api, name, TIMEOUT).await;
    }
    first.stop().await.unwrap();
    // Every object's version, and when each pipeline became Ready, as the first operator left them.
    let state = || async {
        let mut versions = BTreeMap::new();
        for vp in api.list(&Default::default()).await.unwrap() {
            let since = vp.status.as_ref().unwrap().condition("Ready").unwrap();
            let ready = (since.status.clone(), since.last_transition_time.clone());
            versions.insert(
                format!("vp/{}", vp.name_any()),
                (vp.resource_version(), Some(ready)),
            );
        }
        for children in [
            versions_of::<ConfigMap>(&c, &ns.name).await,
            versions_of::<Deployment>(&c, &ns.name).await,
            versions_of::<Service>(&c, &ns.name).await,
            versions_of::<ServiceMonitor>(&c, &ns.name).await,
            versions_of::<PrometheusRule>(&c, &ns.name).await,
        ] {
            versions.extend(children.into_iter().map(|(k, rv)| (k, (rv, None))));
        }
        versions
    };
    let before = state().await;
    assert!(
        before.len() > PIPELINES * 6,
        "pipelines and their children: {before:?}"
    );

    let second = Operator::start(c.clone(), &[&ns.name]).await;
    // Every pipeline has had its first pass: each re-applied its children once.
    eventually(TIMEOUT, || async {
        let writes = second.metric("voice_operator_api_writes_total").await;
        (writes >= (PIPELINES * 6) as f64).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = state().await;
    let changed: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {v:?} -> {:?}", after.get(k)))
        .collect();
    assert!(
        changed.is_empty(),
        "changed by the restarted operator:\n{}",
        changed.join("\n")
    );
    second.stop().await.unwrap();
}

/// A dashboard in another namespace whose re-apply the API server refuses (here an admission
/// policy that freezes ConfigMap updates there) stays as it is: `DashboardsConfigured` says
/// why, the dashboard is neither deleted nor replaced, and the status still says where it is.
/// Once updates are allowed again, the change lands on the same object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dashboard_update_keeps_the_dashboard() {
    let plane = plane();
    let ns = plane.namespace("dash-keep").await;
    let dash_ns = plane.namespace("dash-frozen").await;
    let c = ns.client.clone();
    let op = Operator::start_full(c.clone(), &[&ns.name], &[&dash_ns.name], None).await;
    let pipeline = |labels: &str| {
        minimal_with_dashboards_in("demo", &dash_ns.name) + &format!("      labels: {{{labels}}}\n")
    };
    apply_ok(plane, &ns.name, &pipeline("grafana_dashboard: \"1\""));
    let api: Api<VoicePipeline> = Api::namespaced(c.clone(), &ns.name);
    wait_ready(&api, "demo", TIMEOUT).await;
    let dashboards: Api<ConfigMap> = Api::namespaced(c.clone(), &dash_ns.name);
    let name = format!("voice-dashboard.{}.demo", ns.name);
    let uid = dashboards.get(&name).await.unwrap().uid();

    // Freeze ConfigMap updates in the dashboards' namespace.
    let policy = format!("freeze-configmaps-{}", dash_ns.name);
    refuse(plane, &policy, &dash_ns.name, "", "configmaps", "[UPDATE]");
    // Until the policy is in force: a label change is refused.
    let probe = json!({"metadata": {"labels": {"probe": "1"}}});
    eventually(TIMEOUT, || async {
        dashboards
            .patch(&name, &PatchParams::default(), &Patch::Merge(&probe))
            .await
            .is_err()
            .then_some(())
    })
    .await;

    // A spec change the dashboard must follow: a label more.
    apply_ok(
        plane,
        &ns.name,
        &pipeline("grafana_dashboard: \"1\", team: voice"),
    );
    let vp = wait_for(&api, "demo", TIMEOUT, "DashboardsConfigured=False", |vp| {
        condition(vp, "DashboardsConfigured").is_some_and(|c| c.0 == "False")
    })
    .await;
    let (_, reason, message) = condition(&vp, "DashboardsConfigured").unwrap();
    assert!(message.contains(&policy), "{reason}: {message}");
    // Passes go on (retries with backoff); the dashboard stays, unchanged.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cm = dashboards.get(&name).await.unwrap();
    assert_eq!(cm.uid(), uid, "the dashboard was deleted and made again");
    assert!(!cm.labels().contains_key("team"));
    let vp = api.get("demo").await.unwrap();
    assert_eq!(
        vp.status.unwrap().dashboards_namespace.as_deref(),
        Some(dash_ns.name.as_str())
    );

    // Thawed: the change lands on the same dashboard.
    allow_again(plane, &policy);
    wait_ready(&api, "demo", TIMEOUT).await;
    eventually(TIMEOUT, || async {
        let cm = dashboards.get(&name).await.ok()?;
        (cm.labels().get("team").map(String::as_str) == Some("voice")).then_some(cm)
    })
    .await;
    assert_eq!(dashboards.get(&name).await.unwrap().uid(), uid);
    delete_with_its_dashboard(&api, "demo", &dashboards, &name).await;
    op.stop().await.unwrap();
}

/// An admission policy a cluster may have: a ValidatingAdmissionPolicy and its binding that
/// refuse `operations` (e.g. `[UPDATE]`) on `resource` of `group` ("" for core) in namespace
/// `target`.
fn refuse(
    plane: &Plane,
    policy: &str,
    target: &str,
    group: &str,
    resource: &str,
    operations: &str,
) {
    let yaml = format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {policy}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - {{apiGroups: ["{group}"], apiVersions: ["*"], operations: {operations}, resources: [{resource}]}}
  validations:
    - {{expression: "false", message: "refused by the policy {policy}"}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {policy}}}
spec:
  policyName: {policy}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {{kubernetes.io/metadata.name: {target}}}
"#
    );
    apply_ok(plane, target, &yaml);
}

/// Removes what [`refuse`] made.
fn allow_again(plane: &Plane, policy: &str) {
    let out = plane
        .kubectl()
        .args([
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            policy,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child of the gateway that the API server refuses (here its PodDisruptionBudget, by an
/// admission policy) fails the pass and `Ready` names it, but the status still shows the
/// gateway as it is: its Deployment applied and its pods available.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_child_does_not_hide_a_serving_gateway() {
    let plane = plane();
    let ns = plane.namespace("pdb-refused").await;
    let c = ns.client.clone();
    let op = Operator::start(c.clone(), &[&ns.name]).await;
    apply_ok(plane, &ns.name, &example("minimal.yaml"));
    let api: Api<VoicePipeline> = Api::namespaced(c.clone(), &ns.name);
    wait_ready(&api, "demo", TIMEOUT).await;
    let policy = format!("refuse-pdbs-{}", ns.name);
    refuse(
        plane,
        &policy,
        &ns.name,
        "policy",
        "poddisruptionbudgets",
        "[CREATE, UPDATE]",
    );
    // Until the policy is in force: a dry-run PDB is refused.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(c.clone(), &ns.name);
    let probe: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"probe": "1"}}}
    }))
    .unwrap();
    let dry_run = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    eventually(TIMEOUT, || async {
        pdbs.create(&dry_run, &probe).await.is_err().then_some(())
    })
    .await;

    // Two replicas: the gateway scales, its PDB is refused.
    let two = json!({"spec": {"gateway": {"replicas": 2}}});
    api.patch("demo", &PatchParams::default(), &Patch::Merge(&two))
        .await
        .unwrap();
    let vp = wait_for(
        &api,
        "demo",
        TIMEOUT,
        "refused PDB named, gateway 2/2",
        |vp| {
            let gateway = vp.status.as_ref().and_then(|s| s.gateway.as_ref());
            condition(vp, "Ready").is_some_and(|r| r.0 == "False" && r.2.contains(&policy))
                && condition(vp, "GatewayAvailable").is_some_and(|g| g.0 == "True")
                && gateway.is_some_and(|g| g.ready == "2/2" && g.ready_replicas == 2)
        },
    )
    .await;
    assert_eq!(
        vp.status.as_ref().unwrap().observed_generation,
        vp.metadata.generation
    );

    allow_again(plane, &policy);
    wait_ready(&api, "demo", TIMEOUT).await;
    pdbs.get("demo-gateway").await.unwrap();
    op.stop().await.unwrap();
}

/// `Kind/name` and resourceVersion of every object of kind `K` in `ns`.
async fn versions_of<K>(client: &kube::Client, ns: &str) -> Vec<(String, Option<String>)>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .list_metadata(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|m| {
            (
                format!("{}/{}", K::kind(&()), m.name_any()),
                m.metadata.resource_version,
            )
        })
        .collect()
}

/// A dashboards namespace that the operator also watches for pipelines, and lists among its
/// dashboard namespaces: a deleted dashboard there is back within seconds, as in any other
/// dashboard namespace (its events reach the controller of the pipeline's namespace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_in_another_watched_namespace_is_restored_at_once() {
    let plane = plane();
    let ns = plane.namespace("dash-home").await;
    let dash_ns = plane.namespace("dash-watched").await;
    let c = ns.client.clone();
    let watched = [ns.name.as_str(), dash_ns.name.as_str()];
    let op = Operator::start_full(c.clone(), &watched, &[&dash_ns.name], None).await;
    let pipeline = minimal_with_dashboards_in("demo", &dash_ns.name);
    apply_ok(plane, &ns.name, &pipeline);
    let api: Api<VoicePipeline> = Api::namespaced(c.clone(), &ns.name);
    wait_ready(&api, "demo", TIMEOUT).await;
    let dashboards: Api<ConfigMap> = Api::namespaced(c.clone(), &dash_ns.name);
    let name = format!("voice-dashboard.{}.demo", ns.name);
    let uid = dashboards.get(&name).await.unwrap().uid();
    dashboards
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(15), || async {
        let cm = dashboards.get_opt(&name).await.ok()??;
        (cm.uid() != uid).then_some(())
    })
    .await;
    delete_with_its_dashboard(&api, "demo", &dashboards, &name).await;
    op.stop().await.unwrap();
}
