//! The controller: watches, the reconcile pipeline, and the run loop.
//!
//! ```text
//!  VoicePipeline watch ─────────────┐
//!  Deployment/Service/PDB/ConfigMap  ├─► Controller ─► reconcile ─► read → validate → build
//!   watches (label managed-by=…)     │    (bounded         │                      → apply → status
//!  ServiceMonitor/PrometheusRule ────┤    concurrency)     └► error_policy: backoff per pipeline
//!   watches, started once the CRDs   │
//!   are served (discovery poll) ─────┘ + reconcile-all when they appear
//! ```
//!
//! One controller runs per watched namespace (or one for all namespaces); each keeps its own
//! watch caches, so an operator scoped to a test's namespace never touches another's pipelines.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use serde_json::json;
use voice_types::{VoicePipeline, VoicePipelineStatus};

use crate::admin::{self, Health};
use crate::apply::{Applier, ApplyError, hash_of};
use crate::backoff::{Backoff, Pass};
use crate::build::{Children, build};
use crate::leader::Elector;
use crate::metrics::Metrics;
use crate::model::{
    Component, DASHBOARD_FINALIZER, OPERATOR, ValidateError, Validated, belongs_to, dashboard_name,
    legacy_dashboard_name, owner_of, validate,
};
use crate::monitoring_crds::{PrometheusRule, ServiceMonitor};
use crate::pods::{self, PodProblems};
use crate::service_lane::{ApplyService, LaneOutcome, PipelineRef, SERVICE_CREATES, ServiceLane};
use crate::status::{self, Observed, Outcome, PassError, Rollout, truncate};

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Namespaces to watch; empty: all namespaces.
    pub namespaces: Vec<String>,
    /// Further namespaces whose operator-labelled ConfigMaps are watched: where pipelines put
    /// their dashboards (`spec.observability.dashboards.namespace`). A dashboard there is then
    /// drift-checked from the watch like any child, instead of re-applied every
    /// [`crate::apply::UNCACHED_RESYNC`]. Not needed when watching all namespaces.
    pub dashboard_namespaces: Vec<String>,
    /// Admin address (`/metrics`, `/livez`, `/readyz`); port 0 picks a free one.
    pub admin_addr: SocketAddr,
    /// Most pipelines reconciled at once.
    pub concurrency: u16,
    /// Leader election, if enabled.
    pub leader_election: Option<LeaderElection>,
    /// How often to look for the monitoring.coreos.com CRDs.
    pub crd_poll_interval: Duration,
    /// Instance name in Events (pod name).
    pub instance: Option<String>,
}

/// Where the leader Lease lives.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// Lease duration.
    pub lease_duration: Duration,
}

/// Whether the Prometheus Operator's kinds are served, updated by discovery.
#[derive(Debug, Default)]
pub struct MonitoringKinds {
    /// `servicemonitors.monitoring.coreos.com` is served.
    pub service_monitors: AtomicBool,
    /// `prometheusrules.monitoring.coreos.com` is served.
    pub prometheus_rules: AtomicBool,
    /// Discovery has answered once (or failed once): until then the two flags above say
    /// nothing.
    pub discovered: AtomicBool,
}

/// Holds back the passes of a newly started controller until its child caches have listed
/// and discovery has answered: a pass before that takes an existing Service for one to create
/// (`CreatingService`) or the monitoring kinds for missing, and a healthy pipeline's `Ready`
/// flaps on every restart or leader change. Opens anyway after [`SYNC_WAIT_MAX`], so a cache
/// that cannot list (a missing right) does not stop the operator.
#[derive(Debug)]
struct SyncGate {
    children_listed: AtomicBool,
    since: Instant,
}

/// The longest [`SyncGate`] holds passes back.
const SYNC_WAIT_MAX: Duration = Duration::from_secs(30);
/// How soon a held-back pass is tried again.
const SYNC_RETRY: Duration = Duration::from_millis(200);

impl SyncGate {
    fn new() -> Self {
        Self {
            children_listed: AtomicBool::new(false),
            since: Instant::now(),
        }
    }

    fn open(&self, monitoring: &MonitoringKinds) -> bool {
        (self.children_listed.load(Ordering::Acquire)
            && monitoring.discovered.load(Ordering::Acquire))
            || self.since.elapsed() > SYNC_WAIT_MAX
    }
}

/// The watch caches of the children.
#[derive(Clone, Debug)]
pub struct Stores {
    /// Deployments (gateway, Riva).
    pub deployments: Store<Deployment>,
    /// Services.
    pub services: Store<Service>,
    /// PodDisruptionBudgets.
    pub pdbs: Store<PodDisruptionBudget>,
    /// ConfigMaps (gateway config, dashboards).
    pub config_maps: Store<ConfigMap>,
    /// ServiceMonitors (empty until the CRD is served).
    pub service_monitors: Store<ServiceMonitor>,
    /// PrometheusRules (empty until the CRD is served).
    pub prometheus_rules: Store<PrometheusRule>,
    /// `config_maps` holds every namespace's (the operator watches all namespaces).
    pub all_namespaces: bool,
    /// Dashboard ConfigMaps in [`RunConfig::dashboard_namespaces`], by namespace; shared by
    /// every namespace's controller.
    pub dashboards: Arc<HashMap<String, Store<ConfigMap>>>,
}

