//! What each kind of write the operator makes costs the API server: on a fresh private plane
//! with no operator, N writes of one kind at a time (8 in flight), and the CPU seconds
//! kube-apiserver and etcd spent meanwhile, per write. Diagnostic: `apiserver-cost [N=300]`.
//! Two rows after the status rows vary one status write: fewer conditions, and the CRD without
//! its CEL rules.

use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt};
use operator_tests::install_crd;
use serde::Serialize;
use serde::de::DeserializeOwned;
use test_support::{Plane, PlaneOptions};
use voice_operator::build::build;
use voice_operator::model::validate;
use voice_operator::monitoring_crds::{PrometheusRule, ServiceMonitor};
use voice_operator::status::{self, Observed, Rollout};
use voice_types::VoicePipeline;

const NS: &str = "cost";

/// The CRD of `crds/` without its `x-kubernetes-validations` (CEL rules), to measure what
/// they cost.
fn crd_without_cel() -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("x-kubernetes-validations");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut crd = serde_json::to_value(VoicePipeline::crd()).expect("CRD serializes");
    strip(&mut crd);
    crd
}

fn pipeline(name: &str) -> VoicePipeline {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "voice.workflow.io/v1alpha1", "kind": "VoicePipeline",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 1},
        "spec": {
            "llm": {"url": "http://llm.llm.svc:8000/v1"},
            "riva": {"external": {"uri": "riva-api.riva.svc:50051"}},
        }
    }))
    .expect("valid pipeline")
}

