//! The operator's benchmarks on a private local control plane (`tests/operator/bench.sh`).
//!
//! 1. Latency: create one pipeline at a time, measure until every child of it has been seen by
//!    watches started beforehand (p50, p99 over `--latency N`).
//! 2. Scale: create `--scale N` pipelines, measure until all are Ready at their generation;
//!    the operator process's peak RSS (VmHWM) and CPU seconds (utime+stime); API requests per
//!    pipeline from kube-apiserver's own `apiserver_request_total`; then the writes of one
//!    steady minute, which must be zero.
//!
//! The operator runs as its own process (the binary given by `--operator`), watching the two
//! benchmark namespaces, without leader election (a Lease renewal is a write by design).
//! With `--baseline-operator OLD_BIN` the same runs are made with an older build first, for a
//! side-by-side comparison within one run. Before either, the plane alone makes `--scale` bare
//! gateway Deployments available, so the operator's share of "until all Ready" is visible.
//! Then the writes alone, twice: the benchmark itself sends what this operator sends for
//! `--scale` pipelines (the pipelines, their six children, two status writes each), with no
//! operator; first the Service with the other children, then the Service once the gateway is
//! available. So the plane's cost of the writes themselves, and of their order, is visible.
//! Every run gets its own fresh private plane. Prints a Markdown table, one column per build.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use operator_tests::{ensure_namespace, install_crd};
use serde::de::DeserializeOwned;
use test_support::{Plane, PlaneOptions};
use voice_operator::monitoring_crds::{PrometheusRule, ServiceMonitor};
use voice_operator::status::{self, Observed, Rollout};
use voice_types::VoicePipeline;

struct Args {
    operator: String,
    baseline: Option<String>,
    latency: usize,
    scale: usize,
    steady_secs: u64,
    writes_alone: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        operator: String::new(),
        baseline: None,
        latency: 100,
        scale: 1000,
        steady_secs: 60,
        writes_alone: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--operator" => a.operator = v,
            "--baseline-operator" => a.baseline = Some(v).filter(|v| !v.is_empty()),
            "--latency" => a.latency = v.parse()?,
            "--scale" => a.scale = v.parse()?,
            "--steady-seconds" => a.steady_secs = v.parse()?,
            "--writes-alone" => a.writes_alone = v.parse()?,
            _ => bail!(
                "usage: operator-bench --operator BIN [--baseline-operator BIN] [--latency N] [--scale N] [--steady-seconds S] [--writes-alone true|false]"
            ),
        }
    }
    if a.operator.is_empty() {
        bail!("--operator BIN is required");
    }
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The plane alone first, then each operator, each on a fresh private plane, so every
    // column starts from the same empty cluster.
    eprintln!(">> plane alone: {} bare Deployments", args.scale);
    let plane_only = {
        let plane = Plane::private("operator-bench-plane", PlaneOptions::default());
        rt.block_on(plane_only(&plane, args.scale))?
    };
    let mut writes_only_runs = vec![];
    let orders = [ServiceOrder::WithTheOthers, ServiceOrder::AfterAvailable];
    for order in orders.into_iter().filter(|_| args.writes_alone) {
        let label = order.label();
        eprintln!(
            ">> the writes alone ({label}): {} pipelines, no operator",
            args.scale
        );
        let plane = Plane::private(
            &format!("operator-bench-writes-{}", writes_only_runs.len()),
            PlaneOptions::default(),
        );
        install_crd(&plane);
        let run = rt.block_on(writes_only(&plane, args.scale, order))?;
        writes_only_runs.push((label, run));
    }
    let mut runs = vec![];
    for (label, bin) in args
        .baseline
        .iter()
        .map(|b| ("baseline", b.as_str()))
        .chain([("this build", args.operator.as_str())])
    {
        eprintln!(">> operator ({label}): {bin}");
        let plane = Plane::private(
            &format!("operator-bench-{}", runs.len()),
            PlaneOptions::default(),
        );
        install_crd(&plane);
        let run = rt.block_on(bench(&plane, &args, bin))?;
        runs.push((label, run));
    }
    drop(rt);
    println!("{}", table(&args, &plane_only, &writes_only_runs, &runs));
    Ok(())
}

fn pipeline(ns: &str, name: &str) -> VoicePipeline {
    // Small requests: a thousand gateways fit on the two kwok CPU nodes.
    serde_json::from_value(serde_json::json!({
        "apiVersion": "voice.workflow.io/v1alpha1", "kind": "VoicePipeline",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "llm": {"url": "http://llm.llm.svc:8000/v1"},
            "riva": {"external": {"uri": "riva-api.riva.svc:50051"}},
            "gateway": {"resources": {"requests": {"cpu": "10m", "memory": "32Mi"}}},
        }
    }))
    .expect("valid pipeline")
}

/// The gateway Deployment the operator builds for [`pipeline`], without owner references.
fn bare_gateway(ns: &str, name: &str) -> Deployment {
    let vp = pipeline(ns, name);
    let v = voice_operator::model::validate(&vp).expect("valid pipeline");
    let mut d = voice_operator::build::build(&v).gateway_deployment;
    d.metadata.owner_references = None;
    d
}