impl Stores {
    /// The cache that holds operator-labelled ConfigMaps of `namespace`, if one does.
    fn config_maps_of(&self, namespace: &str, own: &str) -> Option<&Store<ConfigMap>> {
        if namespace == own || self.all_namespaces {
            Some(&self.config_maps)
        } else {
            self.dashboards.get(namespace)
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Publishes Events about pipelines.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Server-side apply with steady-state skipping.
    pub applier: Arc<Applier>,
    /// Creates this controller's new Services off the reconcile path (the API server
    /// allocates ClusterIPs one at a time).
    pub service_lane: Arc<ServiceLane>,
    /// Children's watch caches.
    pub stores: Stores,
    /// Which monitoring kinds are served.
    pub monitoring: Arc<MonitoringKinds>,
    /// Why the gateway's and Riva's pods do not start, where they do not.
    pub pod_problems: Arc<PodProblems>,
    /// Passes wait until the caches of this controller's children have listed.
    sync: Arc<SyncGate>,
    /// Consecutive failed passes per pipeline, for the retries' backoff.
    backoff: Arc<Backoff>,
    /// The status last written per pipeline (uid), and when: the watch cache can lag behind
    /// our own write, and a pass on the stale copy must not write the same status again.
    written: std::sync::Mutex<HashMap<String, (VoicePipelineStatus, Instant)>>,
    /// The last Event per pipeline (uid → reason, when): a failure retried with backoff is
    /// reported again only when its reason changes or [`EVENT_REPEAT`] has passed, so an error
    /// storm does not become an Event storm on an API server that is already struggling.
    events: std::sync::Mutex<HashMap<String, (String, Instant)>>,
}

/// How often the same failure of one pipeline is published again as an Event.
const EVENT_REPEAT: Duration = Duration::from_secs(300);

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// Why a reconcile failed: it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A child could not be applied or deleted.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The pipeline's own status or finalizers could not be written.
    #[error("write {what} of VoicePipeline {namespace}/{name}: {source}")]
    Pipeline {
        /// `status` or `finalizers`.
        what: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError {
    /// CamelCase reason for metrics and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Apply(e) => e.reason(),
            Self::Pipeline { what: "status", .. } => "StatusWriteFailed",
            Self::Pipeline { .. } => "FinalizerWriteFailed",
        }
    }
}

/// Field manager of a scope.
fn manager(scope: &str) -> String {
    format!("{OPERATOR}/{scope}")
}

// === reconcile ===

async fn reconcile(
    guard: Arc<DeserializeGuard<VoicePipeline>>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    if !ctx.sync.open(&ctx.monitoring) {
        return Ok(Action::requeue(SYNC_RETRY));
    }
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = match &guard.0 {
        Ok(vp) => reconcile_pipeline(vp, &ctx).await,
        Err(invalid) => {
            // A malformed object (e.g. stored before the CRD's schema): log, tell its owner, skip.
            let m = &invalid.metadata;
            tracing::warn!(namespace = ?m.namespace, name = ?m.name, error = %invalid.error, "skipping malformed VoicePipeline");
            ctx.metrics.error("MalformedObject");
            let reference = guard.object_ref(&());
            let _ = ctx
                .recorder
                .publish(
                    &Event {
                        type_: EventType::Warning,
                        reason: "MalformedObject".into(),
                        note: Some(truncate(
                            &format!("cannot read this VoicePipeline: {}", invalid.error),
                            1000,
                        )),
                        action: "Read".into(),
                        secondary: None,
                    },
                    &reference,
                )
                .await;
            Ok(Pass::Done)
        }
    };
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    Ok(ctx
        .backoff
        .after(&ObjectRef::from_obj(guard.as_ref()), result?))
}

async fn reconcile_pipeline(vp: &VoicePipeline, ctx: &Context) -> Result<Pass, ReconcileError> {
    let ns = vp.namespace().unwrap_or_default();
    let api: Api<VoicePipeline> = Api::namespaced(ctx.client.clone(), &ns);

    if vp.metadata.deletion_timestamp.is_some() {
        return finalize(vp, ctx, &api).await;
    }

    // validate (pure)
    let v = match validate(vp) {
        Ok(v) => v,
        Err(e) => return stall_invalid(vp, ctx, &api, &e).await,
    };

    // Dashboards outside the namespace need the finalizer before they exist.
    let foreign_before = foreign_dashboards(ctx, vp);
    let needs_finalizer = v.dashboards_elsewhere() || !foreign_before.is_empty();
    if needs_finalizer && !vp.finalizers().iter().any(|f| f == DASHBOARD_FINALIZER) {
        set_finalizer(vp, ctx, &api, true).await?;
    }

    // build (pure), then apply
    let children = build(&v);
    let mut observed = apply_children(&v, children, ctx).await;
    for (rollout, component) in [
        (&mut observed.gateway, Component::Gateway),
        (&mut observed.riva, Component::Riva),
    ] {
        if let Some(r) = rollout {
            r.pod_problem = ctx.pod_problems.first(&ns, &v.name, component);
        }
    }

    // A dashboard whose apply failed stays where it was: it still serves, and the status keeps
    // saying where, for the next pass and the finalizer. (Deleting it as "moved" would take a
    // working dashboard away on a transient error.)
    if matches!(observed.dashboards, Outcome::Failed(_)) {
        observed.dashboards_namespace = last_written(ctx, vp)
            .or_else(|| vp.status.clone())
            .and_then(|s| s.dashboards_namespace);
    }
    // A dashboard that moved or was switched off: remove the old one, also under its old name
    // (asking the API server: a move is rare, and the old namespace may have no cache).
    for old_ns in &foreign_before {
        if Some(old_ns) == observed.dashboards_namespace.as_ref() {
            continue;
        }
        let removed = async {
            ctx.applier
                .delete::<ConfigMap>(old_ns, &v.child_name(Component::Dashboards))
                .await?;
            remove_legacy_dashboard(ctx, old_ns, &ns, &v.name).await
        };
        if let Err(e) = removed.await {
            observed.aux_error.get_or_insert(pass_error(&e));
        }
    }
    if !needs_finalizer_after(&v, &observed)
        && vp.finalizers().iter().any(|f| f == DASHBOARD_FINALIZER)
        && observed.aux_error.is_none()
    {
        set_finalizer(vp, ctx, &api, false).await?;
    }

    // status (pure), written only when it changed
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let recent = recently_written(ctx, vp);
    let new = status::compute(&v, recent.as_ref().or(vp.status.as_ref()), &observed, &now);
    if recent.as_ref() != Some(&new) {
        write_status(vp, ctx, &api, &new).await?;
    }

    if let Some(err) = observed.error.as_ref().or(observed.aux_error.as_ref()) {
        tracing::warn!(namespace = %ns, name = %vp.name_any(), reason = %err.reason, error = %err.message, "reconcile incomplete; retrying");
        publish(ctx, vp, EventType::Warning, &err.reason, &err.message).await;
        ctx.metrics.error(&err.reason);
        // Retry with backoff; the status already says why.
        return Ok(Pass::Retry);
    }
    // A Service still being created brings the pipeline back by its watch event once
    // created, or through the lane's `reconcile_on` stream if its create failed.
    Ok(Pass::Done)
}

fn needs_finalizer_after(v: &Validated, o: &Observed) -> bool {
    v.dashboards_elsewhere()
        || o.dashboards_namespace
            .as_ref()
            .is_some_and(|d| d != &v.namespace)
}

/// The namespaces other than its own where the pipeline's dashboard may be, by the status:
/// the one this process last wrote and the cached one. Both count: the cache may not have
/// the last write yet (two quick moves would otherwise leave the middle dashboard behind),
/// and this process may have written none (it just started).
fn foreign_dashboards(ctx: &Context, vp: &VoicePipeline) -> Vec<String> {
    let ns = vp.namespace().unwrap_or_default();
    placed_elsewhere(&ns, [last_written(ctx, vp).as_ref(), vp.status.as_ref()])
}

/// The dashboards namespaces other than `ns` that `statuses` name, each once.
fn placed_elsewhere(ns: &str, statuses: [Option<&VoicePipelineStatus>; 2]) -> Vec<String> {
    let mut found: Vec<String> = statuses
        .into_iter()
        .flatten()
        .filter_map(|s| s.dashboards_namespace.clone())
        .filter(|d| d != ns)
        .collect();
    found.dedup();
    found
}

fn pass_error(e: &ApplyError) -> PassError {
    let hint = match e.reason() {
        "Forbidden" => ": the operator's RBAC does not allow this (see deploy/rbac.yaml)",
        "Invalid" => ": the API server rejected the object",
        _ => "",
    };
    PassError {
        reason: e.reason().into(),
        message: format!("{e}{hint}"),
        permanent: e.is_permanent(),
    }
}

/// Applies every child; records what it saw for the status step.
///
/// Every child is applied at once (one concurrent round trip, not ten), the gateway Deployment
/// included, although its pods read the gateway ConfigMap: both requests leave together, and a
/// pod only reaches a kubelet after the ReplicaSet controller and the scheduler, long after
/// the ConfigMap is stored. Should the ConfigMap's apply fail, the pods wait in
/// `CreateContainerConfigError` (the kubelet retries) while the status names the failure and
/// the pass is retried with backoff; the pods do not start with a wrong configuration, since
/// the Deployment's template carries the hash of the configuration it was built for.
async fn apply_children(v: &Validated, children: Children, ctx: &Context) -> Observed {
    let s = &ctx.stores;
    let a = &ctx.applier;
    let lane = &ctx.service_lane;
    let owner: PipelineRef = ObjectRef::new(&v.name).within(&v.namespace);
    let ns = v.namespace.as_str();
    let Children {
        gateway_config,
        gateway_deployment,
        gateway_service,
        gateway_pdb,
        riva_deployment,
        riva_service,
        gateway_service_monitor,
        riva_service_monitor,
        prometheus_rule,
        dashboard,
    } = children;
    let gw = v.child_name(Component::Gateway);
    let riva = v.child_name(Component::Riva);
    let dash_name = v.child_name(Component::Dashboards);
    let alerts = v.child_name(Component::Alerts);

    // Core: gateway and Riva. Each component's rollout is kept even when another child's apply
    // failed: the status then names the failure without saying a serving gateway is gone.
    let core = async {
        let rollout_of = |d: Result<Option<Arc<Deployment>>, ApplyError>| match d {
            Ok(d) => (d.map(|d| Rollout::of(&d)), None),
            Err(e) => (None, Some(e)),
        };
        let riva_fut = async {
            match (&riva_deployment, &riva_service) {
                (Some(d), Some(svc)) => {
                    let (svc, d) = futures::join!(
                        lane.apply(svc, "riva", &owner),
                        a.apply(d, "riva", Some(&s.deployments))
                    );
                    let (rollout, d_err) = rollout_of(d);
                    let pending = matches!(svc, Ok(LaneOutcome::Pending));
                    (rollout, pending, svc.err().or(d_err))
                }
                _ => (None, false, None),
            }
        };
        let pdb_fut = async {
            match &gateway_pdb {
                Some(pdb) => a.ensure(pdb, "gateway", Some(&s.pdbs)).await,
                None => Ok(()),
            }
        };
        let gateway_fut = async {
            let (cm, svc, d) = futures::join!(
                a.ensure(&gateway_config, "gateway", Some(&s.config_maps)),
                lane.apply(&gateway_service, "gateway", &owner),
                a.apply(&gateway_deployment, "gateway", Some(&s.deployments))
            );
            let (rollout, d_err) = rollout_of(d);
            let pending = matches!(svc, Ok(LaneOutcome::Pending));
            (rollout, pending, cm.err().or(svc.err()).or(d_err))
        };
        let (
            (riva_rollout, riva_pending, riva_err),
            pdb,
            (gateway_rollout, gateway_pending, gateway_err),
        ) = futures::join!(riva_fut, pdb_fut, gateway_fut);
        let pending: Vec<String> = [
            (gateway_pending, gw.as_str()),
            (riva_pending, riva.as_str()),
        ]
        .into_iter()
        .filter(|&(pending, _)| pending)
        .map(|(_, name)| name.to_string())
        .collect();
        let mut error = riva_err.or(gateway_err).or(pdb.err());
        if error.is_none() {
            // Children of switched-off components, once everything wanted is in place.
            let orphans = async {
                let deployments: Vec<&str> = [
                    Some(gw.as_str()),
                    riva_deployment.as_ref().map(|_| riva.as_str()),
                ]
                .into_iter()
                .flatten()
                .collect();
                let both = [gw.as_str(), riva.as_str()];
                a.delete_orphans(&s.deployments, ns, &v.name, &both, &deployments)
                    .await?;
                a.delete_orphans(&s.services, ns, &v.name, &both, &deployments)
                    .await?;
                let pdbs: Vec<&str> = gateway_pdb
                    .as_ref()
                    .map(|_| gw.as_str())
                    .into_iter()
                    .collect();
                a.delete_orphans(&s.pdbs, ns, &v.name, &[gw.as_str()], &pdbs)
                    .await
            };
            error = orphans.await.err();
        }
        (gateway_rollout, riva_rollout, pending, error)
    };

    // Monitoring: only the kinds the API server serves.
    let mon = &ctx.monitoring;
    let sm_served = mon.service_monitors.load(Ordering::Relaxed);
    let pr_served = mon.prometheus_rules.load(Ordering::Relaxed);
    let want_sm = gateway_service_monitor.is_some() || riva_service_monitor.is_some();
    let want_pr = prometheus_rule.is_some();
    let missing: Vec<&str> = [
        (want_sm && !sm_served, "ServiceMonitor"),
        (want_pr && !pr_served, "PrometheusRule"),
    ]
    .into_iter()
    .filter_map(|(m, k)| m.then_some(k))
    .collect();
    let monitoring = async {
        let sms = async {
            if !sm_served {
                return Ok(());
            }
            let wanted: Vec<&ServiceMonitor> = [&gateway_service_monitor, &riva_service_monitor]
                .into_iter()
                .flatten()
                .collect();
            let results = futures::future::join_all(
                wanted
                    .iter()
                    .map(|sm| a.ensure(*sm, "monitoring", Some(&s.service_monitors))),
            )
            .await;
            for r in results {
                r?;
            }
            let keep: Vec<String> = wanted.iter().map(|sm| sm.name_any()).collect();
            let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
            a.delete_orphans(
                &s.service_monitors,
                ns,
                &v.name,
                &[gw.as_str(), riva.as_str()],
                &keep,
            )
            .await
        };
        let prs = async {
            if !pr_served {
                return Ok(());
            }
            let mut keep = vec![];
            if let Some(pr) = &prometheus_rule {
                a.ensure(pr, "monitoring", Some(&s.prometheus_rules))
                    .await?;
                keep.push(pr.name_any());
            }
            let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
            a.delete_orphans(&s.prometheus_rules, ns, &v.name, &[alerts.as_str()], &keep)
                .await
        };
        let (sm, pr) = futures::join!(sms, prs);
        sm.and(pr)
    };

    // Dashboards (maybe in another namespace) and the ConfigMaps' orphans.
    // Once the dashboard is in place under its name, the one under its old name goes, if the
    // cache holds it as this pipeline's: the old name is `<ns>-<name>`, so with this pipeline's
    // name in its instance label it is this pipeline's, not a neighbour's of the same old name.
    // (Without a cache, a move or the finalizer removes it.)
    let dashboards = async {
        let legacy = legacy_dashboard_name(ns, &v.name);
        let mut keep = vec![gw.as_str()];
        let mut placed = None;
        if let Some(d) = &dashboard {
            let dns = d.namespace().unwrap_or_default();
            let cache = s.config_maps_of(&dns, ns);
            a.ensure(d, "dashboards", cache).await?;
            if dns == ns {
                keep.push(dash_name.as_str());
            } else if let Some(cache) = cache {
                a.delete_orphans(cache, &dns, &v.name, &[legacy.as_str()], &[])
                    .await?;
            }
            placed = Some(dns);
        }
        a.delete_orphans(
            &s.config_maps,
            ns,
            &v.name,
            &[gw.as_str(), dash_name.as_str(), legacy.as_str()],
            &keep,
        )
        .await?;
        Ok::<_, ApplyError>(placed)
    };

    let (core, monitoring, dashboards) = futures::join!(core, monitoring, dashboards);
    let mut obs = Observed {
        gateway: None,
        riva: None,
        monitoring: Outcome::Applied,
        dashboards: Outcome::Disabled,
        error: None,
        aux_error: None,
        dashboards_namespace: None,
        services_pending: vec![],
    };
    let (gateway, riva, pending, core_error) = core;
    obs.gateway = gateway;
    obs.riva = riva;
    obs.services_pending = pending;
    obs.error = core_error.as_ref().map(pass_error);
    obs.monitoring = match monitoring {
        Err(e) if e.is_not_found() => {
            // The CRD went away since discovery looked: say so; discovery looks again.
            mon.service_monitors.store(false, Ordering::Relaxed);
            mon.prometheus_rules.store(false, Ordering::Relaxed);
            Outcome::CrdsMissing("ServiceMonitor, PrometheusRule".into())
        }
        Err(e) => {
            let out = Outcome::Failed(e.to_string());
            obs.aux_error.get_or_insert(pass_error(&e));
            out
        }
        Ok(()) if !missing.is_empty() => Outcome::CrdsMissing(missing.join(", ")),
        Ok(()) if !want_sm && !want_pr => Outcome::Disabled,
        Ok(()) => Outcome::Applied,
    };
    obs.dashboards = match dashboards {
        Err(e) => {
            let out = Outcome::Failed(e.to_string());
            obs.aux_error.get_or_insert(pass_error(&e));
            out
        }
        Ok(Some(dns)) => {
            obs.dashboards_namespace = Some(dns);
            Outcome::Applied
        }
        Ok(None) => Outcome::Disabled,
    };
    obs
}

/// How long a status we wrote is trusted over the watch cache's copy.
const WRITTEN_TRUST: Duration = Duration::from_secs(30);

fn recently_written(ctx: &Context, vp: &VoicePipeline) -> Option<VoicePipelineStatus> {
    // Trusted only while it is for this generation and young: anything older, the cache has.
    last_written(ctx, vp).filter(|st| st.observed_generation == vp.metadata.generation)
}

/// The status this process last wrote for `vp`, while young: the cache may not have it yet.
fn last_written(ctx: &Context, vp: &VoicePipeline) -> Option<VoicePipelineStatus> {
    let uid = vp.uid()?;
    let w = ctx.written.lock().expect("not poisoned");
    let (st, at) = w.get(&uid)?;
    (at.elapsed() < WRITTEN_TRUST).then(|| st.clone())
}

async fn write_status(
    vp: &VoicePipeline,
    ctx: &Context,
    api: &Api<VoicePipeline>,
    new: &VoicePipelineStatus,
) -> Result<(), ReconcileError> {
    if vp.status.as_ref() == Some(new) {
        return Ok(());
    }
    tracing::debug!(
        namespace = ?vp.namespace(),
        name = %vp.name_any(),
        old = ?vp.status.as_ref().map(|s| s.conditions.iter().map(|c| format!("{}={}:{}", c.type_, c.status, c.reason)).collect::<Vec<_>>()),
        new = ?new.conditions.iter().map(|c| format!("{}={}:{}", c.type_, c.status, c.reason)).collect::<Vec<_>>(),
        "status changed"
    );
    let patch = json!({
        "apiVersion": VoicePipeline::api_version(&()),
        "kind": VoicePipeline::kind(&()),
        "status": new,
    });
    api.patch_status(
        &vp.name_any(),
        &PatchParams::apply(&manager("status")).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| ReconcileError::Pipeline {
        what: "status",
        namespace: vp.namespace().unwrap_or_default(),
        name: vp.name_any(),
        source,
    })?;
    ctx.metrics.write("VoicePipeline", "status");
    if let Some(uid) = vp.uid() {
        let mut w = ctx.written.lock().expect("not poisoned");
        w.retain(|_, (_, at)| at.elapsed() < WRITTEN_TRUST);
        w.insert(uid, (new.clone(), Instant::now()));
    }
    Ok(())
}

async fn stall_invalid(
    vp: &VoicePipeline,
    ctx: &Context,
    api: &Api<VoicePipeline>,
    e: &ValidateError,
) -> Result<Pass, ReconcileError> {
    let msg = format!("invalid spec: {e}");
    tracing::warn!(namespace = ?vp.namespace(), name = %vp.name_any(), error = %e, "invalid VoicePipeline");
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let new = status::invalid(vp.metadata.generation, vp.status.as_ref(), &msg, &now);
    if vp.status.as_ref() != Some(&new) {
        publish(ctx, vp, EventType::Warning, "InvalidSpec", &msg).await;
        ctx.metrics.error("InvalidSpec");
    }
    write_status(vp, ctx, api, &new).await?;
    Ok(Pass::Done)
}

async fn set_finalizer(
    vp: &VoicePipeline,
    ctx: &Context,
    api: &Api<VoicePipeline>,
    present: bool,
) -> Result<(), ReconcileError> {
    let mut finalizers: Vec<String> = vp
        .finalizers()
        .iter()
        .filter(|f| *f != DASHBOARD_FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(DASHBOARD_FINALIZER.into());
    }
    // resourceVersion makes this a compare-and-swap: no finalizer of someone else is lost.
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": vp.resource_version()}});
    api.patch(
        &vp.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|source| ReconcileError::Pipeline {
        what: "finalizers",
        namespace: vp.namespace().unwrap_or_default(),
        name: vp.name_any(),
        source,
    })?;
    ctx.metrics.write("VoicePipeline", "finalizer");
    Ok(())
}

/// On delete: owner references let the garbage collector remove the children in the
/// namespace; the dashboards elsewhere are removed here before the finalizer goes.
async fn finalize(
    vp: &VoicePipeline,
    ctx: &Context,
    api: &Api<VoicePipeline>,
) -> Result<Pass, ReconcileError> {
    if !vp.finalizers().iter().any(|f| f == DASHBOARD_FINALIZER) {
        return Ok(Pass::Done);
    }
    let pipeline_ns = vp.namespace().unwrap_or_default();
    let name = dashboard_name(&pipeline_ns, &vp.name_any());
    let placed = foreign_dashboards(ctx, vp);
    let mut namespaces: Vec<String> = vp
        .spec
        .observability
        .dashboards
        .namespace
        .iter()
        .cloned()
        .collect();
    namespaces.extend(placed.iter().cloned());
    namespaces.sort();
    namespaces.dedup();
    for ns in namespaces {
        let removed = async {
            ctx.applier.delete::<ConfigMap>(&ns, &name).await?;
            remove_legacy_dashboard(ctx, &ns, &pipeline_ns, &vp.name_any()).await
        };
        match removed.await {
            Ok(()) => {}
            // A namespace the status never placed the dashboard in, and where the operator may
            // not delete: it could not create it there either (e.g. a dashboards namespace
            // outside the chart's `dashboardNamespaces`). Nothing of ours to remove, and the
            // pipeline must not hang in deletion for it.
            Err(e) if e.code() == Some(403) && !placed.contains(&ns) => {
                tracing::info!(namespace = %ns, name = %name, "no dashboard to remove where the operator may not delete");
            }
            Err(e) => {
                publish(
                    ctx,
                    vp,
                    EventType::Warning,
                    e.reason(),
                    &format!("cannot remove the dashboard: {e}"),
                )
                .await;
                return Err(e.into());
            }
        }
    }
    set_finalizer(vp, ctx, api, false).await?;
    Ok(Pass::Done)
}

/// Removes the dashboard that `dns` holds under its old name ([`legacy_dashboard_name`]) when
/// it is labelled as this pipeline's: another pipeline's may have had the same name. Asks the
/// API server: for the finalizer (a pipeline deleted right after an upgrade may go before the
/// cache of `dns` has listed) and for a move (the namespace left may have no cache).
async fn remove_legacy_dashboard(
    ctx: &Context,
    dns: &str,
    pipeline_ns: &str,
    pipeline: &str,
) -> Result<(), ApplyError> {
    let legacy = legacy_dashboard_name(pipeline_ns, pipeline);
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), dns);
    // A list of one name: the operator's RBAC has `list` on ConfigMaps, not `get`.
    let found = api
        .list_metadata(&ListParams::default().fields(&format!("metadata.name={legacy}")))
        .await
        .map_err(|source| ApplyError::Api {
            verb: "list",
            kind: "ConfigMap".into(),
            namespace: dns.into(),
            name: legacy.clone(),
            source,
        })?;
    if found
        .items
        .iter()
        .any(|cm| belongs_to(cm, pipeline_ns, pipeline))
    {
        ctx.applier.delete::<ConfigMap>(dns, &legacy).await?;
    }
    Ok(())
}

