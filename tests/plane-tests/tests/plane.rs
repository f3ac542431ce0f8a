//! The local control plane is a real Kubernetes: controllers, scheduler, kubelets (kwok),
//! garbage collection, RBAC and the upstream monitoring schemas all do their jobs.

use std::{io::Write as _, process::Stdio, time::Duration};

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    coordination::v1::Lease,
    core::v1::{Node, Pod, ServiceAccount},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;
use test_support::{Plane, eventually};

const WAIT: Duration = Duration::from_secs(60);

fn deployment(name: &str, replicas: i32, pod_spec: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": { "metadata": { "labels": { "app": name } }, "spec": pod_spec }
        }
    }))
    .unwrap()
}

fn container(resources: serde_json::Value) -> serde_json::Value {
    json!({ "name": "main", "image": "registry.invalid/pause:1", "resources": resources })
}

/// Waits until `count` pods labelled `app=NAME` are Running, and returns them.
async fn running_pods(pods: &Api<Pod>, name: &str, count: usize) -> Vec<Pod> {
    let selector = ListParams::default().labels(&format!("app={name}"));
    eventually(WAIT, || async {
        let list = pods.list(&selector).await.ok()?;
        let running: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        (running.len() == count).then_some(running)
    })
    .await
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// The node lifecycle controller sees a node alive by its Lease; without renewals it marks every
/// node not ready when its grace period runs out, and every pod with it (this plane's kwok once
/// kept no Lease, and whatever test ran at that moment failed).
#[tokio::test]
async fn kwok_renews_a_lease_for_every_node() {
    let client = Plane::shared().client().await;
    let nodes: Vec<String> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(!nodes.is_empty());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let renewed = |name: String| {
        let leases = leases.clone();
        async move {
            let lease = leases.get_opt(&name).await.ok()??;
            lease.spec?.renew_time.map(|t| t.0)
        }
    };
    let mut first = vec![];
    for node in &nodes {
        let at = eventually(WAIT, || renewed(node.clone())).await;
        first.push((node.clone(), at));
    }
    // A kubelet (and kwok) renews every quarter of the 40 s lease duration.
    for (node, at) in first {
        eventually(Duration::from_secs(30), || {
            let r = renewed(node.clone());
            async move { r.await.filter(|t| *t > at) }
        })
        .await;
    }
}

#[tokio::test]
async fn deployment_pods_reach_running_on_kwok_nodes() {
    let ns = Plane::shared().namespace("plane-run").await;
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", 3, json!({ "containers": [container(json!({}))] })),
        )
        .await
        .unwrap();

    let pods = running_pods(&Api::namespaced(ns.client.clone(), &ns.name), "web", 3).await;
    for pod in &pods {
        assert!(
            node_of(pod).starts_with("kwok-node-"),
            "pod on {:?}",
            node_of(pod)
        );
    }
    let ready = eventually(WAIT, || async {
        let d = deployments.get("web").await.ok()?;
        d.status.and_then(|s| s.ready_replicas).filter(|r| *r == 3)
    })
    .await;
    assert_eq!(ready, 3);
}

#[tokio::test]
async fn gpu_pods_land_only_on_the_gpu_node_and_others_stay_off_it() {
    let ns = Plane::shared().namespace("plane-gpu").await;
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let gpu = json!({ "limits": { "nvidia.com/gpu": "2" } });
    let toleration =
        json!([{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }]);

    deployments
        .create(
            &PostParams::default(),
            &deployment(
                "riva",
                2,
                json!({ "containers": [container(gpu.clone())], "tolerations": toleration }),
            ),
        )
        .await
        .unwrap();
    // Plain pods, many more than the CPU nodes need to share: the taint keeps them all off
    // the GPU node although it is the largest node.
    deployments
        .create(
            &PostParams::default(),
            &deployment("plain", 6, json!({ "containers": [container(json!({}))] })),
        )
        .await
        .unwrap();
    // A GPU pod that does not tolerate the taint has nowhere to go.
    deployments
        .create(
            &PostParams::default(),
            &deployment("untolerated", 1, json!({ "containers": [container(gpu)] })),
        )
        .await
        .unwrap();

    for pod in running_pods(&pods, "riva", 2).await {
        assert_eq!(node_of(&pod), "kwok-gpu-0");
    }
    for pod in running_pods(&pods, "plain", 6).await {
        assert_ne!(
            node_of(&pod),
            "kwok-gpu-0",
            "an untolerating pod landed on the GPU node"
        );
    }
    let message = eventually(WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels("app=untolerated"))
            .await
            .ok()?;
        let status = list.items.first()?.status.clone()?;
        let condition = status
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled")?;
        (condition.status == "False").then(|| condition.message.unwrap_or_default())
    })
    .await;
    assert!(
        message.contains("untolerated taint"),
        "scheduler said: {message}"
    );
}

#[tokio::test]
async fn deleting_a_deployment_garbage_collects_its_replicasets_and_pods() {
    let ns = Plane::shared().namespace("plane-gc").await;
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let replicasets: Api<ReplicaSet> = Api::namespaced(ns.client.clone(), &ns.name);
    deployments
        .create(
            &PostParams::default(),
            &deployment("gc", 2, json!({ "containers": [container(json!({}))] })),
        )
        .await
        .unwrap();
    running_pods(&pods, "gc", 2).await;
    assert_eq!(
        replicasets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    deployments
        .delete("gc", &DeleteParams::background())
        .await
        .unwrap();

    eventually(WAIT, || async {
        let rs = replicasets
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .len();
        let p = pods.list(&ListParams::default()).await.ok()?.items.len();
        (rs == 0 && p == 0).then_some(())
    })
    .await;
}

fn service_monitor(name: &str, interval: &str) -> String {
    format!(
        r#"apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {name}
spec:
  selector:
    matchLabels: {{app: gateway}}
  endpoints:
  - port: metrics
    interval: {interval}
"#
    )
}

fn kubectl_apply(plane: &Plane, namespace: &str, manifest: &str) -> (bool, String) {
    let mut child = plane
        .kubectl()
        .args(["apply", "-n", namespace, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test]
async fn the_upstream_servicemonitor_schema_rejects_an_interval_that_is_not_a_duration() {
    let plane = Plane::shared();
    let ns = plane.namespace("plane-crd").await;

    let (ok, output) = kubectl_apply(plane, &ns.name, &service_monitor("good", "30s"));
    assert!(ok, "a valid ServiceMonitor was refused: {output}");

    let (ok, output) = kubectl_apply(plane, &ns.name, &service_monitor("bad", "soon"));
    assert!(!ok, "an invalid interval was accepted: {output}");
    assert!(
        output.contains("spec.endpoints[0].interval"),
        "unexpected error: {output}"
    );
}

#[tokio::test]
async fn rbac_is_enforced_for_service_accounts() {
    let plane = Plane::shared();
    let ns = plane.namespace("plane-rbac").await;
    let accounts: Api<ServiceAccount> = Api::namespaced(ns.client.clone(), &ns.name);
    let account: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "nobody" } })).unwrap();
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();

    let nobody: Client = plane.service_account_client(&ns.name, "nobody").await;
    let err = Api::<Pod>::namespaced(nobody, &ns.name)
        .list(&ListParams::default())
        .await
        .expect_err("a ServiceAccount without any role listed pods");
    match err {
        kube::Error::Api(status) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403 Forbidden, got {other}"),
    }
}
