//! Each example of `examples/` applied to the real plane reaches Ready=True at its generation,
//! with every child present, owned and labelled; the ServiceMonitor and PrometheusRule were
//! accepted by prometheus-operator's own CRD schemas (the plane installs the upstream CRDs);
//! `kubectl wait` and `kubectl get` read the status; deleting removes everything.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Resource, ResourceExt};
use operator_tests::{
    Operator, apply_ok, bind_volume, ensure_namespace, example, plane, wait_ready,
};
use serde::de::DeserializeOwned;
use voice_operator::monitoring_crds::{PrometheusRule, ServiceMonitor};
use voice_types::VoicePipeline;

const LABELS: [&str; 5] = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
];

async fn children<K>(client: &kube::Client, ns: &str, pipeline: &str) -> Vec<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!(
        "app.kubernetes.io/instance={pipeline},app.kubernetes.io/managed-by=voice-operator"
    ));
    api.list(&lp).await.unwrap().items
}

fn assert_owned_and_labelled<K: Resource>(objs: &[K], vp: &VoicePipeline) {
    for o in objs {
        for l in LABELS {
            assert!(
                o.labels().contains_key(l),
                "{} lacks label {l}",
                o.name_any()
            );
        }
        let owner = &o.owner_references()[0];
        assert_eq!(
            owner.uid,
            vp.uid().unwrap(),
            "{} owned by the pipeline",
            o.name_any()
        );
        assert_eq!(owner.controller, Some(true));
    }
}

/// A pipeline's children in its namespace, found by the operator's labels.
struct Children {
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    pdbs: Vec<PodDisruptionBudget>,
    config_maps: Vec<ConfigMap>,
    service_monitors: Vec<ServiceMonitor>,
    prometheus_rules: Vec<PrometheusRule>,
}

impl Children {
    async fn of(client: &kube::Client, ns: &str, pipeline: &str) -> Self {
        Self {
            deployments: children(client, ns, pipeline).await,
            services: children(client, ns, pipeline).await,
            pdbs: children(client, ns, pipeline).await,
            config_maps: children(client, ns, pipeline).await,
            service_monitors: children(client, ns, pipeline).await,
            prometheus_rules: children(client, ns, pipeline).await,
        }
    }

    /// How many of each: Deployments, Services, PodDisruptionBudgets, ConfigMaps,
    /// ServiceMonitors, PrometheusRules.
    fn counts(&self) -> [usize; 6] {
        [
            self.deployments.len(),
            self.services.len(),
            self.pdbs.len(),
            self.config_maps.len(),
            self.service_monitors.len(),
            self.prometheus_rules.len(),
        ]
    }

    fn assert_owned_and_labelled(&self, vp: &VoicePipeline) {
        assert_owned_and_labelled(&self.deployments, vp);
        assert_owned_and_labelled(&self.services, vp);
        assert_owned_and_labelled(&self.pdbs, vp);
        assert_owned_and_labelled(&self.config_maps, vp);
        assert_owned_and_labelled(&self.service_monitors, vp);
        assert_owned_and_labelled(&self.prometheus_rules, vp);
    }
}