async fn publish(ctx: &Context, vp: &VoicePipeline, type_: EventType, reason: &str, note: &str) {
    if let Some(uid) = vp.uid() {
        let mut ev = ctx.events.lock().expect("not poisoned");
        if let Some((last, at)) = ev.get(&uid)
            && last == reason
            && at.elapsed() < EVENT_REPEAT
        {
            return;
        }
        ev.retain(|_, (_, at)| at.elapsed() < EVENT_REPEAT);
        ev.insert(uid, (reason.to_string(), Instant::now()));
    }
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(note, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    match ctx.recorder.publish(&ev, &vp.object_ref(&())).await {
        Ok(()) => ctx.metrics.write("Event", "create"),
        Err(e) => tracing::warn!(error = %e, "cannot publish event"),
    }
}

fn error_policy(
    guard: Arc<DeserializeGuard<VoicePipeline>>,
    err: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    tracing::warn!(object = ?ObjectRef::from_obj(guard.as_ref()), error = %err, "reconcile failed");
    ctx.metrics.error(err.reason());
    // Told to the pipeline's owner too: the status write may be what failed.
    if let Ok(vp) = &guard.0 {
        let (ctx, vp, reason, note) = (ctx.clone(), vp.clone(), err.reason(), err.to_string());
        tokio::spawn(async move { publish(&ctx, &vp, EventType::Warning, reason, &note).await });
    }
    ctx.backoff
        .after(&ObjectRef::from_obj(guard.as_ref()), Pass::Retry)
}

// === watches ===

/// Watch of kind `K` in `ns` (all when `None`) with the operator's label, reflected into a
/// store after [`Trim::trim`], yielding touched objects (deletes included: a deleted child is
/// recreated); each event is shown to the applier ([`Applier::observe`]) once the store has it.
fn reflect<K>(
    client: &Client,
    ns: Option<&str>,
    applier: &Arc<Applier>,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Trim
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    let wc = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={OPERATOR}"));
    let applier = applier.clone();
    let stream = watcher(api, wc)
        .default_backoff()
        .modify(|o: &mut K| o.trim())
        .reflect(writer)
        // After the cache took the event: the applier's own writes count as delivered.
        .inspect(move |event| {
            if let Ok(event) = event {
                applier.observe(event);
            }
        })
        .touched_objects();
    (reader, stream)
}

/// What the watch caches keep of an object: only what the operator reads.
///
/// The applier reads metadata (fingerprints, orphans by label) and the status step reads a
/// Deployment's replicas and status; nothing reads a cached child's data or spec, since the
/// desired object is always built afresh. Managed fields go everywhere. With 1,000 pipelines
/// the dashboards' JSON (~19 kB each) and the alert rules (~6 kB each) were most of the
/// operator's memory. Drift detection is unaffected: any edit of data or spec changes the
/// resourceVersion or generation, which [`crate::apply`]'s fingerprint reads.
trait Trim: Resource {
    /// Drops what is never read; managed fields always.
    fn trim(&mut self) {
        self.meta_mut().managed_fields = None;
        self.trim_body();
    }
    /// Drops the kind's bulky body.
    fn trim_body(&mut self);
}

impl Trim for Deployment {
    fn trim_body(&mut self) {
        if let Some(spec) = &mut self.spec {
            *spec = k8s_openapi::api::apps::v1::DeploymentSpec {
                replicas: spec.replicas,
                ..Default::default()
            };
        }
    }
}

impl Trim for ConfigMap {
    fn trim_body(&mut self) {
        self.data = None;
        self.binary_data = None;
    }
}

impl Trim for Service {
    fn trim_body(&mut self) {
        self.spec = None;
        self.status = None;
    }
}

impl Trim for PodDisruptionBudget {
    fn trim_body(&mut self) {
        self.spec = None;
        self.status = None;
    }
}

impl Trim for ServiceMonitor {
    fn trim_body(&mut self) {
        self.spec = Default::default();
    }
}

impl Trim for PrometheusRule {
    fn trim_body(&mut self) {
        self.spec = Default::default();
    }
}

impl Trim for DeserializeGuard<VoicePipeline> {
    /// Spec and status are read: only managed fields go.
    fn trim_body(&mut self) {}
}

/// Like [`reflect`], but the watch starts only once `served` says the kind is served.
fn reflect_when_served<K>(
    client: &Client,
    ns: Option<&str>,
    applier: &Arc<Applier>,
    mut served: tokio::sync::watch::Receiver<bool>,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Trim
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, stream) = reflect::<K>(client, ns, applier);
    let gated = futures::stream::once(async move {
        let _ = served.wait_for(|s| *s).await;
        stream
    })
    .flatten();
    (reader, gated)
}

