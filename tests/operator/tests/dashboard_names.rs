//! Dashboards of many pipelines in one namespace (Grafana's): each keeps its own, under a
//! name no other pipeline has; a dashboard under the name older versions gave it is replaced,
//! and only if it is this pipeline's; a moved dashboard leaves nothing behind.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use operator_tests::{
    Operator, apply_ok, delete_with_its_dashboard, minimal_with_dashboards_in, plane,
    wait_gone_with_its_dashboard, wait_ready,
};
use serde_json::json;
use test_support::{TestNamespace, eventually};
use voice_operator::model::{dashboard_name, legacy_dashboard_name};
use voice_types::VoicePipeline;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Two namespaces and a pipeline name in each whose dashboards had the same name before:
/// `a`/`eu-X-p` and `a-eu-X`/`p` were both `voice-dashboard-a-eu-X-p`.
async fn colliding_pair() -> ((TestNamespace, String), (TestNamespace, String)) {
    let plane = plane();
    let a = plane.namespace("dash-old").await;
    let b = plane.namespace(&format!("{}-eu", a.name)).await;
    let suffix = b.name.strip_prefix(&format!("{}-", a.name)).unwrap();
    let a_pipeline = format!("{suffix}-p");
    assert_eq!(
        legacy_dashboard_name(&a.name, &a_pipeline),
        legacy_dashboard_name(&b.name, "p")
    );
    ((a, a_pipeline), (b, "p".to_string()))
}

/// A dashboard as an older operator version wrote it, for pipeline `namespace/pipeline`,
/// under `name` in `dashboards`.
async fn old_dashboard(dashboards: &Api<ConfigMap>, name: &str, namespace: &str, pipeline: &str) {
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/name": "voice-pipeline",
                "app.kubernetes.io/instance": pipeline,
                "app.kubernetes.io/component": "dashboards",
                "app.kubernetes.io/part-of": "voice-workflow",
                "app.kubernetes.io/managed-by": "voice-operator",
                "voice.workflow.io/pipeline-namespace": namespace,
                "grafana_dashboard": "1",
            },
        },
        "data": {format!("{name}.json"): "{}"},
    }))
    .unwrap();
    dashboards
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
}

