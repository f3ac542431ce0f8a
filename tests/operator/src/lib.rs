//! Helpers for the operator's tests against the real local control plane.
//!
//! Each test makes its own namespace and runs its own operator in-process, watching only that
//! namespace, so tests run in parallel without touching each other's pipelines.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use test_support::{Plane, eventually, repo_root};
use voice_operator::controller::{LeaderElection, RunConfig, run_on};
use voice_types::VoicePipeline;

/// The shared plane with the CRD installed (once per test binary).
pub fn plane() -> &'static Plane {
    static CRD: OnceLock<()> = OnceLock::new();
    let plane = Plane::shared();
    CRD.get_or_init(|| install_crd(plane));
    plane
}

/// `kubectl apply --server-side -f crds/` (what `make install` does), then waits until the
/// CRD is established.
pub fn install_crd(plane: &Plane) {
    let crds = repo_root().join("crds");
    let out = plane
        .kubectl()
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(&crds)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "installing the CRD: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    plane.wait_crd_established("voicepipelines.voice.workflow.io");
}

/// Creates namespace `name` if it does not exist (shared namespaces such as `grafana`).
pub async fn ensure_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("namespace {name}: {e}"),
    }
}

/// `kubectl apply -n NS -f -` with `yaml` on stdin.
pub fn kubectl_apply(plane: &Plane, ns: &str, yaml: &str) -> Output {
    let mut child = plane
        .kubectl()
        .args(["apply", "-n", ns, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Like [`kubectl_apply`], panicking on failure.
pub fn apply_ok(plane: &Plane, ns: &str, yaml: &str) {
    let out = kubectl_apply(plane, ns, yaml);
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The text of an example under `examples/`.
pub fn example(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("examples").join(name)).expect("example exists")
}

/// The minimal example, named `name`, with its dashboards in namespace `dashboards`. Ends in
/// the `dashboards` block: lines indented by six spaces that follow add to it.
pub fn minimal_with_dashboards_in(name: &str, dashboards: &str) -> String {
    example("minimal.yaml").replace("name: demo", &format!("name: {name}"))
        + &format!("  observability:\n    dashboards:\n      namespace: {dashboards}\n")
}

/// Deletes pipeline `name` while the operator runs, and waits until it and its dashboard
/// (`dashboard` in `dashboards`, removed by the pipeline's finalizer) are gone.
pub async fn delete_with_its_dashboard(
    api: &Api<VoicePipeline>,
    name: &str,
    dashboards: &Api<ConfigMap>,
    dashboard: &str,
) {
    api.delete(name, &DeleteParams::default()).await.unwrap();
    wait_gone_with_its_dashboard(api, name, dashboards, dashboard).await;
}

/// Waits until pipeline `name` and `dashboard` in `dashboards` are gone.
pub async fn wait_gone_with_its_dashboard(
    api: &Api<VoicePipeline>,
    name: &str,
    dashboards: &Api<ConfigMap>,
    dashboard: &str,
) {
    eventually(Duration::from_secs(60), || async {
        let gone = api.get_opt(name).await.ok()?.is_none()
            && dashboards.get_opt(dashboard).await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
}

/// A PersistentVolume bound in advance to claim `ns/claim`, since the local plane has no
/// provisioner (the managed-Riva example mounts its models from a PVC).
pub fn bind_volume(plane: &Plane, ns: &str, claim: &str) {
    let pv = format!(
        r#"apiVersion: v1
kind: PersistentVolume
metadata:
  name: {ns}-{claim}
  labels: {{voice.workflow.io/test: "true"}}
spec:
  capacity: {{storage: 200Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  hostPath: {{path: /tmp/{ns}-{claim}}}
  claimRef: {{namespace: {ns}, name: {claim}}}
"#
    );
    apply_ok(plane, ns, &pv);
}

/// The in-process operators' logs (debug: every status change, reconcile error and retry) go
/// to the test harness's captured output, which `cargo test` prints for a failing test only.
/// `RUST_LOG` overrides the filter.
fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "voice_operator=debug,kube_runtime=info".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .with_ansi(false)
            .try_init();
    });
}

/// An operator running in this process, stopped when dropped.
#[derive(Debug)]
pub struct Operator {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Address of its admin endpoints.
    pub admin: SocketAddr,
}

impl Operator {
    /// Starts an operator that watches `namespaces` with `client`.
    pub async fn start(client: Client, namespaces: &[&str]) -> Self {
        Self::start_with(client, namespaces, None).await
    }

    /// Starts an operator, with leader election when `leader` is set.
    pub async fn start_with(
        client: Client,
        namespaces: &[&str],
        leader: Option<LeaderElection>,
    ) -> Self {
        Self::start_full(client, namespaces, &[], leader).await
    }

    /// Starts an operator that also watches the dashboards in `dashboard_namespaces`.
    pub async fn start_full(
        client: Client,
        namespaces: &[&str],
        dashboard_namespaces: &[&str],
        leader: Option<LeaderElection>,
    ) -> Self {
        capture_logs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = listener.local_addr().unwrap();
        let cfg = RunConfig {
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            dashboard_namespaces: dashboard_namespaces.iter().map(|s| s.to_string()).collect(),
            admin_addr: admin,
            concurrency: 4,
            leader_election: leader,
            crd_poll_interval: Duration::from_millis(500),
            instance: None,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run_on(listener, cfg, client, async move {
            let _ = rx.await;
        }));
        Self {
            stop: Some(tx),
            task: Some(task),
            admin,
        }
    }

    /// Stops it gracefully and returns how `run` ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await?
    }

    /// GET of an admin path: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let code = buf
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    }

    /// The value of the metric line starting with `prefix` (summed over matching lines).
    pub async fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").await;
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The condition `type_` of a pipeline: (status, reason, message).
pub fn condition(vp: &VoicePipeline, type_: &str) -> Option<(String, String, String)> {
    let c = vp.status.as_ref()?.condition(type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until `name` is Ready=True at its current generation, and returns it.
pub async fn wait_ready(api: &Api<VoicePipeline>, name: &str, timeout: Duration) -> VoicePipeline {
    wait_for(
        api,
        name,
        timeout,
        "Ready=True at the current generation",
        |vp| {
            condition(vp, "Ready").is_some_and(|c| c.0 == "True")
                && vp.status.as_ref().and_then(|s| s.observed_generation) == vp.metadata.generation
        },
    )
    .await
}

/// Waits until `name`'s condition `type_` has reason `reason`, and returns the pipeline.
pub async fn wait_reason(
    api: &Api<VoicePipeline>,
    name: &str,
    type_: &str,
    reason: &str,
    timeout: Duration,
) -> VoicePipeline {
    wait_for(api, name, timeout, &format!("{type_}={reason}"), |vp| {
        condition(vp, type_).is_some_and(|c| c.1 == reason)
    })
    .await
}

/// What a person would look at when a pipeline does not become Ready: each Deployment's
/// status, each pod's phase, node and conditions, and the namespace's Events, oldest first.
pub async fn namespace_scene(client: Client, ns: &str) -> String {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Event, Pod};
    use kube::api::ListParams;
    use std::fmt::Write as _;
    let lp = ListParams::default();
    let mut out = format!("namespace {ns}:\n");
    if let Ok(list) = Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
    {
        for d in list {
            let s = d.status.unwrap_or_default();
            let _ = writeln!(
                out,
                "  deployment {}: generation {:?} observed {:?} replicas {:?} updated {:?} ready {:?} available {:?}",
                d.metadata.name.unwrap_or_default(),
                d.metadata.generation,
                s.observed_generation,
                s.replicas,
                s.updated_replicas,
                s.ready_replicas,
                s.available_replicas
            );
        }
    }
    if let Ok(list) = Api::<Pod>::namespaced(client.clone(), ns).list(&lp).await {
        for p in list {
            let spec = p.spec.unwrap_or_default();
            let s = p.status.unwrap_or_default();
            let conditions: Vec<String> = s
                .conditions
                .unwrap_or_default()
                .into_iter()
                .map(|c| {
                    format!(
                        "{}={}{}",
                        c.type_,
                        c.status,
                        c.reason.map(|r| format!("({r})")).unwrap_or_default()
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "  pod {}: phase {:?} node {:?} created {:?} conditions [{}]",
                p.metadata.name.unwrap_or_default(),
                s.phase,
                spec.node_name,
                p.metadata.creation_timestamp.map(|t| t.0),
                conditions.join(", ")
            );
        }
    }
    if let Ok(list) = Api::<Event>::namespaced(client, ns).list(&lp).await {
        let mut events: Vec<Event> = list.items;
        events.sort_by_key(|e| e.last_timestamp.clone().map(|t| t.0));
        for e in events {
            let _ = writeln!(
                out,
                "  event {:?} {} {}/{}: {} {}",
                e.last_timestamp.map(|t| t.0),
                e.type_.unwrap_or_default(),
                e.involved_object.kind.unwrap_or_default(),
                e.involved_object.name.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default()
            );
        }
    }
    out
}

/// Polls `name` every 100 ms until `check` holds; panics with the last status otherwise.
pub async fn wait_for(
    api: &Api<VoicePipeline>,
    name: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&VoicePipeline) -> bool,
) -> VoicePipeline {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(vp) = api.get(name).await {
            if check(&vp) {
                return vp;
            }
            last = Some(vp);
        }
        if tokio::time::Instant::now() > deadline {
            let scene = match last.as_ref().and_then(|vp| vp.metadata.namespace.clone()) {
                Some(ns) => namespace_scene(api.clone().into_client(), &ns).await,
                None => String::new(),
            };
            panic!(
                "{name}: not {what} within {timeout:?}; last status: {:#?}\n{scene}",
                last.and_then(|v| v.status)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