/// What of a pipeline asks for a reconcile: its spec (generation), its deletion, finalizers,
/// labels and annotations. Not its status: every status write of the operator's own came back
/// as an event and reconciled the pipeline once more, for nothing (1,000 pipelines: about 3 of
/// their 7.7 reconciles each). A child's event, a failed pass's backoff and a Service create
/// still reconcile it as before.
fn pipeline_changed(g: &DeserializeGuard<VoicePipeline>) -> Option<u64> {
    let m = g.meta();
    Some(hash_of(&(
        m.generation,
        m.deletion_timestamp.is_some(),
        &m.finalizers,
        &m.labels,
        &m.annotations,
    )))
}

/// Drives a dashboard namespace's watch (which fills its cache) and hands each touched
/// dashboard to the controller of its pipeline's namespace; dashboards of pipelines this
/// operator does not watch are dropped.
async fn route_dashboards(
    stream: impl Stream<Item = Result<ConfigMap, watcher::Error>>,
    routes: Vec<(
        Option<String>,
        tokio::sync::mpsc::UnboundedSender<ConfigMap>,
    )>,
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        let cm = match item {
            Ok(cm) => cm,
            Err(e) => {
                tracing::warn!(error = %e, "dashboard watch");
                continue;
            }
        };
        let Some(pipeline_ns) = owner_of(&cm).and_then(|r| r.namespace) else {
            continue;
        };
        if let Some((_, tx)) = routes
            .iter()
            .find(|(scope, _)| scope.as_ref().is_none_or(|s| *s == pipeline_ns))
        {
            let _ = tx.send(cm);
        }
    }
}

