//! The status step, pure: what was observed this pass → the pipeline's `status`.
//!
//! kstatus rules, as Flux and `kubectl wait` read them:
//! - `Ready=True` only when the gateway (and a managed Riva) are available at the current
//!   generation and the last pass had no error;
//! - `Stalled=True` when progress needs a person: a spec the operator cannot build, a
//!   permanent API error (invalid, forbidden), or a rollout past its progress deadline;
//! - `Reconciling=True` otherwise while not ready (rolling out, retrying).
//!
//! Monitoring and dashboards do not gate `Ready`: without the Prometheus Operator's CRDs the
//! pipeline still serves calls; `MonitoringConfigured=False` says why nothing scrapes it.
//! `lastTransitionTime` is carried over from the old condition unless `status` changes, so a
//! pass that observes nothing new computes an equal status and writes nothing.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use voice_types::{
    CONDITION_DASHBOARDS, CONDITION_GATEWAY, CONDITION_MONITORING, CONDITION_READY,
    CONDITION_RECONCILING, CONDITION_RIVA, CONDITION_STALLED, GatewayStatus, RivaStatus,
    VoicePipelineStatus,
};

use crate::model::Validated;
use crate::pods::{self, PodProblem};

/// Rollout state of a Deployment as read from its status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Desired replicas.
    pub desired: i32,
    /// Ready replicas.
    pub ready: i32,
    /// All replicas, old template included (more than desired while a rollout surges).
    pub total: i32,
    /// Replicas with the current template.
    pub updated: i32,
    /// Available replicas.
    pub available: i32,
    /// The Deployment controller has seen the current spec.
    pub observed: bool,
    /// `Progressing=False` with reason `ProgressDeadlineExceeded`, of the current spec: a status
    /// the Deployment controller wrote before the spec changed (an apply's response to a fixed
    /// image) says nothing of the new rollout.
    pub deadline_exceeded: bool,
    /// Message of the failing condition, if any.
    pub failure: Option<String>,
    /// Why a pod of this Deployment does not start, if one does not ([`crate::pods`]).
    pub pod_problem: Option<PodProblem>,
}

impl Rollout {
    /// A rollout the Deployment controller has finished: all `desired` replicas on the current
    /// template, `available` of them ready and available, no failure. (What the status tests,
    /// the Argo CD health test and the status-write benchmark start from.)
    pub fn settled(desired: i32, available: i32) -> Self {
        Self {
            desired,
            ready: available,
            total: desired,
            updated: desired,
            available,
            observed: true,
            deadline_exceeded: false,
            failure: None,
            pod_problem: None,
        }
    }

    /// Reads a Deployment's status.
    pub fn of(d: &Deployment) -> Self {
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let st = d.status.clone().unwrap_or_default();
        let observed =
            st.observed_generation.is_some() && st.observed_generation >= d.metadata.generation;
        let progressing = st
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Progressing");
        let deadline_exceeded = observed
            && progressing.is_some_and(|c| {
                c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            });
        let failure = st
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
            .and_then(|c| c.message.clone())
            .or_else(|| {
                deadline_exceeded
                    .then(|| progressing.and_then(|c| c.message.clone()))
                    .flatten()
            });
        Self {
            desired,
            ready: st.ready_replicas.unwrap_or(0),
            total: st.replicas.unwrap_or(0),
            updated: st.updated_replicas.unwrap_or(0),
            available: st.available_replicas.unwrap_or(0),
            observed,
            deadline_exceeded,
            failure,
            pod_problem: None,
        }
    }

    /// Pods of an older template still run: a rolling update, whose progress is how many pods
    /// run the current template. (Not for a new Deployment, where the count only goes from 0 to
    /// all within milliseconds: saying so would cost the pipeline one more status write.)
    pub fn replacing(&self) -> bool {
        self.total > self.updated
    }