fn labels_of(cm: &ConfigMap) -> (Option<&str>, Option<&str>) {
    let l: &BTreeMap<String, String> = cm.labels();
    (
        l.get("app.kubernetes.io/instance").map(String::as_str),
        l.get("voice.workflow.io/pipeline-namespace")
            .map(String::as_str),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_whose_old_dashboard_names_collide_keep_their_own() {
    let plane = plane();
    let ((a, a_name), (b, b_name)) = colliding_pair().await;
    let grafana = plane.namespace("dash-shared").await;
    let c = a.client.clone();
    let op = Operator::start_full(c.clone(), &[&a.name, &b.name], &[&grafana.name], None).await;
    apply_ok(
        plane,
        &a.name,
        &minimal_with_dashboards_in(&a_name, &grafana.name),
    );
    apply_ok(
        plane,
        &b.name,
        &minimal_with_dashboards_in(&b_name, &grafana.name),
    );
    let a_api: Api<VoicePipeline> = Api::namespaced(c.clone(), &a.name);
    let b_api: Api<VoicePipeline> = Api::namespaced(c.clone(), &b.name);
    wait_ready(&a_api, &a_name, TIMEOUT).await;
    wait_ready(&b_api, &b_name, TIMEOUT).await;

    let dashboards: Api<ConfigMap> = Api::namespaced(c.clone(), &grafana.name);
    let a_dash = dashboards
        .get(&dashboard_name(&a.name, &a_name))
        .await
        .unwrap();
    let b_dash = dashboards
        .get(&dashboard_name(&b.name, &b_name))
        .await
        .unwrap();
    assert_eq!(
        labels_of(&a_dash),
        (Some(a_name.as_str()), Some(a.name.as_str()))
    );
    assert_eq!(
        labels_of(&b_dash),
        (Some(b_name.as_str()), Some(b.name.as_str()))
    );

    // Deleting one pipeline removes its dashboard only.
    delete_with_its_dashboard(&b_api, &b_name, &dashboards, &b_dash.name_any()).await;
    let kept = dashboards.get(&a_dash.name_any()).await.unwrap();
    assert_eq!(kept.uid(), a_dash.uid());
    delete_with_its_dashboard(&a_api, &a_name, &dashboards, &a_dash.name_any()).await;
    op.stop().await.unwrap();
}

/// An upgrade from the version that named dashboards `voice-dashboard-<ns>-<name>`: the
/// dashboard under its old name goes once the new one is in place, in Grafana's namespace and
/// in the pipeline's own; one under the same old name but labelled as another pipeline's stays
/// until that pipeline takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_under_its_old_name_is_replaced_and_a_neighbours_is_kept() {
    let plane = plane();
    let ((a, a_name), (b, b_name)) = colliding_pair().await;
    let grafana = plane.namespace("dash-upgrade").await;
    let c = a.client.clone();
    let dashboards: Api<ConfigMap> = Api::namespaced(c.clone(), &grafana.name);
    let own: Api<ConfigMap> = Api::namespaced(c.clone(), &a.name);
    // Left by the old version: `b`'s dashboard under the shared old name, and the dashboard of
    // a pipeline `home` in `a` that keeps its dashboard at home.
    let shared_old = legacy_dashboard_name(&b.name, &b_name);
    old_dashboard(&dashboards, &shared_old, &b.name, &b_name).await;
    let home_old = legacy_dashboard_name(&a.name, "home");
    old_dashboard(&own, &home_old, &a.name, "home").await;

    let op = Operator::start_full(c.clone(), &[&a.name, &b.name], &[&grafana.name], None).await;
    apply_ok(
        plane,
        &a.name,
        &minimal_with_dashboards_in(&a_name, &grafana.name),
    );
    apply_ok(plane, &a.name, &minimal_with_dashboards_in("home", &a.name));
    let a_api: Api<VoicePipeline> = Api::namespaced(c.clone(), &a.name);
    wait_ready(&a_api, &a_name, TIMEOUT).await;
    wait_ready(&a_api, "home", TIMEOUT).await;
    assert!(
        dashboards
            .get_opt(&dashboard_name(&a.name, &a_name))
            .await
            .unwrap()
            .is_some()
    );
    own.get(&dashboard_name(&a.name, "home")).await.unwrap();
    eventually(TIMEOUT, || async {
        own.get_opt(&home_old).await.ok()?.is_none().then_some(())
    })
    .await;
    // Not `a`'s, though its old name was the same: it stays.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = dashboards.get(&shared_old).await.unwrap();
    assert_eq!(labels_of(&kept).0, Some(b_name.as_str()));

    // `b`'s pipeline arrives: its dashboard takes the new name, and the old one goes.
    apply_ok(
        plane,
        &b.name,
        &minimal_with_dashboards_in(&b_name, &grafana.name),
    );
    let b_api: Api<VoicePipeline> = Api::namespaced(c.clone(), &b.name);
    wait_ready(&b_api, &b_name, TIMEOUT).await;
    dashboards
        .get(&dashboard_name(&b.name, &b_name))
        .await
        .unwrap();
    eventually(TIMEOUT, || async {
        dashboards
            .get_opt(&shared_old)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    for (api, name) in [(&a_api, a_name.as_str()), (&a_api, "home"), (&b_api, "p")] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually(TIMEOUT, || async {
        let ours = ListParams::default().labels("app.kubernetes.io/managed-by=voice-operator");
        let left = dashboards.list(&ours).await.ok()?.items.len();
        (left == 0).then_some(())
    })
    .await;
    op.stop().await.unwrap();
}

/// Pipeline `demo` in `ns` as the old version left it: its dashboard under the old name in
/// `placed` (the status says so, and the finalizer is on), its spec now asking for the
/// dashboards in `wanted`. Returns the old dashboard's name.
async fn left_by_the_old_version(ns: &TestNamespace, placed: &str, wanted: &str) -> String {
    let c = ns.client.clone();
    let old = legacy_dashboard_name(&ns.name, "demo");
    old_dashboard(&Api::namespaced(c.clone(), placed), &old, &ns.name, "demo").await;
    let with_finalizer = minimal_with_dashboards_in("demo", wanted).replace(
        "  name: demo\n",
        "  name: demo\n  finalizers: [voice.workflow.io/dashboards]\n",
    );
    apply_ok(plane(), &ns.name, &with_finalizer);
    let api: Api<VoicePipeline> = Api::namespaced(c, &ns.name);
    let status = json!({"status": {"dashboardsNamespace": placed}});
    api.patch_status("demo", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    old
}

/// A pipeline deleted before the upgraded operator's first pass over it: the finalizer removes
/// its dashboard under the old name too, in a namespace the operator has no cache of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_finalizer_removes_a_dashboard_under_its_old_name() {
    let plane = plane();
    let ns = plane.namespace("dash-final").await;
    let grafana = plane.namespace("dash-final-grafana").await;
    let c = ns.client.clone();
    let old = left_by_the_old_version(&ns, &grafana.name, &grafana.name).await;
    let api: Api<VoicePipeline> = Api::namespaced(c.clone(), &ns.name);
    api.delete("demo", &DeleteParams::default()).await.unwrap();

    let op = Operator::start_full(c.clone(), &[&ns.name], &[], None).await;
    let dashboards: Api<ConfigMap> = Api::namespaced(c.clone(), &grafana.name);
    wait_gone_with_its_dashboard(&api, "demo", &dashboards, &old).await;
    op.stop().await.unwrap();
}

/// Dashboards moved during the upgrade: the one under the old name goes from the namespace
/// left, which the operator has no cache of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_removes_the_dashboard_under_its_old_name() {
    let plane = plane();
    let ns = plane.namespace("dash-upmove").await;
    let left = plane.namespace("dash-upmove-left").await;
    let now = plane.namespace("dash-upmove-now").await;
    let c = ns.client.clone();
    let old = left_by_the_old_version(&ns, &left.name, &now.name).await;

    let op = Operator::start_full(c.clone(), &[&ns.name], &[], None).await;
    let api: Api<VoicePipeline> = Api::namespaced(c.clone(), &ns.name);
    let vp = wait_ready(&api, "demo", TIMEOUT).await;
    assert_eq!(
        vp.status.unwrap().dashboards_namespace.as_deref(),
        Some(now.name.as_str())
    );
    let now_dashboards: Api<ConfigMap> = Api::namespaced(c.clone(), &now.name);
    let dashboard = dashboard_name(&ns.name, "demo");
    now_dashboards.get(&dashboard).await.unwrap();
    let left_dashboards: Api<ConfigMap> = Api::namespaced(c.clone(), &left.name);
    eventually(TIMEOUT, || async {
        left_dashboards
            .get_opt(&old)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    delete_with_its_dashboard(&api, "demo", &now_dashboards, &dashboard).await;
    op.stop().await.unwrap();
}

/// Two quick moves of the dashboards: the second pass may read a cached status that does
/// not yet say where the first pass put the dashboard. No dashboard is left behind. The
/// second move comes right after the first pass placed the dashboard, or a few ms later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_moves_of_the_dashboards_leave_none_behind() {
    let plane = plane();
    let ns = plane.namespace("dash-move").await;
    let mut targets = vec![];
    for i in 0..3 {
        targets.push(plane.namespace(&format!("dash-move-{i}")).await);
    }
    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    let c = ns.client.clone();
    let op = Operator::start_full(c.clone(), &[&ns.name], &names, None).await;
    apply_ok(
        plane,
        &ns.name,
        &minimal_with_dashboards_in("demo", names[0]),
    );
    let api: Api<VoicePipeline> = Api::namespaced(c.clone(), &ns.name);
    wait_ready(&api, "demo", TIMEOUT).await;
    let move_to = |to: &str| json!({"spec": {"observability": {"dashboards": {"namespace": to}}}});
    let dashboard = dashboard_name(&ns.name, "demo");
    let mut at = 0;
    for gap_ms in [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 10, 20] {
        let (via, to) = ((at + 1) % 3, (at + 2) % 3);
        api.patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(&move_to(names[via])),
        )
        .await
        .unwrap();
        if gap_ms == 0 {
            // Right when the first pass has placed it, likely before its status write is in
            // the cache (without the fix, this left a dashboard behind in 3 runs of 4).
            let d: Api<ConfigMap> = Api::namespaced(c.clone(), names[via]);
            let placed = async { while d.get_opt(&dashboard).await.unwrap().is_none() {} };
            tokio::time::timeout(TIMEOUT, placed)
                .await
                .expect("the first move placed the dashboard");
        } else {
            tokio::time::sleep(Duration::from_millis(gap_ms)).await;
        }
        api.patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(&move_to(names[to])),
        )
        .await
        .unwrap();
        wait_ready(&api, "demo", TIMEOUT).await;
        at = to;
        // The dashboard is where the spec says, and nowhere else.
        eventually(Duration::from_secs(15), || async {
            let mut placed = vec![];
            for t in &targets {
                let d: Api<ConfigMap> = Api::namespaced(c.clone(), &t.name);
                if d.get_opt(&dashboard).await.ok()?.is_some() {
                    placed.push(t.name.clone());
                }
            }
            (placed == [names[at]]).then_some(())
        })
        .await;
    }
    let last: Api<ConfigMap> = Api::namespaced(c.clone(), names[at]);
    delete_with_its_dashboard(&api, "demo", &last, &dashboard).await;
    op.stop().await.unwrap();
}