fn cpu(plane: &Plane, name: &str) -> f64 {
    let pid = std::fs::read_to_string(plane.dir.join(format!("pids/{name}.pid"))).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

async fn measure<F, Fut>(plane: &Plane, what: &str, n: usize, op: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let (a0, e0) = (cpu(plane, "kube-apiserver"), cpu(plane, "etcd"));
    let t0 = Instant::now();
    futures::stream::iter(0..n)
        .map(&op)
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let wall = t0.elapsed().as_secs_f64();
    // Let the watch fan-out and etcd settle into the reading.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (a1, e1) = (cpu(plane, "kube-apiserver"), cpu(plane, "etcd"));
    println!(
        "| {what} | {:.2} | {:.2} | {:.1} |",
        (a1 - a0) * 1000.0 / n as f64,
        (e1 - e0) * 1000.0 / n as f64,
        n as f64 / wall
    );
}

async fn apply<K>(client: &Client, obj: &K, name: &str, manager: &str) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    // No owner: the pipelines named do not exist, and the garbage collector would delete them.
    let mut obj = obj.clone();
    obj.meta_mut().owner_references = None;
    Api::<K>::namespaced(client.clone(), NS)
        .patch(
            name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&obj),
        )
        .await
        .map(|_| ())
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(300);
    let plane = Plane::private("apiserver-cost", PlaneOptions::default());
    install_crd(&plane);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = plane.client().await;
        let nso: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": NS}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &nso)
            .await?;
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        println!("| {n} writes of one kind, 8 in flight, no operator | kube-apiserver CPU ms per write | etcd CPU ms per write | writes/s |");
        println!("|---|---|---|---|");
        let vps: Api<VoicePipeline> = Api::namespaced(client.clone(), NS);
        measure(&plane, "POST VoicePipeline", n, |i| {
            let vps = vps.clone();
            async move {
                let mut vp = pipeline(&format!("p-{i}"));
                vp.metadata.uid = None;
                vp.metadata.generation = None;
                vps.create(&PostParams::default(), &vp).await.map(|_| ())
            }
        })
        .await;
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let status_for = |name: &str, available: i32| {
            let vp = pipeline(name);
            let v = validate(&vp).expect("valid");
            let obs = Observed::clean(Rollout::settled(1, available), NS);
            status::compute(&v, None, &obs, &now)
        };
        // A status apply as the operator sends it, with its first `conditions` conditions.
        const ALL: usize = usize::MAX;
        let apply_status = |name: String, available: i32, conditions: usize| {
            let vps = vps.clone();
            let mut st = status_for(&name, available);
            st.conditions.truncate(conditions);
            async move {
                let patch = serde_json::json!({
                    "apiVersion": "voice.workflow.io/v1alpha1", "kind": "VoicePipeline",
                    "status": st,
                });
                vps.patch_status(
                    &name,
                    &PatchParams::apply("voice-operator/status").force(),
                    &Patch::Apply(&patch),
                )
                .await
                .map(|_| ())
            }
        };
        for (what, available) in [
            ("APPLY VoicePipeline status (first)", 0),
            ("APPLY VoicePipeline status (a condition changes)", 1),
            ("APPLY VoicePipeline status (unchanged: no write)", 1),
        ] {
            measure(&plane, what, n, |i| apply_status(format!("p-{i}"), available, ALL)).await;
        }
        measure(&plane, "PATCH (merge) VoicePipeline status (a condition changes)", n, |i| {
            let vps = vps.clone();
            let st = status_for(&format!("p-{i}"), 0);
            async move {
                let patch = serde_json::json!({"status": st});
                vps.patch_status(
                    &format!("p-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map(|_| ())
            }
        })
        .await;
        // What one status write's cost depends on: its conditions (the operator writes 7), and
        // the CRD's CEL rules (the last row, once the CRD has none). Each row has pipelines of
        // its own with a first status written beforehand, so it measures a change of `Ready`.
        let written = status_for("p-0", 1).conditions.len();
        for (prefix, conditions, cel) in [("one", 1, true), ("nocel", ALL, false)] {
            if !cel {
                let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
                crds.patch(
                    "voicepipelines.voice.workflow.io",
                    &PatchParams::apply("apiserver-cost").force(),
                    &Patch::Apply(&crd_without_cel()),
                )
                .await?;
                // Until the server serves the new schema: a spec a CEL rule rejects is accepted.
                let mut bad = pipeline("cel-probe");
                bad.spec.gateway.grpc_port = bad.spec.gateway.metrics_port;
                let dry_run = PostParams { dry_run: true, ..PostParams::default() };
                let deadline = Instant::now() + std::time::Duration::from_secs(30);
                while vps.create(&dry_run, &bad).await.is_err() {
                    assert!(Instant::now() < deadline, "the CRD without CEL rules is not served");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
            futures::stream::iter(0..n)
                .map(|i| {
                    let vps = vps.clone();
                    let apply_status = &apply_status;
                    async move {
                        let mut vp = pipeline(&format!("{prefix}-{i}"));
                        (vp.metadata.uid, vp.metadata.generation) = (None, None);
                        vps.create(&PostParams::default(), &vp).await?;
                        apply_status(format!("{prefix}-{i}"), 0, conditions).await
                    }
                })
                .buffer_unordered(8)
                .try_collect::<Vec<_>>()
                .await?;
            let what = match cel {
                true => format!("APPLY VoicePipeline status (a condition changes), {conditions} of its {written} conditions"),
                false => "APPLY VoicePipeline status (a condition changes), the CRD without its CEL rules".to_string(),
            };
            measure(&plane, &what, n, |i| apply_status(format!("{prefix}-{i}"), 1, conditions)).await;
        }
        let children = |i: usize| build(&validate(&pipeline(&format!("c-{i}"))).expect("valid"));
        measure(&plane, "APPLY ConfigMap (gateway configuration)", n, |i| {
            let c = children(i);
            let client = client.clone();
            async move {
                let cm = c.gateway_config;
                apply(&client, &cm, &format!("c-{i}-gateway"), "voice-operator/gateway").await
            }
        })
        .await;
        for (what, compact) in [
            ("APPLY ConfigMap (dashboard, pretty JSON)", false),
            ("APPLY ConfigMap (dashboard, compact JSON)", true),
        ] {
            measure(&plane, what, n, |i| {
                let c = children(i);
                let client = client.clone();
                async move {
                    let mut cm: ConfigMap = c.dashboard.expect("dashboards on");
                    let name = format!("dash-{compact}-{i}");
                    cm.metadata.name = Some(name.clone());
                    if compact {
                        for v in cm.data.iter_mut().flat_map(|d| d.values_mut()) {
                            let j: serde_json::Value = serde_json::from_str(v).expect("JSON");
                            *v = j.to_string();
                        }
                    }
                    apply(&client, &cm, &name, "voice-operator/dashboards").await
                }
            })
            .await;
        }
        measure(&plane, "APPLY ServiceMonitor", n, |i| {
            let c = children(i);
            let client = client.clone();
            async move {
                let sm: ServiceMonitor = c.gateway_service_monitor.expect("on");
                apply(&client, &sm, &format!("c-{i}-gateway"), "voice-operator/monitoring").await
            }
        })
        .await;
        measure(&plane, "APPLY PrometheusRule", n, |i| {
            let c = children(i);
            let client = client.clone();
            async move {
                let pr: PrometheusRule = c.prometheus_rule.expect("on");
                apply(&client, &pr, &format!("c-{i}-alerts"), "voice-operator/monitoring").await
            }
        })
        .await;
        measure(&plane, "APPLY Service (ClusterIP allocated)", n, |i| {
            let c = children(i);
            let client = client.clone();
            async move {
                apply(&client, &c.gateway_service, &format!("c-{i}-gateway"), "voice-operator/gateway").await
            }
        })
        .await;
        measure(&plane, "APPLY Deployment (gateway, no owner; its pods follow)", n, |i| {
            let c = children(i);
            let client = client.clone();
            async move {
                apply(&client, &c.gateway_deployment, &format!("c-{i}-gateway"), "voice-operator/gateway").await
            }
        })
        .await;
        anyhow::Ok(())
    })?;
    Ok(())
}