    /// Every desired pod runs the current template and is available.
    pub fn complete(&self) -> bool {
        // No old pod left either: what `kubectl rollout status` waits for.
        self.observed
            && self.updated >= self.desired
            && self.total <= self.updated
            && self.available >= self.desired
            && self.ready >= self.desired
    }
}

/// How applying an optional group of children went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied.
    Applied,
    /// Switched off in the spec (and deleted).
    Disabled,
    /// The kind is not served by the API server (CRDs missing); names the missing kinds.
    CrdsMissing(String),
    /// Failed: the error message.
    Failed(String),
}

/// An error of this pass, as it goes into the conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassError {
    /// CamelCase reason.
    pub reason: String,
    /// What went wrong and what to do.
    pub message: String,
    /// Needs a person (Stalled) rather than a retry (Reconciling).
    pub permanent: bool,
}

/// What the pass observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// Gateway Deployment, if applied.
    pub gateway: Option<Rollout>,
    /// Riva Deployment, if managed and applied.
    pub riva: Option<Rollout>,
    /// ServiceMonitors and PrometheusRule.
    pub monitoring: Outcome,
    /// Dashboard ConfigMap.
    pub dashboards: Outcome,
    /// First error of the pass applying the gateway or Riva: gates `Ready`.
    pub error: Option<PassError>,
    /// First error applying monitoring or dashboards: retried, reported in those components'
    /// conditions and in Events, but the pipeline still serves calls, so `Ready` ignores it.
    pub aux_error: Option<PassError>,
    /// Namespace the dashboard now lives in.
    pub dashboards_namespace: Option<String>,
    /// Services whose create is queued in the [`crate::service_lane::ServiceLane`]: not `Ready` yet.
    pub services_pending: Vec<String>,
}

impl Observed {
    /// A clean pass of a pipeline with an external Riva: `gateway` as observed, monitoring and
    /// the dashboard (in `dashboards_namespace`) applied, no error, no Service waiting.
    pub fn clean(gateway: Rollout, dashboards_namespace: &str) -> Self {
        Self {
            gateway: Some(gateway),
            riva: None,
            monitoring: Outcome::Applied,
            dashboards: Outcome::Applied,
            error: None,
            aux_error: None,
            dashboards_namespace: Some(dashboards_namespace.into()),
            services_pending: vec![],
        }
    }
}

fn cond(type_: &str, ok: bool, reason: &str, message: impl Into<String>) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: None,
        last_transition_time: Time(Default::default()),
    }
}

fn rollout_condition(type_: &str, what: &str, r: Option<&Rollout>) -> Condition {
    match r {
        None => cond(
            type_,
            false,
            "NotApplied",
            format!("the {what} Deployment is not applied yet"),
        ),
        Some(r) if r.complete() => cond(
            type_,
            true,
            "Available",
            format!("{}/{} {what} pods available", r.available, r.desired),
        ),
        Some(r) if r.deadline_exceeded => cond(
            type_,
            false,
            "ProgressDeadlineExceeded",
            format!(
                "the {what} rollout stopped progressing: {}{}",
                r.failure
                    .as_deref()
                    .map_or("pods do not become available", |f| f.trim_end_matches('.')),
                match &r.pod_problem {
                    Some(p) => format!("; {}", p.message),
                    None => ". Check `kubectl describe deployment` and the pods' events".into(),
                }
            ),
        ),
        Some(r) => cond(
            type_,
            false,
            r.pod_problem
                .as_ref()
                .map_or("RollingOut", |p| p.reason.as_str()),
            format!(
                "{}/{} {what} pods available{}{}{}",
                r.available,
                r.desired,
                if r.replacing() {
                    format!(", {} updated", r.updated)
                } else {
                    String::new()
                },
                r.failure
                    .as_deref()
                    .map(|f| format!("; {f}"))
                    .unwrap_or_default(),
                r.pod_problem
                    .as_ref()
                    .map(|p| format!("; {}", p.message))
                    .unwrap_or_default()
            ),
        ),
    }
}