/// Whether a Deployment has rolled out: observed, all replicas updated and available.
fn available(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    d.status.as_ref().is_some_and(|s| {
        s.observed_generation >= d.metadata.generation
            && s.updated_replicas.unwrap_or(0) >= want
            && s.available_replicas.unwrap_or(0) >= want
    })
}

/// When each Deployment of `ns` was first seen and first seen available (seconds after `t0`).
#[derive(Default)]
struct DeploymentTimes {
    created: HashMap<String, f64>,
    available: HashMap<String, f64>,
}

fn track_deployments(client: &Client, ns: &str, t0: Instant) -> Arc<Mutex<DeploymentTimes>> {
    let times: Arc<Mutex<DeploymentTimes>> = Arc::default();
    let t = times.clone();
    on_each(
        Api::<Deployment>::namespaced(client.clone(), ns),
        move |d| {
            let at = t0.elapsed().as_secs_f64();
            let mut t = t.lock().unwrap();
            t.created.entry(d.name_any()).or_insert(at);
            if available(&d) {
                t.available.entry(d.name_any()).or_insert(at);
            }
        },
    );
    times
}

/// Calls `f` with every object a watch of `api` sees created or changed, in a task of its own.
fn on_each<K>(api: Api<K>, mut f: impl FnMut(K) + Send + 'static)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    tokio::spawn(async move {
        let mut s = watcher(api, watcher::Config::default()).boxed();
        while let Ok(Some(ev)) = s.try_next().await {
            if let watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) = ev {
                f(obj);
            }
        }
    });
}

/// When each Service of `ns` was first seen by a watch (seconds after `t0`): the end of its
/// create, ClusterIP allocated.
fn track_services(client: &Client, ns: &str, t0: Instant) -> Arc<Mutex<HashMap<String, f64>>> {
    let seen: Arc<Mutex<HashMap<String, f64>>> = Arc::default();
    let s = seen.clone();
    on_each(Api::<Service>::namespaced(client.clone(), ns), move |svc| {
        let at = t0.elapsed().as_secs_f64();
        s.lock().unwrap().entry(svc.name_any()).or_insert(at);
    });
    seen
}

/// Busy and total jiffies of all cores so far (the `cpu` line of /proc/stat; idle and iowait
/// are not busy).
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// One row of the scale run's timeline (for the log): counts reached by `at` seconds, and how
/// many of the machine's cores were busy since the previous row.
struct Tick {
    at: f64,
    deployments_available: usize,
    services: usize,
    ready: usize,
    busy_cores: f64,
}

/// Samples the scale run every `every` until `stop` is set: where the time goes at the end
/// of the run (which lane is last, and whether the cores are still saturated then).
fn sample_timeline(
    every: Duration,
    t0: Instant,
    deployments: Arc<Mutex<DeploymentTimes>>,
    services: Arc<Mutex<HashMap<String, f64>>>,
    pipelines: Arc<Mutex<PipelineView>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Tick>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    tokio::spawn(async move {
        let mut ticks = Vec::new();
        let mut prev = machine_jiffies();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(every).await;
            let now = machine_jiffies();
            let (busy, total) = (now.0 - prev.0, now.1 - prev.1);
            prev = now;
            ticks.push(Tick {
                at: t0.elapsed().as_secs_f64(),
                deployments_available: deployments.lock().unwrap().available.len(),
                services: services.lock().unwrap().len(),
                ready: pipelines
                    .lock()
                    .unwrap()
                    .ready
                    .values()
                    .filter(|r| **r)
                    .count(),
                busy_cores: if total == 0 {
                    0.0
                } else {
                    cores * busy as f64 / total as f64
                },
            });
        }
        ticks
    })
}

/// What a watch last saw of each pipeline of `ns`: Ready at its generation, and the `Ready`
/// conditions (reason: message) its statuses went through. A watch, as `kubectl wait` uses,
/// not a list every so often: listing 1,000 custom resources several times a second costs the
/// API server (unstructured JSON) more CPU than the operator's writes, and the benchmark would
/// measure its own polling.
#[derive(Default)]
struct PipelineView {
    ready: HashMap<String, bool>,
    ready_conditions: HashMap<String, Vec<String>>,
}

fn track_pipelines(client: &Client, ns: &str) -> Arc<Mutex<PipelineView>> {
    let view: Arc<Mutex<PipelineView>> = Arc::default();
    let v = view.clone();
    on_each(
        Api::<VoicePipeline>::namespaced(client.clone(), ns),
        move |vp| {
            let st = vp.status.as_ref();
            let cond = st.and_then(|s| s.condition("Ready"));
            let is_ready = st.and_then(|s| s.observed_generation) == vp.metadata.generation
                && cond.is_some_and(|c| c.status == "True");
            let mut v = v.lock().unwrap();
            v.ready.insert(vp.name_any(), is_ready);
            if let Some(c) = cond {
                let seen = format!("{}: {}", c.reason, c.message);
                let list = v.ready_conditions.entry(vp.name_any()).or_default();
                if list.last() != Some(&seen) {
                    list.push(seen);
                }
            }
        },
    );
    view
}