// === discovery of the monitoring CRDs ===

async fn poll_monitoring_kinds(
    client: Client,
    kinds: Arc<MonitoringKinds>,
    interval: Duration,
    sm_tx: tokio::sync::watch::Sender<bool>,
    pr_tx: tokio::sync::watch::Sender<bool>,
    reconcile_all: tokio::sync::mpsc::UnboundedSender<()>,
) {
    loop {
        let (sm, pr) = match client
            .list_api_group_resources("monitoring.coreos.com/v1")
            .await
        {
            Ok(list) => (
                list.resources.iter().any(|r| r.name == "servicemonitors"),
                list.resources.iter().any(|r| r.name == "prometheusrules"),
            ),
            Err(kube::Error::Api(s)) if s.code == 404 => (false, false),
            Err(e) => {
                tracing::warn!(error = %e, "discovery of monitoring.coreos.com failed");
                // Passes go on without it (monitoring taken for absent) rather than wait.
                kinds.discovered.store(true, Ordering::Release);
                tokio::time::sleep(interval).await;
                continue;
            }
        };
        let before = (
            kinds.service_monitors.load(Ordering::Relaxed),
            kinds.prometheus_rules.load(Ordering::Relaxed),
        );
        kinds.service_monitors.store(sm, Ordering::Relaxed);
        kinds.prometheus_rules.store(pr, Ordering::Relaxed);
        kinds.discovered.store(true, Ordering::Release);
        sm_tx.send_if_modified(|v| std::mem::replace(v, sm) != sm);
        pr_tx.send_if_modified(|v| std::mem::replace(v, pr) != pr);
        if before != (sm, pr) {
            tracing::info!(
                service_monitors = sm,
                prometheus_rules = pr,
                "monitoring.coreos.com kinds changed"
            );
            let _ = reconcile_all.send(());
        }
        tokio::time::sleep(interval).await;
    }
}