fn outcome_condition(type_: &str, what: &str, o: &Outcome) -> Condition {
    match o {
        Outcome::Applied => cond(type_, true, "Applied", format!("{what} applied")),
        Outcome::Disabled => cond(
            type_,
            true,
            "Disabled",
            format!("{what} disabled in the spec"),
        ),
        Outcome::CrdsMissing(kinds) => cond(
            type_,
            false,
            "CRDsNotInstalled",
            format!(
                "{kinds} not served by the API server: install the Prometheus Operator's CRDs (e.g. kube-prometheus-stack) or disable them in spec.observability; the operator applies them once the CRDs appear"
            ),
        ),
        Outcome::Failed(msg) => cond(type_, false, "ApplyFailed", format!("{what}: {msg}")),
    }
}

/// `s` cut to at most `max` bytes (on a character boundary), with "…" when cut: for
/// messages that come from elsewhere (the API server, the scheduler, a container's output).
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Computes the new status. `now` stamps conditions whose `status` changed.
pub fn compute(
    v: &Validated,
    old: Option<&VoicePipelineStatus>,
    obs: &Observed,
    now: &Time,
) -> VoicePipelineStatus {
    let gateway = rollout_condition(CONDITION_GATEWAY, "gateway", obs.gateway.as_ref());
    let riva = match &v.spec.riva.external {
        Some(ext) => cond(
            CONDITION_RIVA,
            true,
            "External",
            format!("using the external Riva at {}", ext.uri),
        ),
        None => rollout_condition(CONDITION_RIVA, "Riva", obs.riva.as_ref()),
    };
    let monitoring = outcome_condition(
        CONDITION_MONITORING,
        "ServiceMonitors and PrometheusRule",
        &obs.monitoring,
    );
    let dashboards =
        outcome_condition(CONDITION_DASHBOARDS, "dashboard ConfigMap", &obs.dashboards);

    let deadline = [obs.gateway.as_ref(), obs.riva.as_ref()]
        .into_iter()
        .flatten()
        .any(|r| r.deadline_exceeded);
    let stalled_cause: Option<(String, String)> = match &obs.error {
        Some(e) if e.permanent => Some((e.reason.clone(), e.message.clone())),
        _ if deadline => {
            let c = if gateway.reason == "ProgressDeadlineExceeded" {
                &gateway
            } else {
                &riva
            };
            Some((c.reason.clone(), c.message.clone()))
        }
        _ => None,
    };
    let ready_ok = obs.error.is_none()
        && obs.services_pending.is_empty()
        && gateway.status == "True"
        && riva.status == "True";
    let mut notes = vec![];
    if monitoring.status == "False" {
        notes.push(format!("monitoring not configured ({})", monitoring.reason));
    }
    if dashboards.status == "False" {
        notes.push(format!("dashboards not configured ({})", dashboards.reason));
    }
    let note = if notes.is_empty() {
        String::new()
    } else {
        format!("; {}", notes.join(", "))
    };
    let ready = if ready_ok {
        cond(
            CONDITION_READY,
            true,
            "Available",
            format!("the pipeline serves at {}{note}", v.gateway_endpoint()),
        )
    } else if let Some((reason, message)) = &stalled_cause {
        cond(CONDITION_READY, false, reason, message.clone())
    } else if let Some(e) = &obs.error {
        cond(
            CONDITION_READY,
            false,
            &e.reason,
            format!("{}; retrying", e.message),
        )
    } else if gateway.status == "True" && riva.status == "True" {
        cond(
            CONDITION_READY,
            false,
            "CreatingService",
            format!(
                "waiting for the API server to allocate a ClusterIP to Service {}",
                obs.services_pending.join(", ")
            ),
        )
    } else {
        // The gateway's, unless the gateway merely rolls out or waits for its backends while a
        // managed Riva is not available: then Riva's is the cause (loading its models, a pod
        // that cannot start).
        let gateway_waits = matches!(
            gateway.reason.as_str(),
            "RollingOut" | pods::WAITING_FOR_BACKENDS
        );
        let c = if gateway.status == "False" && (!gateway_waits || riva.status == "True") {
            &gateway
        } else {
            &riva
        };
        cond(CONDITION_READY, false, &c.reason, c.message.clone())
    };
    // Not stalled: either nothing is left to do (a ready pipeline), or the work goes on.
    let stalled = match &stalled_cause {
        Some((reason, message)) => cond(CONDITION_STALLED, true, reason, message.clone()),
        None if ready_ok => cond(
            CONDITION_STALLED,
            false,
            "Idle",
            "nothing blocks the pipeline",
        ),
        None => cond(
            CONDITION_STALLED,
            false,
            "Progressing",
            "the operator is making progress",
        ),
    };
    let reconciling = if ready_ok || stalled_cause.is_some() {
        cond(
            CONDITION_RECONCILING,
            false,
            "Idle",
            "nothing left to do until something changes",
        )
    } else {
        cond(
            CONDITION_RECONCILING,
            true,
            &ready.reason,
            ready.message.clone(),
        )
    };

    let mut conditions = vec![
        ready,
        reconciling,
        stalled,
        gateway,
        riva,
        monitoring,
        dashboards,
    ];
    for c in &mut conditions {
        c.observed_generation = v.generation;
        let prev = old.and_then(|o| o.condition(&c.type_));
        c.last_transition_time = match prev {
            Some(p) if p.status == c.status => p.last_transition_time.clone(),
            _ => now.clone(),
        };
    }
    let g = obs.gateway.clone().unwrap_or_default();
    let gateway_status = GatewayStatus {
        replicas: v.spec.gateway.replicas,
        ready_replicas: g.ready,
        ready: format!("{}/{}", g.ready, v.spec.gateway.replicas),
        endpoint: v.gateway_endpoint(),
    };
    let riva_status = match &v.spec.riva.managed {
        Some(m) => {
            let r = obs.riva.clone().unwrap_or_default();
            RivaStatus {
                mode: "managed".into(),
                replicas: m.replicas,
                ready_replicas: r.ready,
                ready: format!("{}/{}", r.ready, m.replicas),
                endpoint: v.riva_uri.clone(),
            }
        }
        None => RivaStatus {
            mode: "external".into(),
            replicas: 0,
            ready_replicas: 0,
            ready: "external".into(),
            endpoint: v.riva_uri.clone(),
        },
    };
    VoicePipelineStatus {
        observed_generation: v.generation,
        conditions,
        gateway: Some(gateway_status),
        riva: Some(riva_status),
        dashboards_namespace: obs.dashboards_namespace.clone(),
    }
}