/// Waits until the watch has seen all `n` pipelines Ready at their generation; the time from
/// `t0` (at most 15 minutes).
async fn all_ready(
    pipelines: &Mutex<PipelineView>,
    n: usize,
    t0: Instant,
) -> anyhow::Result<Duration> {
    loop {
        let ready = pipelines
            .lock()
            .unwrap()
            .ready
            .values()
            .filter(|r| **r)
            .count();
        if ready == n {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(900) {
            bail!("only {ready} of {n} pipelines Ready after 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The most common paths of the `Ready` condition, with how many pipelines took each, for the
/// log: where the status writes go.
fn ready_paths(view: &PipelineView) -> Vec<(usize, String)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for path in view.ready_conditions.values() {
        // Names differ per pipeline: keep the shape of each message.
        let shape: Vec<String> = path
            .iter()
            .map(|c| {
                c.split_whitespace()
                    .map(|w| if w.contains("p-") { "…" } else { w })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        *counts.entry(shape.join("  →  ")).or_insert(0) += 1;
    }
    let mut v: Vec<(usize, String)> = counts.into_iter().map(|(k, n)| (n, k)).collect();
    v.sort_by_key(|b| std::cmp::Reverse(b.0));
    v.truncate(8);
    v
}

fn last(m: &HashMap<String, f64>) -> f64 {
    m.values().copied().fold(0.0, f64::max)
}

/// A run with no operator (the plane alone, the writes alone): creates sent, all done (seconds
/// from the first create), and the plane's CPU by component meanwhile.
struct NoOperator {
    created: f64,
    all: f64,
    cpu: String,
    /// This benchmark process's own CPU seconds meanwhile (it shares the cores).
    bench_cpu: f64,
}

/// The plane's own share: N bare gateway Deployments created at the benchmark's pace, until
/// all are available (ReplicaSet controller, scheduler, kwok), with no operator.
async fn plane_only(plane: &Plane, n: usize) -> anyhow::Result<NoOperator> {
    let client = plane.client().await;
    let ns = "bench-plane";
    ensure_namespace(&client, ns).await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let cpu0 = plane_cpu(plane);
    let (bench_cpu0, _) = proc_stat(std::process::id());
    let t0 = Instant::now();
    let times = track_deployments(&client, ns, t0);
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &bare_gateway(ns, &format!("p-{i}")))
                    .await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let created = t0.elapsed().as_secs_f64();
    loop {
        let done = times.lock().unwrap().available.len();
        if done >= n {
            break;
        }
        if t0.elapsed() > Duration::from_secs(900) {
            bail!("only {done} of {n} bare Deployments available after 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = last(&times.lock().unwrap().available);
    let cpu = cpu_between(&cpu0, &plane_cpu(plane));
    let bench_cpu = proc_stat(std::process::id()).0 - bench_cpu0;
    eprintln!(
        ">> plane alone: creates sent in {created:.1} s, all available at {all:.1} s; CPU {cpu}; this benchmark {bench_cpu:.1} s"
    );
    Ok(NoOperator {
        created,
        all,
        cpu,
        bench_cpu,
    })
}

/// When the writes-alone run applies a pipeline's Service.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ServiceOrder {
    /// With the other five children, all at once, as `kubectl apply` or a Helm release would.
    WithTheOthers,
    /// Once the gateway Deployment is available, just before the Ready status: the order most
    /// pipelines take under the operator at scale (RollingOut → CreatingService → Available).
    AfterAvailable,
}

impl ServiceOrder {
    fn label(self) -> &'static str {
        match self {
            ServiceOrder::WithTheOthers => "Service with the others",
            ServiceOrder::AfterAvailable => "Service once available",
        }
    }
}

/// What the plane costs for N pipelines when nothing but their writes reach it: each pipeline
/// created (32 in flight, as in the scale run), its children applied at once by server-side
/// apply (built by the operator's own pure functions, owned by the pipeline), a first status
/// (rolling out); meanwhile, as each gateway Deployment becomes available (one watch, polled
/// every 50 ms), the Service if `order` holds it back, then the Ready status, 16 in flight (the
/// operator's default concurrency). No other watch, no reconcile, no second look.
async fn writes_only(plane: &Plane, n: usize, order: ServiceOrder) -> anyhow::Result<NoOperator> {
    let client = plane.client().await;
    let ns = "bench-writes";
    ensure_namespace(&client, ns).await;
    let api: Api<VoicePipeline> = Api::namespaced(client.clone(), ns);
    // The quota evaluator's first-write wait (see `bench`), taken before the clock starts.
    let warmup = api
        .create(&PostParams::default(), &pipeline(ns, "warmup"))
        .await?;
    api.delete(&warmup.name_any(), &Default::default()).await?;
    let cpu0 = plane_cpu(plane);
    let (bench_cpu0, _) = proc_stat(std::process::id());
    let t0 = Instant::now();
    let times = track_deployments(&client, ns, t0);
    let pipelines = track_pipelines(&client, ns);
    // Pipelines whose first status is written, by gateway Deployment name, with the Service
    // still to apply when `order` holds it back.
    type Waiting = HashMap<String, (voice_operator::model::Validated, Option<Service>)>;
    let waiting: Arc<Mutex<Waiting>> = Arc::default();
    let finishing = tokio::spawn({
        let (api, client, times, waiting) =
            (api.clone(), client.clone(), times.clone(), waiting.clone());
        async move {
            let mut written = 0;
            while written < n {
                let due: Vec<_> = {
                    let t = times.lock().unwrap();
                    let mut w = waiting.lock().unwrap();
                    t.available.keys().filter_map(|d| w.remove(d)).collect()
                };
                written += due.len();
                futures::stream::iter(due)
                    .map(|(v, service)| {
                        let (api, client) = (api.clone(), client.clone());
                        async move {
                            if let Some(svc) = service {
                                apply_child(&client, &svc).await?;
                            }
                            write_status(&api, &v, 1).await
                        }
                    })
                    .buffer_unordered(16)
                    .try_collect::<Vec<_>>()
                    .await?;
                if t0.elapsed() > Duration::from_secs(900) {
                    bail!("only {written} of {n} pipelines' gateways available after 15 minutes");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(())
        }
    });
    futures::stream::iter(0..n)
        .map(|i| {
            let (api, client, waiting) = (api.clone(), client.clone(), waiting.clone());
            async move {
                let vp = api
                    .create(&PostParams::default(), &pipeline(ns, &format!("p-{i}")))
                    .await?;
                let v = voice_operator::model::validate(&vp).expect("valid pipeline");
                let c = voice_operator::build::build(&v);
                let (cm, dash) = (c.gateway_config, c.dashboard.expect("dashboards on"));
                let sm = c.gateway_service_monitor.expect("monitoring on");
                let pr = c.prometheus_rule.expect("alerts on");
                let svc = c.gateway_service;
                let svc_now = (order == ServiceOrder::WithTheOthers).then_some(&svc);
                futures::try_join!(
                    apply_child(&client, &cm),
                    apply_child(&client, &c.gateway_deployment),
                    async {
                        match svc_now {
                            Some(svc) => apply_child(&client, svc).await,
                            None => Ok(()),
                        }
                    },
                    apply_child(&client, &sm),
                    apply_child(&client, &pr),
                    apply_child(&client, &dash),
                )?;
                write_status(&api, &v, 0).await?;
                let held_back = (order == ServiceOrder::AfterAvailable).then_some(svc);
                waiting
                    .lock()
                    .unwrap()
                    .insert(c.gateway_deployment.name_any(), (v, held_back));
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let created = t0.elapsed().as_secs_f64();
    finishing.await??;
    let all = all_ready(&pipelines, n, t0).await?.as_secs_f64();
    let cpu = cpu_between(&cpu0, &plane_cpu(plane));
    let bench_cpu = proc_stat(std::process::id()).0 - bench_cpu0;
    eprintln!(
        ">> the writes alone ({}): creates sent in {created:.1} s, all Ready at {all:.1} s; CPU {cpu}; this benchmark {bench_cpu:.1} s",
        order.label()
    );
    Ok(NoOperator {
        created,
        all,
        cpu,
        bench_cpu,
    })
}

/// The pipeline's status as the operator computes it for an external-Riva pipeline whose one
/// gateway pod is `available` (0 or 1), applied as the operator sends it.
async fn write_status(
    api: &Api<VoicePipeline>,
    v: &voice_operator::model::Validated,
    available: i32,
) -> Result<(), kube::Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let obs = Observed::clean(Rollout::settled(1, available), &v.namespace);
    let patch = serde_json::json!({
        "apiVersion": "voice.workflow.io/v1alpha1", "kind": "VoicePipeline",
        "status": status::compute(v, None, &obs, &now),
    });
    api.patch_status(
        &v.name,
        &PatchParams::apply("voice-operator/status").force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}

/// Server-side apply of one child, as the operator sends it.
async fn apply_child<K>(client: &Client, obj: &K) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + serde::Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let ns = obj.namespace().expect("a namespaced child");
    Api::<K>::namespaced(client.clone(), &ns)
        .patch(
            &obj.name_any(),
            &PatchParams::apply("voice-operator/bench").force(),
            &Patch::Apply(obj),
        )
        .await
        .map(|_| ())
}

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

/// Records when each object of kind `K` in `ns` is first seen, as `Kind/name`.
fn record<K>(client: &Client, ns: &str, seen: Seen)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let kind = K::kind(&()).to_string();
    on_each(Api::<K>::namespaced(client.clone(), ns), move |o| {
        // A dashboard by its pipeline, not its name: an older baseline operator names it
        // otherwise (`voice-dashboard-<ns>-<name>` before `voice-dashboard.<ns>.<name>`).
        let l = o.labels();
        let key = match (
            l.get("app.kubernetes.io/component").map(String::as_str),
            l.get("app.kubernetes.io/instance"),
        ) {
            (Some("dashboards"), Some(pipeline)) => format!("dashboard/{pipeline}"),
            _ => format!("{kind}/{}", o.name_any()),
        };
        seen.lock().unwrap().entry(key).or_insert_with(Instant::now);
    });
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `apiserver_request_total` by (verb, group, resource, subresource).
fn apiserver_requests(plane: &Plane) -> BTreeMap<(String, String, String, String), f64> {
    let out = plane.kubectl_output(&["get", "--raw", "/metrics"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut m = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let get = |k: &str| {
            labels
                .split(&format!("{k}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_string()
        };
        let v: f64 = value.parse().unwrap_or(0.0);
        *m.entry((
            get("verb"),
            get("group"),
            get("resource"),
            get("subresource"),
        ))
        .or_insert(0.0) += v;
    }
    m
}

type Requests = BTreeMap<(String, String, String, String), f64>;

fn delta(a: &Requests, b: &Requests) -> Requests {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// Requests the operator makes: every server-side apply (nothing else here applies), every
/// request on VoicePipelines but the benchmark's own creates and reads, and deletes of the
/// kinds it owns. Events are left out: kube-scheduler writes an events.k8s.io Event per pod
/// it binds; the operator's Events are counted from its own metric and from the Events'
/// reporting controller instead.
fn operator_requests(d: &Requests) -> (f64, Vec<String>) {
    let mut total = 0.0;
    let mut parts = vec![];
    for ((verb, _group, resource, sub), v) in d {
        let ours = verb == "APPLY"
            || (resource == "voicepipelines"
                && !matches!(verb.as_str(), "POST" | "GET" | "LIST" | "WATCH"))
            || (verb == "DELETE"
                && matches!(
                    resource.as_str(),
                    "servicemonitors" | "prometheusrules" | "poddisruptionbudgets"
                ));
        if ours {
            total += v;
            let r = if sub.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{sub}")
            };
            parts.push(format!("{verb} {r}: {v}"));
        }
    }
    (total, parts)
}

/// Events of `ns` by reporting controller and reason (events.k8s.io, so kube-scheduler's
/// `Scheduled` Events are there too).
async fn events_by_reporter(client: &Client, ns: &str) -> BTreeMap<String, usize> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    let mut m = BTreeMap::new();
    let mut lp = kube::api::ListParams::default().limit(500);
    loop {
        let Ok(list) = api.list(&lp).await else { break };
        for e in &list.items {
            let who = e.reporting_controller.clone().unwrap_or_default();
            let why = e.reason.clone().unwrap_or_default();
            *m.entry(format!("{who} {why}")).or_insert(0) += 1;
        }
        match list.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    m
}

fn proc_stat(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is 0, utime is 11, stime is 12.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    (cpu, hwm)
}

/// CPU seconds so far of each plane component (`pids/NAME.pid` of tests/plane/up.sh), by name.
fn plane_cpu(plane: &Plane) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(plane.dir.join("pids"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = e.path();
        let (Some(name), Ok(pid)) = (
            path.file_stem().and_then(|n| n.to_str()),
            std::fs::read_to_string(&path),
        ) else {
            continue;
        };
        if let Ok(pid) = pid.trim().parse::<u32>() {
            m.insert(name.to_string(), proc_stat(pid).0);
        }
    }
    m
}

/// The CPU each component spent between two `plane_cpu` readings, busiest first, as one cell.
fn cpu_between(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> String {
    let mut d: Vec<(&String, f64)> = b
        .iter()
        .map(|(k, v)| (k, v - a.get(k).copied().unwrap_or(0.0)))
        .collect();
    d.sort_by(|x, y| y.1.total_cmp(&x.1));
    let total: f64 = d.iter().map(|(_, v)| v).sum();
    let parts: Vec<String> = d.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
    format!("{total:.1} s ({})", parts.join(", "))
}

struct OperatorProcess(Child);

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

/// One operator's results.
struct Run {
    lat: Vec<f64>,
    created: f64,
    children_created: f64,
    deployments_available: f64,
    ready_after: f64,
    hwm_mib: f64,
    cpu_scale: f64,
    cpu_total: f64,
    /// This benchmark process's own CPU seconds in the scale run.
    bench_cpu_scale: f64,
    plane_cpu_scale: String,
    scale_reqs: f64,
    scale_parts: Vec<String>,
    own_writes: f64,
    own_events: f64,
    reconciles: f64,
    skipped: f64,
    events: BTreeMap<String, usize>,
    steady_reqs: f64,
    steady_parts: Vec<String>,
    steady_own: f64,
}

/// The six children of the latency run's pipelines, in the order the run names them.
const CHILD_KINDS: [&str; 6] = [
    "gateway ConfigMap",
    "Deployment",
    "Service",
    "ServiceMonitor",
    "PrometheusRule",
    "dashboard",
];

async fn bench(plane: &Plane, args: &Args, operator: &str) -> anyhow::Result<Run> {
    let client = plane.client().await;
    for ns in ["bench-lat", "bench-scale", "bench-warmup"] {
        ensure_namespace(&client, ns).await;
    }
    // The first VoicePipeline written after the CRD was installed waits ~2 s in kube-apiserver
    // (its quota admission starts an evaluator for the new resource: "quota admission added
    // evaluator for: voicepipelines" in its log), which made one latency sample in two runs
    // ~2.1 s. One write in a namespace the operator does not watch takes that wait first.
    let warmup: Api<VoicePipeline> = Api::namespaced(client.clone(), "bench-warmup");
    warmup
        .create(&PostParams::default(), &pipeline("bench-warmup", "warmup"))
        .await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(plane.dir.join("logs/voice-operator.log"))?;
    let op = OperatorProcess(
        Command::new(operator)
            .args([
                "run",
                "--namespace",
                "bench-lat,bench-scale",
                "--admin-addr",
                &format!("127.0.0.1:{port}"),
            ])
            .env("KUBECONFIG", &plane.kubeconfig)
            // OPERATOR_LOG: the operator's RUST_LOG (its log is the plane's logs/voice-operator.log).
            .env(
                "RUST_LOG",
                std::env::var("OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start the operator")?,
    );
    let pid = op.0.id();
    let admin = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{admin}/readyz")).await?;

    // === 1. latency: apply → all children seen ===
    eprintln!(">> latency: {} pipelines, one at a time", args.latency);
    let seen: Seen = Arc::default();
    record::<ConfigMap>(&client, "bench-lat", seen.clone());
    record::<Deployment>(&client, "bench-lat", seen.clone());
    record::<Service>(&client, "bench-lat", seen.clone());
    record::<ServiceMonitor>(&client, "bench-lat", seen.clone());
    record::<PrometheusRule>(&client, "bench-lat", seen.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let api: Api<VoicePipeline> = Api::namespaced(client.clone(), "bench-lat");
    let mut lat = vec![];
    let mut per_child: [Vec<f64>; CHILD_KINDS.len()] = Default::default();
    let mut created = vec![];
    for i in 0..args.latency {
        let name = format!("lat-{i}");
        let children: [String; CHILD_KINDS.len()] = [
            format!("ConfigMap/{name}-gateway"),
            format!("Deployment/{name}-gateway"),
            format!("Service/{name}-gateway"),
            format!("ServiceMonitor/{name}-gateway"),
            format!("PrometheusRule/{name}-alerts"),
            format!("dashboard/{name}"),
        ];
        let t0 = Instant::now();
        api.create(&PostParams::default(), &pipeline("bench-lat", &name))
            .await?;
        created.push(t0.elapsed().as_secs_f64() * 1000.0);
        let deadline = t0 + Duration::from_secs(30);
        let last = loop {
            let done: Option<Vec<Instant>> = {
                let s = seen.lock().unwrap();
                children.iter().map(|c| s.get(c).copied()).collect()
            };
            if let Some(times) = done {
                break times.into_iter().max().unwrap();
            }
            if Instant::now() > deadline {
                bail!("children of {name} not all created within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let ms = last.duration_since(t0).as_secs_f64() * 1000.0;
        if ms > 1000.0 {
            let s = seen.lock().unwrap();
            let each: Vec<String> = children
                .iter()
                .map(|c| format!("{c} {:.0}", s[c].duration_since(t0).as_secs_f64() * 1000.0))
                .collect();
            eprintln!(
                ">> latency: {name} took {ms:.0} ms (ms per child: {})",
                each.join(", ")
            );
        }
        {
            let s = seen.lock().unwrap();
            for (i, c) in children.iter().enumerate() {
                per_child[i].push(s[c].duration_since(t0).as_secs_f64() * 1000.0);
            }
        }
        lat.push(ms);
    }
    lat.sort_by(f64::total_cmp);
    let medians: Vec<String> = per_child
        .iter_mut()
        .zip(CHILD_KINDS)
        .map(|(times, kind)| {
            times.sort_by(f64::total_cmp);
            format!("{kind} {:.1}", percentile(times, 50.0))
        })
        .collect();
    created.sort_by(f64::total_cmp);
    eprintln!(
        ">> latency: p50 ms from the create call to its answer {:.1}, to each child seen: {}",
        percentile(&created, 50.0),
        medians.join(", ")
    );
    eprintln!(
        ">> latency: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&lat, 50.0),
        percentile(&lat, 99.0)
    );

    // Give the latency run's pods and Services back before the scale run.
    api.delete_collection(&Default::default(), &Default::default())
        .await?;
    let services: Api<Service> = Api::namespaced(client.clone(), "bench-lat");
    let freed = Instant::now();
    while !services.list(&Default::default()).await?.items.is_empty() {
        if freed.elapsed() > Duration::from_secs(120) {
            bail!("the latency run's Services were not garbage-collected within 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // === 2. scale: N pipelines until all Ready ===
    eprintln!(">> scale: {} pipelines", args.scale);
    let (cpu0, _) = proc_stat(pid);
    let (bench_cpu0, _) = proc_stat(std::process::id());
    let plane0 = plane_cpu(plane);
    let req0 = apiserver_requests(plane);
    let writes0 = operator_metric(&admin, "voice_operator_api_writes_total").await;
    let reconciles0 = operator_metric(&admin, "voice_operator_reconciles_total").await;
    let skipped0 = operator_metric(&admin, "voice_operator_apply_skipped_total").await;
    let events0 = operator_metric(&admin, "voice_operator_api_writes_total{kind=\"Event\"").await;
    let api: Api<VoicePipeline> = Api::namespaced(client.clone(), "bench-scale");
    let t0 = Instant::now();
    let times = track_deployments(&client, "bench-scale", t0);
    let services = track_services(&client, "bench-scale", t0);
    let pipelines = track_pipelines(&client, "bench-scale");
    let stop_sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let timeline = sample_timeline(
        Duration::from_secs(5),
        t0,
        times.clone(),
        services.clone(),
        pipelines.clone(),
        stop_sampling.clone(),
    );
    futures::stream::iter(0..args.scale)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(
                    &PostParams::default(),
                    &pipeline("bench-scale", &format!("p-{i}")),
                )
                .await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let created = t0.elapsed();
    let ready_after = all_ready(&pipelines, args.scale, t0).await?;
    let (cpu1, _) = proc_stat(pid);
    let (bench_cpu1, _) = proc_stat(std::process::id());
    let plane1 = plane_cpu(plane);
    let req1 = apiserver_requests(plane);
    let writes1 = operator_metric(&admin, "voice_operator_api_writes_total").await;
    let reconciles1 = operator_metric(&admin, "voice_operator_reconciles_total").await;
    let skipped1 = operator_metric(&admin, "voice_operator_apply_skipped_total").await;
    let events1 = operator_metric(&admin, "voice_operator_api_writes_total{kind=\"Event\"").await;
    stop_sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        ">> scale run, timeline (s: Deployments available, Services created, pipelines Ready; busy cores of {}):",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for t in timeline.await? {
        eprintln!(
            "     {:>5.1}: {:>5} {:>5} {:>5}; {:.2}",
            t.at, t.deployments_available, t.services, t.ready, t.busy_cores
        );
    }
    eprintln!(">> scale run, the paths of the Ready condition (pipelines: path):");
    for (n, path) in ready_paths(&pipelines.lock().unwrap()) {
        eprintln!("     {n:>5}: {path}");
    }
    let scale_delta = delta(&req0, &req1);
    let mut all: Vec<_> = scale_delta.iter().collect();
    all.sort_by(|a, b| b.1.total_cmp(a.1));
    eprintln!(">> scale run, every API request by verb/resource/subresource (busiest first):");
    for ((verb, _, resource, sub), v) in all.iter().take(25) {
        eprintln!("     {v:>7.0} {verb} {resource} {sub}");
    }
    let (scale_reqs, scale_parts) = operator_requests(&scale_delta);
    let events = events_by_reporter(&client, "bench-scale").await;
    let (children_created, deployments_available) = {
        let t = times.lock().unwrap();
        (last(&t.created), last(&t.available))
    };

    // === 3. steady state: writes during one quiet minute ===
    eprintln!(">> steady state: {} s", args.steady_secs);
    tokio::time::sleep(Duration::from_secs(5)).await; // let the last status writes land
    let req2 = apiserver_requests(plane);
    let writes2 = operator_metric(&admin, "voice_operator_api_writes_total").await;
    tokio::time::sleep(Duration::from_secs(args.steady_secs)).await;
    let req3 = apiserver_requests(plane);
    let writes3 = operator_metric(&admin, "voice_operator_api_writes_total").await;
    let (steady_reqs, steady_parts) = operator_requests(&delta(&req2, &req3));
    let per_min = 60.0 / args.steady_secs as f64;
    let (cpu_total, hwm_kib) = proc_stat(pid);
    drop(op);

    let n = args.scale as f64;
    Ok(Run {
        lat,
        created: created.as_secs_f64(),
        children_created,
        deployments_available,
        ready_after: ready_after.as_secs_f64(),
        hwm_mib: hwm_kib as f64 / 1024.0,
        cpu_scale: cpu1 - cpu0,
        cpu_total,
        bench_cpu_scale: bench_cpu1 - bench_cpu0,
        plane_cpu_scale: cpu_between(&plane0, &plane1),
        scale_reqs: scale_reqs / n,
        scale_parts,
        own_writes: (writes1 - writes0) / n,
        own_events: events1 - events0,
        reconciles: (reconciles1 - reconciles0) / n,
        skipped: (skipped1 - skipped0) / n,
        events,
        steady_reqs: steady_reqs * per_min,
        steady_parts,
        steady_own: (writes3 - writes2) * per_min,
    })
}

/// The Markdown table: one column per operator build, the plane alone as a row of its own.
fn table(
    args: &Args,
    plane_only: &NoOperator,
    writes_only: &[(&str, NoOperator)],
    runs: &[(&str, Run)],
) -> String {
    let mut out = String::from("| what |");
    for (label, _) in runs {
        out += &format!(" {label} |");
    }
    out += " target |\n|---|";
    for _ in runs {
        out += "---|";
    }
    out += "---|\n";
    // A cell with the scale run's figure, then the same figure of each run with no operator.
    let beneath = |scale: String, of: &dyn Fn(&NoOperator) -> String| {
        let mut cell = format!("{scale}<br>alone: {}", of(plane_only));
        for (label, w) in writes_only {
            cell += &format!("<br>writes alone, {label}: {}", of(w));
        }
        cell
    };
    let mut row = |what: String, cell: &dyn Fn(&Run) -> String, target: &str| {
        out += &format!("| {what} |");
        for (_, r) in runs {
            out += &format!(" {} |", cell(r));
        }
        out += &format!(" {target} |\n");
    };
    row(
        format!(
            "apply → all 6 children created, one pipeline at a time ({} pipelines)",
            args.latency
        ),
        &|r| {
            format!(
                "p50 {:.1} ms, p99 {:.1} ms (min {:.1}, max {:.1})",
                percentile(&r.lat, 50.0),
                percentile(&r.lat, 99.0),
                r.lat[0],
                r.lat[r.lat.len() - 1]
            )
        },
        "p50 < 100 ms",
    );
    row(
        format!(
            "{} pipelines: create → all Ready at their generation",
            args.scale
        ),
        &|r| {
            format!(
                "{:.1} s (creates sent in {:.1} s)",
                r.ready_after, r.created
            )
        },
        "< 60 s",
    );
    row(
        "… of which: last gateway Deployment created / last one available (seen by a watch)".into(),
        &|r| {
            format!(
                "{:.1} s / {:.1} s",
                r.children_created, r.deployments_available
            )
        },
        "",
    );
    row(
        format!(
            "… the plane alone: {} bare gateway Deployments created → all available (no operator; its own fresh plane)",
            args.scale
        ),
        &|_| {
            format!(
                "{:.1} s (creates sent in {:.1} s)",
                plane_only.all, plane_only.created
            )
        },
        "",
    );
    row(
        "… all Ready as a multiple of the plane alone (less sensitive to the speed of the day)"
            .into(),
        &|r| format!("{:.2}×", r.ready_after / plane_only.all),
        "",
    );
    for (label, w) in writes_only {
        row(
            format!(
                "… the writes alone, {label}: {} pipelines, their six children and two status writes each, sent by the benchmark (no operator; its own fresh plane) → all Ready",
                args.scale
            ),
            &|_| format!("{:.1} s (creates sent in {:.1} s)", w.all, w.created),
            "",
        );
        row(
            format!("… all Ready as a multiple of the writes alone, {label}"),
            &|r| format!("{:.2}×", r.ready_after / w.all),
            "",
        );
    }
    row(
        "plane CPU by component: scale run (create → all Ready); the plane alone's run, then the writes alone's, beneath"
            .into(),
        &|r| beneath(r.plane_cpu_scale.clone(), &|n| n.cpu.clone()),
        "",
    );
    row(
        "operator peak RSS (VmHWM)".into(),
        &|r| format!("{:.1} MiB", r.hwm_mib),
        "< 64 MiB",
    );
    row(
        "operator CPU".into(),
        &|r| {
            format!(
                "{:.1} s scale run, {:.1} s whole benchmark",
                r.cpu_scale, r.cpu_total
            )
        },
        "",
    );
    row(
        "this benchmark's own CPU (its creates, watches and polling share the cores): scale run; the plane alone's run, then the writes alone's, beneath".into(),
        &|r| {
            let secs = |n: &NoOperator| format!("{:.1} s", n.bench_cpu);
            beneath(format!("{:.1} s", r.bench_cpu_scale), &secs)
        },
        "",
    );
    row(
        "operator API requests per pipeline (apiserver_request_total, scale run; Events apart)"
            .into(),
        &|r| format!("{:.2} ({})", r.scale_reqs, r.scale_parts.join(", ")),
        "",
    );
    row(
        "operator's own count of writes per pipeline (voice_operator_api_writes_total)".into(),
        &|r| format!("{:.2} (Events: {:.0})", r.own_writes, r.own_events),
        "",
    );
    row(
        "operator reconciles per pipeline, and applies skipped as unchanged per pipeline (scale run)"
            .into(),
        &|r| format!("{:.2} reconciles, {:.2} applies skipped", r.reconciles, r.skipped),
        "",
    );
    row(
        "Events in the scale namespace by reporting controller and reason".into(),
        &|r| {
            r.events
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
        "",
    );
    row(
        "operator writes per minute once all are Ready (apiserver_request_total)".into(),
        &|r| {
            format!(
                "{:.0}{} (own count: {:.0})",
                r.steady_reqs,
                if r.steady_parts.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.steady_parts.join(", "))
                },
                r.steady_own
            )
        },
        "0",
    );
    out
}

async fn http_get(url: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/')?;
    let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        buf.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

async fn wait_http(url: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        if let Some((200, _)) = http_get(url).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url} did not answer 200 within 30 s")
}

async fn operator_metric(admin: &str, prefix: &str) -> f64 {
    let (_, body) = http_get(&format!("{admin}/metrics"))
        .await
        .unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