// === run ===

/// Runs the operator until `shutdown` resolves (or leadership is lost).
pub async fn run(
    cfg: RunConfig,
    client: Client,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = admin::bind(cfg.admin_addr).await?;
    run_on(listener, cfg, client, shutdown).await
}

/// [`run`] with the admin endpoints on an already bound `listener` (tests learn its port).
pub async fn run_on(
    listener: tokio::net::TcpListener,
    cfg: RunConfig,
    client: Client,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let health = Arc::new(Health::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tracing::info!(addr = %listener.local_addr()?, "admin endpoints /metrics /livez /readyz");
    let admin_stop = wait_stop(stop_rx.clone());
    let admin_task = tokio::spawn(admin::serve(listener, registry, health.clone(), admin_stop));
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: finishing reconciles in flight");
            let _ = stop_tx.send(true);
        });
    }

    let elector = cfg.leader_election.as_ref().map(|le| {
        Elector::new(
            client.clone(),
            &le.namespace,
            &le.name,
            &le.identity,
            le.lease_duration,
        )
    });
    // The task renewing the Lease: stopped before the Lease is released on shutdown, or its
    // next renewal would take the freed Lease again and keep the standby waiting.
    let mut hold_task = None;
    if let Some(e) = &elector {
        health.standby.store(true, Ordering::Relaxed);
        tracing::info!("waiting for the leader Lease");
        let acquired = tokio::select! {
            at = e.acquire() => at,
            () = wait_stop(stop_rx.clone()) => {
                health.stopped.store(true, Ordering::Relaxed);
                let _ = admin_task.await;
                return Ok(());
            }
        };
        health.standby.store(false, Ordering::Relaxed);
        metrics.leader.set(1);
        tracing::info!("leading");
        let e = e.clone();
        let stop_tx = stop_tx.clone();
        hold_task = Some(tokio::spawn(async move {
            e.hold(acquired).await;
            let _ = stop_tx.send(true);
        }));
    } else {
        // Without leader election this replica leads by configuration (one replica).
        metrics.leader.set(1);
    }

    let reporter = Reporter {
        controller: OPERATOR.into(),
        instance: cfg.instance.clone(),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let applier = Arc::new(Applier::new(client.clone(), metrics.clone()));
    let service_creates = Arc::new(tokio::sync::Semaphore::new(SERVICE_CREATES));
    let kinds = Arc::new(MonitoringKinds::default());
    let (sm_tx, sm_rx) = tokio::sync::watch::channel(false);
    let (pr_tx, pr_rx) = tokio::sync::watch::channel(false);

    let scopes: Vec<Option<String>> = if cfg.namespaces.is_empty() {
        vec![None]
    } else {
        cfg.namespaces.iter().cloned().map(Some).collect()
    };
    // Dashboard namespaces: one watch each, shared by the controllers; a touched dashboard is
    // routed to the controller of its pipeline's namespace. Also for a dashboard namespace that
    // is watched for pipelines: that namespace's own ConfigMap watch hands a dashboard's events
    // to its own controller, which does not hold the pipeline.
    let mut dashboard_stores = HashMap::new();
    let mut dashboard_streams = vec![];
    if !cfg.namespaces.is_empty() {
        for dns in &cfg.dashboard_namespaces {
            if dashboard_stores.contains_key(dns) {
                continue;
            }
            let (store, stream) = reflect::<ConfigMap>(&client, Some(dns), &applier);
            dashboard_stores.insert(dns.clone(), store);
            dashboard_streams.push(stream);
        }
    }
    let dashboard_stores = Arc::new(dashboard_stores);
    let mut dashboard_routes: Vec<(
        Option<String>,
        tokio::sync::mpsc::UnboundedSender<ConfigMap>,
    )> = vec![];
    let mut reconcile_all_txs = vec![];
    let mut controllers = vec![];
    let synced_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut pipeline_stores = vec![];
    for scope in scopes {
        let ns = scope.as_deref();
        let (deployments, dep_stream) = reflect::<Deployment>(&client, ns, &applier);
        let (services, svc_stream) = reflect::<Service>(&client, ns, &applier);
        let (service_lane, service_retries) = ServiceLane::new(
            apply_service(&applier, &services),
            service_creates.clone(),
            services.clone(),
        );
        let service_lane = Arc::new(service_lane);
        let svc_stream = {
            let lane = service_lane.clone();
            svc_stream.inspect(move |event| {
                if let Ok(svc) = event {
                    lane.seen(svc);
                }
            })
        };
        let (pdbs, pdb_stream) = reflect::<PodDisruptionBudget>(&client, ns, &applier);
        let (config_maps, cm_stream) = reflect::<ConfigMap>(&client, ns, &applier);
        let (service_monitors, sm_stream) =
            reflect_when_served::<ServiceMonitor>(&client, ns, &applier, sm_rx.clone());
        let (prometheus_rules, pr_stream) =
            reflect_when_served::<PrometheusRule>(&client, ns, &applier, pr_rx.clone());
        let stores = Stores {
            deployments,
            services,
            pdbs,
            config_maps,
            service_monitors,
            prometheus_rules,
            all_namespaces: ns.is_none(),
            dashboards: dashboard_stores.clone(),
        };
        let backoff = Arc::new(Backoff::default());
        let pod_problems = Arc::new(PodProblems::default());
        let sync = Arc::new(SyncGate::new());
        let pod_stream = pods::watch(&client, ns, pod_problems.clone());
        let ctx = Arc::new(Context {
            client: client.clone(),
            recorder: recorder.clone(),
            metrics: metrics.clone(),
            applier: applier.clone(),
            service_lane: service_lane.clone(),
            stores: stores.clone(),
            monitoring: kinds.clone(),
            pod_problems,
            sync: sync.clone(),
            backoff: backoff.clone(),
            written: Default::default(),
            events: Default::default(),
        });
        let api: Api<DeserializeGuard<VoicePipeline>> = match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let (dash_tx, mut dash_rx) = tokio::sync::mpsc::unbounded_channel::<ConfigMap>();
        dashboard_routes.push((scope.clone(), dash_tx));
        let dash_stream =
            futures::stream::poll_fn(move |cx| dash_rx.poll_recv(cx)).map(Ok::<_, watcher::Error>);
        let (all_tx, mut all_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        reconcile_all_txs.push(all_tx);
        let all_stream = futures::stream::poll_fn(move |cx| all_rx.poll_recv(cx));
        let (pipelines, pipelines_writer) = reflector::store();
        let pipeline_stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|g: &mut DeserializeGuard<VoicePipeline>| g.trim())
            .reflect(pipelines_writer)
            .applied_objects()
            .predicate_filter(pipeline_changed, PredicateConfig::default());
        let controller = Controller::for_stream(pipeline_stream, pipelines)
            .with_config(ControllerConfig::default().concurrency(cfg.concurrency))
            .watches_stream(dep_stream, |o| owner_of(&o))
            .watches_stream(svc_stream, |o| owner_of(&o))
            .watches_stream(pdb_stream, |o| owner_of(&o))
            .watches_stream(cm_stream, |o| owner_of(&o))
            .watches_stream(sm_stream, |o| owner_of(&o))
            .watches_stream(pr_stream, |o| owner_of(&o))
            .watches_stream(dash_stream, |o| owner_of(&o))
            .reconcile_all_on(all_stream)
            .reconcile_on(service_retries)
            .reconcile_on(pod_stream)
            .graceful_shutdown_on(wait_stop(stop_rx.clone()));
        let store = controller.store();
        // Ready once the pipeline watch and the core child caches have listed once.
        {
            let health = health.clone();
            let synced_count = synced_count.clone();
            let stores = stores.clone();
            let total = if cfg.namespaces.is_empty() {
                1
            } else {
                cfg.namespaces.len()
            };
            pipeline_stores.push(store.clone());
            tokio::spawn(async move {
                until_ready(&store).await;
                until_ready(&stores.deployments).await;
                until_ready(&stores.services).await;
                until_ready(&stores.config_maps).await;
                until_ready(&stores.pdbs).await;
                sync.children_listed.store(true, Ordering::Release);
                if synced_count.fetch_add(1, Ordering::SeqCst) + 1 == total {
                    health.synced.store(true, Ordering::Relaxed);
                    tracing::info!("watches synced");
                }
            });
        }
        controllers.push(
            controller
                .run(reconcile, error_policy, ctx)
                .for_each(move |res| {
                    let lane = service_lane.clone();
                    let backoff = backoff.clone();
                    async move {
                        match res {
                            Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
                            Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {} // logged by error_policy
                            // A child's event after its pipeline was deleted (garbage collection):
                            // nothing to do but forget its Service creates and failures.
                            Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                                lane.forget(obj.namespace.as_deref(), &obj.name);
                                backoff.forget(obj.namespace.as_deref(), &obj.name);
                                tracing::debug!(object = %obj, "pipeline gone; child event ignored")
                            }
                            Err(e) => tracing::warn!(error = %e, "controller"),
                        }
                    }
                }),
        );
    }
    let dashboard_tasks: Vec<_> = dashboard_streams
        .into_iter()
        .map(|stream| {
            let routes = dashboard_routes.clone();
            tokio::spawn(route_dashboards(stream, routes))
        })
        .collect();
    drop(dashboard_routes);
    // The pipeline gauges, over every watched namespace.
    let gauges = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            loop {
                let all: Vec<_> = pipeline_stores.iter().flat_map(Store::state).collect();
                metrics.set_pipelines(all.iter().map(|g| g.0.as_ref().ok()?.status.as_ref()));
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    };
    let fan_out = {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            let mut rx = rx;
            while rx.recv().await.is_some() {
                for t in &reconcile_all_txs {
                    let _ = t.send(());
                }
            }
        });
        tx
    };
    let poller = tokio::spawn(poll_monitoring_kinds(
        client.clone(),
        kinds.clone(),
        cfg.crd_poll_interval,
        sm_tx,
        pr_tx,
        fan_out,
    ));

    futures::future::join_all(controllers).await;
    poller.abort();
    gauges.abort();
    for t in dashboard_tasks {
        t.abort();
    }
    metrics.set_pipelines([]);
    health.stopped.store(true, Ordering::Relaxed);
    metrics.leader.set(0);
    let lost = !*stop_rx.borrow();
    if let Some(task) = hold_task {
        task.abort();
    }
    if let Some(e) = &elector {
        e.release().await;
    }
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    tracing::info!("stopped");
    if lost {
        anyhow::bail!("controller stopped unexpectedly");
    }
    Ok(())
}