/// Status of a pipeline whose spec cannot be built at all: `Stalled` with the reason.
pub fn invalid(
    generation: Option<i64>,
    old: Option<&VoicePipelineStatus>,
    message: &str,
    now: &Time,
) -> VoicePipelineStatus {
    let mut conditions = vec![
        cond(CONDITION_READY, false, "InvalidSpec", message),
        cond(
            CONDITION_RECONCILING,
            false,
            "InvalidSpec",
            "waiting for a corrected spec",
        ),
        cond(CONDITION_STALLED, true, "InvalidSpec", message),
    ];
    for c in &mut conditions {
        c.observed_generation = generation;
        c.last_transition_time = match old.and_then(|o| o.condition(&c.type_)) {
            Some(p) if p.status == c.status => p.last_transition_time.clone(),
            _ => now.clone(),
        };
    }
    let mut st = old.cloned().unwrap_or_default();
    st.observed_generation = generation;
    // Keep the component conditions as last observed; replace the kstatus ones.
    st.conditions.retain(|c| {
        ![CONDITION_READY, CONDITION_RECONCILING, CONDITION_STALLED].contains(&c.type_.as_str())
    });
    conditions.extend(st.conditions);
    st.conditions = conditions;
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::validate;
    use crate::testdata;

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn ok(n: i32) -> Rollout {
        Rollout::settled(n, n)
    }

    fn obs(gateway: Rollout, riva: Option<Rollout>) -> Observed {
        Observed {
            riva,
            ..Observed::clean(gateway, "voice")
        }
    }

    fn get<'a>(s: &'a VoicePipelineStatus, t: &str) -> &'a Condition {
        s.condition(t).unwrap()
    }

    #[test]
    fn ready_when_everything_is_available() {
        let v = validate(&testdata::managed()).unwrap();
        let s = compute(&v, None, &obs(ok(2), Some(ok(1))), &t(1));
        assert_eq!(get(&s, "Ready").status, "True");
        assert_eq!(get(&s, "Reconciling").status, "False");
        assert_eq!(get(&s, "Stalled").status, "False");
        // Nothing is in progress, so the status does not say so.
        assert_eq!(get(&s, "Stalled").reason, "Idle");
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(s.gateway.as_ref().unwrap().ready, "2/2");
        assert_eq!(s.riva.as_ref().unwrap().ready, "1/1");
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(1))
        );
    }

    #[test]
    fn old_pods_left_mean_still_rolling_out() {
        let v = validate(&testdata::external()).unwrap();
        let mut g = ok(1);
        g.total = 2;
        g.ready = 2;
        let s = compute(&v, None, &obs(g, None), &t(1));
        assert_eq!(get(&s, "Ready").status, "False");
        assert_eq!(get(&s, "Reconciling").status, "True");
    }

    #[test]
    fn a_rolling_update_counts_updated_pods_and_a_new_deployment_does_not() {
        let v = validate(&testdata::external()).unwrap();
        // An update replacing one old pod of two: how many run the new template is progress.
        let mut update = ok(2);
        update.total = 3;
        update.updated = 1;
        update.available = 2;
        let s = compute(&v, None, &obs(update, None), &t(1));
        assert_eq!(
            get(&s, "GatewayAvailable").message,
            "2/2 gateway pods available, 1 updated"
        );
        // A new Deployment, before and after its controller made the ReplicaSet: the same
        // status, so no status write for that step.
        let created = Rollout {
            desired: 1,
            ..Rollout::default()
        };
        let mut scaled = created.clone();
        (scaled.total, scaled.updated, scaled.observed) = (1, 1, true);
        let before = compute(&v, None, &obs(created, None), &t(1));
        let after = compute(&v, Some(&before), &obs(scaled, None), &t(2));
        assert_eq!(
            get(&after, "GatewayAvailable").message,
            "0/1 gateway pods available"
        );
        assert_eq!(before, after);
    }

    #[test]
    fn reconciling_while_rolling_out() {
        let v = validate(&testdata::managed()).unwrap();
        let mut g = ok(2);
        g.available = 1;
        let s = compute(&v, None, &obs(g, Some(ok(1))), &t(1));
        assert_eq!(get(&s, "Ready").status, "False");
        assert_eq!(get(&s, "Reconciling").status, "True");
        assert_eq!(get(&s, "Reconciling").reason, "RollingOut");
        assert_eq!(get(&s, "Stalled").status, "False");
        assert_eq!(get(&s, "Stalled").reason, "Progressing");
    }

    #[test]
    fn a_pod_that_cannot_start_names_its_cause_in_the_condition_and_ready() {
        let v = validate(&testdata::managed()).unwrap();
        let mut riva = ok(1);
        riva.available = 0;
        riva.ready = 0;
        riva.pod_problem = Some(PodProblem {
            reason: "Unschedulable".into(),
            message: "pod demo-riva-x cannot be scheduled: 0/3 nodes are available".into(),
        });
        let mut gateway = ok(2);
        gateway.available = 1;
        let s = compute(&v, None, &obs(gateway, Some(riva.clone())), &t(1));
        assert_eq!(get(&s, "GatewayAvailable").reason, "RollingOut");
        let r = get(&s, "RivaAvailable");
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "Unschedulable")
        );
        assert_eq!(
            r.message,
            "0/1 Riva pods available; pod demo-riva-x cannot be scheduled: 0/3 nodes are available"
        );
        assert_eq!(get(&s, "Ready").reason, "Unschedulable");
        assert_eq!(get(&s, "Ready").message, r.message);
        assert_eq!(
            get(&s, "Reconciling").status,
            "True",
            "a GPU node may yet join"
        );
        assert_eq!(get(&s, "Stalled").status, "False");

        // Past the deadline: stalled, the pod's cause in place of the generic hint.
        riva.deadline_exceeded = true;
        riva.failure = Some("ReplicaSet \"demo-riva-1\" has timed out progressing.".into());
        let s = compute(&v, None, &obs(ok(2), Some(riva.clone())), &t(1));
        assert_eq!(get(&s, "Stalled").reason, "ProgressDeadlineExceeded");
        assert_eq!(
            get(&s, "Stalled").message,
            "the Riva rollout stopped progressing: ReplicaSet \"demo-riva-1\" has timed out progressing; pod demo-riva-x cannot be scheduled: 0/3 nodes are available"
        );

        // A complete rollout is available whatever a stray pod says.
        let mut done = ok(1);
        done.pod_problem = riva.pod_problem.clone();
        let s = compute(&v, None, &obs(ok(2), Some(done)), &t(1));
        assert_eq!(get(&s, "RivaAvailable").reason, "Available");
    }

    #[test]
    fn a_gateway_waiting_for_its_backends_says_so_unless_a_loading_riva_is_the_cause() {
        let waiting = |mut r: Rollout| {
            r.available = 0;
            r.ready = 0;
            r.pod_problem = Some(PodProblem {
                reason: pods::WAITING_FOR_BACKENDS.into(),
                message: "pod demo-gateway-x runs but is not ready".into(),
            });
            r
        };
        let loading = || {
            let mut riva = ok(1);
            riva.available = 0;
            riva.ready = 0;
            riva
        };
        // An external Riva or a wrong LLM URL: the gateway's own condition is the cause.
        let v = validate(&testdata::external()).unwrap();
        let s = compute(&v, None, &obs(waiting(ok(1)), None), &t(1));
        let g = get(&s, "GatewayAvailable");
        assert_eq!(g.reason, pods::WAITING_FOR_BACKENDS);
        assert_eq!(
            g.message,
            "0/1 gateway pods available; pod demo-gateway-x runs but is not ready"
        );
        assert_eq!(get(&s, "Ready").reason, pods::WAITING_FOR_BACKENDS);
        assert_eq!(get(&s, "Ready").message, g.message);
        assert_eq!(get(&s, "Reconciling").status, "True");
        assert_eq!(get(&s, "Stalled").status, "False");

        // A managed Riva still loading its models: Ready names Riva, which the gateway waits for.
        let v = validate(&testdata::managed()).unwrap();
        let s = compute(&v, None, &obs(waiting(ok(2)), Some(loading())), &t(1));
        assert_eq!(
            get(&s, "GatewayAvailable").reason,
            pods::WAITING_FOR_BACKENDS
        );
        assert_eq!(get(&s, "Ready").reason, "RollingOut");
        assert!(
            get(&s, "Ready").message.contains(" Riva pods available"),
            "{}",
            get(&s, "Ready").message
        );
        // Riva available, the gateway still not ready: the LLM is the cause.
        let s = compute(&v, None, &obs(waiting(ok(2)), Some(ok(1))), &t(1));
        assert_eq!(get(&s, "Ready").reason, pods::WAITING_FOR_BACKENDS);
    }

    #[test]
    fn stalled_on_progress_deadline_and_permanent_errors() {
        let v = validate(&testdata::external()).unwrap();
        let mut g = ok(1);
        g.available = 0;
        g.deadline_exceeded = true;
        let s = compute(&v, None, &obs(g, None), &t(1));
        assert_eq!(get(&s, "Stalled").status, "True");
        assert_eq!(get(&s, "Reconciling").status, "False");

        let mut o = obs(ok(1), None);
        o.error = Some(PassError {
            reason: "Forbidden".into(),
            message: "cannot patch".into(),
            permanent: true,
        });
        let s = compute(&v, None, &o, &t(1));
        assert_eq!(get(&s, "Stalled").reason, "Forbidden");
        assert_eq!(get(&s, "Ready").status, "False");
    }

    #[test]
    fn a_progress_deadline_counts_only_once_the_controller_has_seen_the_spec() {
        let deployment = |generation: i64, observed: i64| -> Deployment {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "demo-gateway", "generation": generation},
                "spec": {"replicas": 1, "selector": {}, "template": {}},
                "status": {"observedGeneration": observed, "conditions": [{
                    "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                    "message": "ReplicaSet \"demo-gateway-1\" has timed out progressing."
                }]}
            }))
            .unwrap()
        };
        let stuck = Rollout::of(&deployment(1, 1));
        assert!(stuck.deadline_exceeded && stuck.observed);
        assert!(stuck.failure.unwrap().contains("timed out"));
        // The image was fixed (generation 2); the apply's response still carries the old status.
        let fixed = Rollout::of(&deployment(2, 1));
        assert!(!fixed.deadline_exceeded && !fixed.observed);
        let v = validate(&testdata::external()).unwrap();
        let s = compute(&v, None, &obs(fixed, None), &t(1));
        assert_eq!(get(&s, "Stalled").status, "False");
        assert_eq!(get(&s, "Reconciling").status, "True");
    }

    #[test]
    fn a_service_still_being_created_keeps_ready_false() {
        let v = validate(&testdata::external()).unwrap();
        let mut o = obs(ok(1), None);
        o.services_pending = vec!["demo-gateway".into()];
        let s = compute(&v, None, &o, &t(1));
        assert_eq!(get(&s, "Ready").status, "False");
        assert_eq!(get(&s, "Ready").reason, "CreatingService");
        assert_eq!(get(&s, "Reconciling").status, "True");
        assert_eq!(get(&s, "Stalled").status, "False");
        o.services_pending.clear();
        assert_eq!(get(&compute(&v, None, &o, &t(1)), "Ready").status, "True");
    }

    #[test]
    fn missing_monitoring_crds_do_not_block_ready_but_say_why() {
        let v = validate(&testdata::external()).unwrap();
        let mut o = obs(ok(1), None);
        o.monitoring = Outcome::CrdsMissing("ServiceMonitor, PrometheusRule".into());
        let s = compute(&v, None, &o, &t(1));
        assert_eq!(get(&s, "Ready").status, "True");
        assert!(
            get(&s, "Ready")
                .message
                .contains("monitoring not configured")
        );
        let m = get(&s, "MonitoringConfigured");
        assert_eq!(
            (m.status.as_str(), m.reason.as_str()),
            ("False", "CRDsNotInstalled")
        );
    }

    #[test]
    fn transition_time_moves_only_on_change_and_equal_passes_are_equal() {
        let v = validate(&testdata::external()).unwrap();
        let first = compute(&v, None, &obs(ok(1), None), &t(1));
        let again = compute(&v, Some(&first), &obs(ok(1), None), &t(99));
        assert_eq!(first, again, "nothing observed changed: nothing to write");
        let mut g = ok(1);
        g.available = 0;
        let changed = compute(&v, Some(&first), &obs(g, None), &t(200));
        assert_eq!(get(&changed, "Ready").last_transition_time, t(200));
        assert_eq!(get(&changed, "RivaAvailable").last_transition_time, t(1));
    }

    #[test]
    fn invalid_spec_is_stalled() {
        let s = invalid(Some(3), None, "spec.riva: set exactly one", &t(5));
        assert_eq!(get(&s, "Stalled").status, "True");
        assert_eq!(get(&s, "Ready").reason, "InvalidSpec");
        assert_eq!(s.observed_generation, Some(3));
    }
}
