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
//! Prints a Markdown table.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::PostParams;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use operator_tests::install_crd;
use serde::de::DeserializeOwned;
use test_support::{Plane, PlaneOptions};
use voice_operator::monitoring_crds::{PrometheusRule, ServiceMonitor};
use voice_types::VoicePipeline;

struct Args {
    operator: String,
    latency: usize,
    scale: usize,
    steady_secs: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        operator: String::new(),
        latency: 100,
        scale: 1000,
        steady_secs: 60,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--operator" => a.operator = v,
            "--latency" => a.latency = v.parse()?,
            "--scale" => a.scale = v.parse()?,
            "--steady-seconds" => a.steady_secs = v.parse()?,
            _ => bail!(
                "usage: operator-bench --operator BIN [--latency N] [--scale N] [--steady-seconds S]"
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
    eprintln!(">> starting a private plane");
    let plane = Plane::private("operator-bench", PlaneOptions::default());
    install_crd(&plane);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(bench(&plane, &args));
    drop(rt);
    drop(plane);
    let table = result?;
    println!("{table}");
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
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let kind = K::kind(&()).to_string();
    tokio::spawn(async move {
        let mut s = watcher(api, watcher::Config::default()).boxed();
        while let Ok(Some(ev)) = s.try_next().await {
            if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = ev {
                seen.lock()
                    .unwrap()
                    .entry(format!("{kind}/{}", o.name_any()))
                    .or_insert_with(Instant::now);
            }
        }
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
/// request on VoicePipelines but the benchmark's own creates and reads, events.k8s.io writes,
/// and deletes of the kinds it owns.
fn operator_requests(d: &Requests) -> (f64, Vec<String>) {
    let mut total = 0.0;
    let mut parts = vec![];
    for ((verb, group, resource, sub), v) in d {
        let ours = verb == "APPLY"
            || (resource == "voicepipelines"
                && !matches!(verb.as_str(), "POST" | "GET" | "LIST" | "WATCH"))
            || (group == "events.k8s.io" && matches!(verb.as_str(), "POST" | "PATCH"))
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

async fn bench(plane: &Plane, args: &Args) -> anyhow::Result<String> {
    let client = plane.client().await;
    for ns in ["bench-lat", "bench-scale"] {
        let n: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &n)
            .await?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(plane.dir.join("logs/voice-operator.log"))?;
    let op = OperatorProcess(
        Command::new(&args.operator)
            .args([
                "run",
                "--namespace",
                "bench-lat,bench-scale",
                "--admin-addr",
                &format!("127.0.0.1:{port}"),
            ])
            .env("KUBECONFIG", &plane.kubeconfig)
            .env("RUST_LOG", "warn")
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
    for i in 0..args.latency {
        let name = format!("lat-{i}");
        let children = [
            format!("ConfigMap/{name}-gateway"),
            format!("Deployment/{name}-gateway"),
            format!("Service/{name}-gateway"),
            format!("ServiceMonitor/{name}-gateway"),
            format!("PrometheusRule/{name}-alerts"),
            format!("ConfigMap/voice-dashboard-bench-lat-{name}"),
        ];
        let t0 = Instant::now();
        api.create(&PostParams::default(), &pipeline("bench-lat", &name))
            .await?;
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
        lat.push(last.duration_since(t0).as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
    eprintln!(">> latency: p50 {p50:.1} ms, p99 {p99:.1} ms");

    // The local plane's Service range is small (10.0.0.0/24): give the latency run's
    // ClusterIPs back before the scale run.
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
    let req0 = apiserver_requests(plane);
    let writes0 = operator_metric(&admin, "voice_operator_api_writes_total").await;
    let api: Api<VoicePipeline> = Api::namespaced(client.clone(), "bench-scale");
    let t0 = Instant::now();
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
    let ready_after = loop {
        let list = api.list(&Default::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|vp| {
                let st = vp.status.as_ref();
                st.and_then(|s| s.observed_generation) == vp.metadata.generation
                    && st
                        .and_then(|s| s.condition("Ready"))
                        .is_some_and(|c| c.status == "True")
            })
            .count();
        if ready == args.scale {
            break t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(900) {
            bail!(
                "only {ready} of {} pipelines Ready after 15 minutes",
                args.scale
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (cpu1, _) = proc_stat(pid);
    let req1 = apiserver_requests(plane);
    let writes1 = operator_metric(&admin, "voice_operator_api_writes_total").await;
    let (scale_reqs, scale_parts) = operator_requests(&delta(&req0, &req1));

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
    Ok(format!(
        "| what | result | target |\n|---|---|---|\n\
         | apply → all 6 children created, one pipeline at a time | p50 {p50:.1} ms, p99 {p99:.1} ms (min {:.1}, max {:.1}; {} pipelines) | p50 < 100 ms |\n\
         | {} pipelines: create → all Ready at their generation | {:.1} s (creates sent in {:.1} s) | < 60 s |\n\
         | operator peak RSS (VmHWM) | {:.1} MiB | < 64 MiB |\n\
         | operator CPU | {:.1} s during the scale run, {:.1} s for the whole benchmark | |\n\
         | operator API requests per pipeline (apiserver_request_total, scale run) | {:.2} ({}) | |\n\
         | operator's own count of writes per pipeline (voice_operator_api_writes_total) | {:.2} | |\n\
         | operator writes per minute once all are Ready (apiserver_request_total) | {:.0}{} (own count: {:.0}) | 0 |\n",
        lat[0],
        lat[lat.len() - 1],
        lat.len(),
        args.scale,
        ready_after.as_secs_f64(),
        created.as_secs_f64(),
        hwm_kib as f64 / 1024.0,
        cpu1 - cpu0,
        cpu_total,
        scale_reqs / n,
        scale_parts.join(", "),
        (writes1 - writes0) / n,
        steady_reqs * per_min,
        if steady_parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", steady_parts.join(", "))
        },
        (writes3 - writes2) * per_min,
    ))
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