/// How the [`ServiceLane`]s apply a Service: through `applier`, against the watch cache
/// `services` (with no cache the applier would trust its memory and skip re-creating a
/// Service someone deleted).
fn apply_service(applier: &Arc<Applier>, services: &Store<Service>) -> ApplyService {
    let (applier, services) = (applier.clone(), services.clone());
    Arc::new(move |svc, scope| {
        let (applier, services) = (applier.clone(), services.clone());
        Box::pin(async move { applier.ensure(&svc, scope, Some(&services)).await })
    })
}

/// Waits until `store` has listed once. Polls again and again: the store's readiness signal
/// wakes only the last task that polled it, and the controller itself waits on it too.
async fn until_ready<K>(store: &Store<K>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    while tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready())
        .await
        .is_err()
    {}
}

async fn wait_stop(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use kube::core::DeserializeGuard;
    use voice_types::{VoicePipeline, VoicePipelineStatus};

    use super::{pipeline_changed, placed_elsewhere};

    fn placed(ns: &str) -> VoicePipelineStatus {
        VoicePipelineStatus {
            dashboards_namespace: Some(ns.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_dashboard_may_be_where_either_status_placed_it() {
        // The cache lags the last write: the dashboard moved from `one` to `two`.
        let (written, cached) = (placed("two"), placed("one"));
        assert_eq!(
            placed_elsewhere("home", [Some(&written), Some(&cached)]),
            ["two", "one"]
        );
        assert_eq!(
            placed_elsewhere("home", [Some(&written), Some(&written)]),
            ["two"]
        );
        // In the pipeline's namespace, owner references remove it.
        assert!(placed_elsewhere("two", [Some(&written), None]).is_empty());
        assert!(placed_elsewhere("home", [None, Some(&VoicePipelineStatus::default())]).is_empty());
    }

    fn guard(generation: i64) -> DeserializeGuard<VoicePipeline> {
        let vp: VoicePipeline = serde_json::from_value(serde_json::json!({
            "apiVersion": "voice.workflow.io/v1alpha1", "kind": "VoicePipeline",
            "metadata": {"name": "p", "namespace": "ns", "generation": generation, "resourceVersion": "1"},
            "spec": {"llm": {"url": "http://llm:8000/v1"}, "riva": {"external": {"uri": "riva:50051"}}},
        }))
        .expect("a pipeline");
        DeserializeGuard(Ok(vp))
    }

    #[test]
    fn only_spec_and_metadata_changes_of_a_pipeline_reconcile_it() {
        let base = pipeline_changed(&guard(1));
        // Our own status write comes back with a new resourceVersion and status: no pass.
        let mut written = guard(1);
        let vp = written.0.as_mut().expect("valid");
        vp.metadata.resource_version = Some("2".into());
        vp.status = Some(VoicePipelineStatus {
            observed_generation: Some(1),
            ..Default::default()
        });
        assert_eq!(pipeline_changed(&written), base);
        // A spec change, a deletion, a finalizer, a label do.
        let mut changed = vec![guard(2)];
        let mut deleting = guard(1);
        deleting
            .0
            .as_mut()
            .expect("valid")
            .metadata
            .deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Default::default(),
        ));
        changed.push(deleting);
        let mut finalized = guard(1);
        finalized.0.as_mut().expect("valid").metadata.finalizers = Some(vec!["f".into()]);
        changed.push(finalized);
        let mut labelled = guard(1);
        labelled.0.as_mut().expect("valid").metadata.labels =
            Some([("team".to_string(), "voice".to_string())].into());
        changed.push(labelled);
        for g in &changed {
            assert_ne!(
                pipeline_changed(g),
                base,
                "{:?}",
                g.0.as_ref().map(|v| &v.metadata)
            );
        }
    }
}