/// Applies `file` in a fresh namespace, waits for Ready, and returns (ns, pipeline).
async fn apply_example(
    file: &str,
    prefix: &str,
) -> (test_support::TestNamespace, VoicePipeline, Operator) {
    let plane = plane();
    let ns = plane.namespace(prefix).await;
    ensure_namespace(&ns.client, "grafana").await;
    // Like the Helm chart with dashboardNamespaces: [grafana].
    let op = Operator::start_full(ns.client.clone(), &[&ns.name], &["grafana"], None).await;
    let yaml = example(file);
    if yaml.contains("kind: PersistentVolumeClaim") {
        bind_volume(plane, &ns.name, "riva-models");
    }
    apply_ok(plane, &ns.name, &yaml);
    let name = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| d["kind"] == "VoicePipeline")
        .unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let api: Api<VoicePipeline> = Api::namespaced(ns.client.clone(), &ns.name);
    let vp = wait_ready(&api, &name, Duration::from_secs(90)).await;
    (ns, vp, op)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_riva_example_reaches_ready_with_every_child() {
    let (ns, vp, _op) = apply_example("managed-riva-gpu.yaml", "ex-managed").await;
    let c = &ns.client;
    let name = vp.name_any();
    let st = vp.status.clone().unwrap();
    assert_eq!(st.observed_generation, vp.metadata.generation);
    for t in [
        "Ready",
        "GatewayAvailable",
        "RivaAvailable",
        "MonitoringConfigured",
        "DashboardsConfigured",
    ] {
        assert_eq!(st.condition(t).unwrap().status, "True", "{t}");
    }
    for t in ["Reconciling", "Stalled"] {
        assert_eq!(st.condition(t).unwrap().status, "False", "{t}");
    }
    assert_eq!(st.gateway.as_ref().unwrap().ready, "2/2");
    assert_eq!(st.riva.as_ref().unwrap().ready, "1/1");
    assert_eq!(
        st.gateway.as_ref().unwrap().endpoint,
        format!("{name}-gateway.{}.svc:50051", ns.name)
    );

    let kids = Children::of(c, &ns.name, &name).await;
    assert_eq!(kids.counts(), [2, 2, 1, 2, 2, 1]);
    kids.assert_owned_and_labelled(&vp);
    // The Riva pod landed on the GPU node (node selector, toleration, GPU limit).
    let pods = ns.client.clone();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(pods, &ns.name);
    let riva = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=riva"))
        .await
        .unwrap();
    assert_eq!(
        riva.items[0].spec.as_ref().unwrap().node_name.as_deref(),
        Some("kwok-gpu-0")
    );

    // kubectl reads the status: wait and the printer columns.
    let p = plane();
    let out = p.kubectl_output(&[
        "wait",
        "-n",
        &ns.name,
        "--for=condition=Ready",
        "--timeout=10s",
        &format!("vp/{name}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = p.kubectl_output(&["get", "vp", "-n", &ns.name, &name]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("READY")
            && table.contains("GATEWAY")
            && table.contains("RIVA")
            && table.contains("AGE"),
        "{table}"
    );
    assert!(
        table.contains("True") && table.contains("2/2") && table.contains("1/1"),
        "{table}"
    );

    // Deleting the pipeline: the garbage collector removes every child.
    let api: Api<VoicePipeline> = Api::namespaced(c.clone(), &ns.name);
    api.delete(&name, &DeleteParams::foreground())
        .await
        .unwrap();
    test_support::eventually(Duration::from_secs(60), || async {
        let left = Children::of(c, &ns.name, &name).await.counts();
        let gone = api.get_opt(&name).await.unwrap().is_none();
        (gone && left == [0; 6]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_example_reaches_ready() {
    let (ns, vp, _op) = apply_example("minimal.yaml", "ex-minimal").await;
    let name = vp.name_any();
    let st = vp.status.clone().unwrap();
    assert_eq!(st.riva.as_ref().unwrap().ready, "external");
    assert_eq!(st.condition("RivaAvailable").unwrap().reason, "External");
    // One Deployment and one Service (no Riva's for an external Riva), no PDB (one replica),
    // the gateway's configuration and the dashboard, the gateway's ServiceMonitor, the rules.
    let kids = Children::of(&ns.client, &ns.name, &name).await;
    assert_eq!(kids.counts(), [1, 1, 0, 2, 1, 1]);
    kids.assert_owned_and_labelled(&vp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_riva_example_puts_dashboards_elsewhere_and_cleans_them_on_delete() {
    let (ns, vp, _op) = apply_example("external-riva.yaml", "ex-external").await;
    let name = vp.name_any();
    // Two replicas: a PDB. The dashboard is in `grafana`, so one ConfigMap here.
    let kids = Children::of(&ns.client, &ns.name, &name).await;
    assert_eq!(kids.counts(), [1, 1, 1, 1, 1, 1]);
    kids.assert_owned_and_labelled(&vp);
    assert!(
        vp.finalizers()
            .iter()
            .any(|f| f == "voice.workflow.io/dashboards")
    );
    let grafana: Api<ConfigMap> = Api::namespaced(ns.client.clone(), "grafana");
    let dash = format!("voice-dashboard.{}.{name}", ns.name);
    let cm = grafana.get(&dash).await.unwrap();
    assert_eq!(cm.labels()["grafana_dashboard"], "1");
    assert!(
        cm.owner_references().is_empty(),
        "no owner reference across namespaces"
    );
    // Watched there (dashboard namespace): a deleted dashboard is back within seconds, not at
    // the next resync.
    grafana
        .delete(&dash, &DeleteParams::default())
        .await
        .unwrap();
    test_support::eventually(Duration::from_secs(15), || async {
        grafana
            .get_opt(&dash)
            .await
            .unwrap()
            .filter(|c| c.uid() != cm.uid())
    })
    .await;
    // The gateway reads its API key from the Secret reference.
    let d: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    let gw = d.get(&format!("{name}-gateway")).await.unwrap();
    let env = gw.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert_eq!(
        env[0]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .name,
        "llm-api-key"
    );

    let api: Api<VoicePipeline> = Api::namespaced(ns.client.clone(), &ns.name);
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    test_support::eventually(Duration::from_secs(30), || async {
        let gone = api.get_opt(&name).await.unwrap().is_none();
        let dash_gone = grafana.get_opt(&dash).await.unwrap().is_none();
        (gone && dash_gone).then_some(())
    })
    .await;
}
