//! Why a gateway or Riva pod does not start, for the status.
//!
//! A Deployment's status says only "0/1 available". Why is in its pods: no node has a free GPU
//! (the scheduler's `Unschedulable`), the image cannot be pulled, a Secret the pod reads is
//! missing, the container keeps exiting. The operator watches the pods of its Deployments and
//! keeps only the problems ([`PodProblems`]), never the pods, so 1,000 healthy pipelines cost
//! it no memory here. While a rollout is not complete, the status step puts the first problem
//! in the component's condition (reason and message), and so in `Ready`.
//!
//! [`problem_of`] is pure; [`watch`] feeds the map and names the pipelines whose problems
//! changed, which the controller reconciles.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::core::DeserializeGuard;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use voice_types::VoicePipeline;

use crate::model::{Component, OPERATOR, owner_of};
use crate::status::truncate;

/// Longest message kept of a problem (the scheduler's can list every node).
const MAX_MESSAGE: usize = 400;

/// Waiting reasons of a container that is merely starting.
const STARTING: [&str; 2] = ["ContainerCreating", "PodInitializing"];

/// The reason of a gateway pod that runs, has started, and is not ready: its readiness
/// (`/readyz`) waits for Riva and the LLM to answer. (A gateway waiting for a managed Riva
/// that is still loading its models is no problem of the gateway's: see [`crate::status`].)
pub const WAITING_FOR_BACKENDS: &str = "WaitingForBackends";
/// The reason of any other pod that runs, has started, and is not ready.
pub const NOT_READY: &str = "NotReady";

/// Why one pod does not become ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodProblem {
    /// The scheduler's or kubelet's own word, CamelCase: `Unschedulable`, `ImagePullBackOff`,
    /// `CreateContainerConfigError`, `CrashLoopBackOff`, …
    pub reason: String,
    /// What a person reads, starting with the pod's name.
    pub message: String,
}

/// The problem of `pod`, if it has one. A pod that is being deleted or has ended has none (the
/// ReplicaSet replaces it), nor one that is still starting: a Riva loading its models for half
/// an hour is not failing. A container that has started (its startup probe passed) and is not
/// ready is one: a gateway whose backends do not answer, a Riva that stopped serving. (It is
/// also what a container is for the few seconds between its startup probe and its first
/// readiness probe; the message says "not ready", which is then true too.)
pub fn problem_of(pod: &Pod) -> Option<PodProblem> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let name = pod.name_any();
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(c) = unschedulable {
        let why = c.message.as_deref().unwrap_or("no node fits it");
        return Some(problem(
            "Unschedulable",
            format!("pod {name} cannot be scheduled: {why}"),
        ));
    }
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    let component = component_of(pod);
    containers
        .filter_map(|c| container_problem(&name, component, c))
        .next()
}

fn container_problem(
    pod: &str,
    component: Option<Component>,
    c: &ContainerStatus,
) -> Option<PodProblem> {
    let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
    let waiting_reason = waiting.and_then(|w| w.reason.as_deref());
    let last_exit = c
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| c.state.as_ref().and_then(|s| s.terminated.as_ref()))
        .filter(|t| t.exit_code != 0);
    // A container that exited and is not ready: one reason through the whole loop of
    // exit, back-off and restart, so the status does not flap with each step.
    if let Some(t) = last_exit
        && !c.ready
        && (c.restart_count > 0 || waiting_reason == Some("CrashLoopBackOff"))
    {
        let how = t.reason.as_deref().unwrap_or("Error");
        let last_line = t
            .message
            .as_deref()
            .and_then(|m| m.lines().rev().find(|l| !l.trim().is_empty()))
            .map(|l| format!(": {}", l.trim()))
            .unwrap_or_default();
        return Some(problem(
            "CrashLoopBackOff",
            format!(
                "pod {pod}: container {} keeps exiting: exit code {} ({how}){last_line}",
                c.name, t.exit_code
            ),
        ));
    }
    if let Some(reason) = waiting_reason.filter(|r| !STARTING.contains(r)) {
        let detail = waiting
            .and_then(|w| w.message.as_deref())
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        return Some(problem(
            reason,
            format!("pod {pod}: container {}: {reason}{detail}", c.name),
        ));
    }
    let running = c.state.as_ref().is_some_and(|s| s.running.is_some());
    (running && c.started == Some(true) && !c.ready).then(|| not_ready(pod, component, &c.name))
}

/// A container that runs and has started, but is not ready.
fn not_ready(pod: &str, component: Option<Component>, container: &str) -> PodProblem {
    if component == Some(Component::Gateway) {
        problem(
            WAITING_FOR_BACKENDS,
            format!(
                "pod {pod} runs but is not ready: the gateway is ready only while Riva and the LLM answer its checks; its log (`kubectl logs {pod}`) names the one that does not (spec.riva, spec.llm.url, the LLM API key Secret)"
            ),
        )
    } else {
        problem(
            NOT_READY,
            format!(
                "pod {pod}: container {container} runs but is not ready: its readiness probe does not pass (`kubectl describe pod {pod}` shows the probe's failures, `kubectl logs {pod}` the container's errors)"
            ),
        )
    }
}

fn problem(reason: &str, message: String) -> PodProblem {
    PodProblem {
        reason: condition_reason(reason),
        message: truncate(&message, MAX_MESSAGE),
    }
}

/// `reason` as a Condition's reason may be (`^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`):
/// a runtime's own waiting reason could be anything.
fn condition_reason(reason: &str) -> String {
    let r: String = reason
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect();
    if r.starts_with(|c: char| c.is_ascii_alphabetic()) {
        r
    } else {
        "PodNotStarting".into()
    }
}

/// The pipeline and component a pod belongs to, from its labels.
type Owner = (Changed, &'static str);

fn owner(pod: &Pod) -> Option<Owner> {
    Some((owner_of(pod)?, component_of(pod)?.as_str()))
}

/// The component a pod runs, from its `app.kubernetes.io/component` label: only Deployments'
/// pods, the gateway's and Riva's.
fn component_of(pod: &Pod) -> Option<Component> {
    match pod
        .labels()
        .get("app.kubernetes.io/component")
        .map(String::as_str)
    {
        Some("gateway") => Some(Component::Gateway),
        Some("riva") => Some(Component::Riva),
        _ => None,
    }
}

/// The problems of the operator's pods in one watch scope, by pipeline and component, then
/// by pod name. Healthy pods leave no entry.
#[derive(Debug, Default)]
pub struct PodProblems {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_owner: HashMap<Owner, BTreeMap<String, PodProblem>>,
    /// While the watch lists again: the pods listed so far.
    relisted: Option<HashSet<(Owner, String)>>,
}

/// A pipeline whose pods' problems changed.
pub type Changed = ObjectRef<DeserializeGuard<VoicePipeline>>;

impl PodProblems {
    /// The first problem (by pod name) of `component`'s pods of pipeline `namespace/name`,
    /// saying how many more pods have one.
    pub fn first(&self, namespace: &str, name: &str, component: Component) -> Option<PodProblem> {
        let inner = self.inner.lock().expect("not poisoned");
        let key = (ObjectRef::new(name).within(namespace), component.as_str());
        let pods = inner.by_owner.get(&key)?;
        let (_, first) = pods.iter().next()?;
        let mut p = first.clone();
        match pods.len() - 1 {
            0 => {}
            1 => p.message.push_str(" (and 1 more pod)"),
            n => p.message.push_str(&format!(" (and {n} more pods)")),
        }
        Some(p)
    }

    /// Takes one watch event; returns the pipelines whose problems changed.
    pub fn take(&self, event: &Event<Pod>) -> Vec<Changed> {
        let mut inner = self.inner.lock().expect("not poisoned");
        match event {
            Event::Init => {
                inner.relisted = Some(HashSet::new());
                vec![]
            }
            Event::InitApply(pod) => {
                let Some(o) = owner(pod) else { return vec![] };
                if let Some(seen) = &mut inner.relisted {
                    seen.insert((o.clone(), pod.name_any()));
                }
                inner
                    .set(o, pod.name_any(), problem_of(pod))
                    .into_iter()
                    .collect()
            }
            Event::Apply(pod) => match owner(pod) {
                Some(o) => inner
                    .set(o, pod.name_any(), problem_of(pod))
                    .into_iter()
                    .collect(),
                None => vec![],
            },
            Event::Delete(pod) => match owner(pod) {
                Some(o) => inner.set(o, pod.name_any(), None).into_iter().collect(),
                None => vec![],
            },
            Event::InitDone => {
                // Pods gone while the watch was down: their problems go too.
                let Some(seen) = inner.relisted.take() else {
                    return vec![];
                };
                let gone: Vec<(Owner, String)> = inner
                    .by_owner
                    .iter()
                    .flat_map(|(o, pods)| pods.keys().map(|p| (o.clone(), p.clone())))
                    .filter(|k| !seen.contains(k))
                    .collect();
                gone.into_iter()
                    .filter_map(|(o, pod)| inner.set(o, pod, None))
                    .collect()
            }
        }
    }
}

impl Inner {
    /// Sets one pod's problem; returns its pipeline if that changed anything.
    fn set(&mut self, o: Owner, pod: String, problem: Option<PodProblem>) -> Option<Changed> {
        let changed = match problem {
            Some(p) => {
                let pods = self.by_owner.entry(o.clone()).or_default();
                pods.insert(pod, p.clone()) != Some(p)
            }
            None => {
                let pods = self.by_owner.get_mut(&o)?;
                let removed = pods.remove(&pod).is_some();
                if pods.is_empty() {
                    self.by_owner.remove(&o);
                }
                removed
            }
        };
        changed.then_some(o.0)
    }
}

/// Watches the operator's pods in `ns` (all when `None`) into `problems`, yielding each
/// pipeline whose problems changed. Pages of 100: a pod is the largest object it lists, and
/// none is kept.
pub fn watch(
    client: &Client,
    ns: Option<&str>,
    problems: std::sync::Arc<PodProblems>,
) -> impl Stream<Item = Changed> + Send + 'static {
    let api: Api<Pod> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let wc = watcher::Config::default()
        .labels(&format!("app.kubernetes.io/managed-by={OPERATOR}"))
        .page_size(100);
    watcher::watcher(api, wc)
        .default_backoff()
        .filter_map(|event| {
            futures::future::ready(match event {
                Ok(event) => Some(event),
                Err(e) => {
                    // The watcher retries with backoff; meanwhile problems may be stale.
                    tracing::warn!(error = %e, "pod watch failed; pod problems may be stale until it recovers");
                    None
                }
            })
        })
        .flat_map(move |event| futures::stream::iter(problems.take(&event)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "demo-riva-5d8f-x2x9q",
                "namespace": "voice",
                "labels": {
                    "app.kubernetes.io/managed-by": "voice-operator",
                    "app.kubernetes.io/instance": "demo",
                    "app.kubernetes.io/component": "riva",
                },
            },
            "status": status,
        }))
        .unwrap()
    }

    fn waiting(reason: &str, message: &str) -> serde_json::Value {
        json!({"phase": "Pending", "containerStatuses": [{
            "name": "riva", "image": "riva", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}},
        }]})
    }

    #[test]
    fn an_unschedulable_pod_says_what_the_scheduler_said() {
        let p = problem_of(&pod(json!({"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        }]})))
        .unwrap();
        assert_eq!(p.reason, "Unschedulable");
        assert_eq!(
            p.message,
            "pod demo-riva-5d8f-x2x9q cannot be scheduled: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
        );
    }

    #[test]
    fn a_waiting_container_gives_the_kubelets_reason_and_message() {
        let p = problem_of(&pod(waiting(
            "CreateContainerConfigError",
            "secret \"ngc-api-key\" not found",
        )))
        .unwrap();
        assert_eq!(p.reason, "CreateContainerConfigError");
        assert_eq!(
            p.message,
            "pod demo-riva-5d8f-x2x9q: container riva: CreateContainerConfigError: secret \"ngc-api-key\" not found"
        );
        let p = problem_of(&pod(waiting(
            "ImagePullBackOff",
            "Back-off pulling image \"x\"",
        )))
        .unwrap();
        assert_eq!(p.reason, "ImagePullBackOff");
    }

    #[test]
    fn starting_running_ending_and_terminating_pods_have_no_problem() {
        assert_eq!(problem_of(&pod(waiting("ContainerCreating", ""))), None);
        assert_eq!(problem_of(&pod(json!({"phase": "Pending"}))), None);
        assert_eq!(
            problem_of(&pod(json!({"phase": "Running", "containerStatuses": [{
                "name": "riva", "image": "riva", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"running": {}},
            }]}))),
            None,
            "Riva loading its models is not a problem"
        );
        let mut failed = pod(waiting("ImagePullBackOff", ""));
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        assert_eq!(problem_of(&failed), None, "an ended pod is replaced");
        let mut deleting = pod(waiting("ImagePullBackOff", ""));
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(problem_of(&deleting), None);
    }

    /// A pod of `component` whose one container runs, started (its startup probe passed) or
    /// not, ready or not.
    fn running(component: &str, started: bool, ready: bool) -> Pod {
        let mut p = pod(json!({"phase": "Running", "containerStatuses": [{
            "name": component, "image": component, "imageID": "", "restartCount": 0,
            "started": started, "ready": ready, "state": {"running": {}},
        }]}));
        p.labels_mut()
            .insert("app.kubernetes.io/component".into(), component.into());
        p
    }

    #[test]
    fn a_started_container_that_is_not_ready_is_a_problem_and_a_gateway_says_which_backends() {
        let gateway = problem_of(&running("gateway", true, false)).unwrap();
        assert_eq!(gateway.reason, WAITING_FOR_BACKENDS);
        assert_eq!(
            gateway.message,
            "pod demo-riva-5d8f-x2x9q runs but is not ready: the gateway is ready only while Riva and the LLM answer its checks; its log (`kubectl logs demo-riva-5d8f-x2x9q`) names the one that does not (spec.riva, spec.llm.url, the LLM API key Secret)"
        );
        let riva = problem_of(&running("riva", true, false)).unwrap();
        assert_eq!(riva.reason, NOT_READY);
        assert!(
            riva.message.starts_with(
                "pod demo-riva-5d8f-x2x9q: container riva runs but is not ready: its readiness probe does not pass"
            ),
            "{}",
            riva.message
        );
        // Still in its startup probe (a Riva loading models), or ready: nothing to report.
        assert_eq!(problem_of(&running("riva", false, false)), None);
        assert_eq!(problem_of(&running("gateway", false, false)), None);
        assert_eq!(problem_of(&running("gateway", true, true)), None);
    }

    #[test]
    fn a_crash_loop_keeps_one_reason_through_exit_back_off_and_restart() {
        let crashed = |state: serde_json::Value| {
            pod(json!({"phase": "Running", "containerStatuses": [{
                "name": "gateway", "image": "g", "imageID": "", "ready": false, "restartCount": 3,
                "state": state,
                "lastState": {"terminated": {"exitCode": 2, "reason": "Error",
                    "message": "starting\nerror: LLM_SERVICE_URL is not a URL\n\n"}},
            }]}))
        };
        let back_off = problem_of(&crashed(json!({"waiting": {
            "reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container=gateway"
        }})))
        .unwrap();
        let running = problem_of(&crashed(json!({"running": {}}))).unwrap();
        assert_eq!(back_off, running, "no status write per restart");
        assert_eq!(back_off.reason, "CrashLoopBackOff");
        assert_eq!(
            back_off.message,
            "pod demo-riva-5d8f-x2x9q: container gateway keeps exiting: exit code 2 (Error): error: LLM_SERVICE_URL is not a URL"
        );
    }

    #[test]
    fn reasons_fit_a_condition_and_messages_are_bounded() {
        assert_eq!(condition_reason("Err Image-Pull"), "ErrImagePull");
        assert_eq!(condition_reason("9lives"), "PodNotStarting");
        let p = problem_of(&pod(waiting("ErrImagePull", &"é".repeat(1000)))).unwrap();
        assert!(
            p.message.len() <= MAX_MESSAGE + '…'.len_utf8(),
            "{}",
            p.message.len()
        );
    }

    #[test]
    fn the_map_keeps_only_problems_and_names_the_pipelines_that_changed() {
        let problems = PodProblems::default();
        let demo: Changed = ObjectRef::new("demo").within("voice");
        let bad = pod(waiting("ImagePullBackOff", "Back-off pulling image \"x\""));
        let mut other = bad.clone();
        other.metadata.name = Some("demo-riva-5d8f-zzzzz".into());
        assert_eq!(
            problems.take(&Event::Apply(bad.clone())),
            vec![demo.clone()]
        );
        assert_eq!(
            problems.take(&Event::Apply(bad.clone())),
            vec![],
            "unchanged"
        );
        assert_eq!(
            problems.take(&Event::Apply(other.clone())),
            vec![demo.clone()]
        );
        let first = problems.first("voice", "demo", Component::Riva).unwrap();
        assert!(
            first.message.starts_with("pod demo-riva-5d8f-x2x9q:"),
            "{}",
            first.message
        );
        assert!(
            first.message.ends_with(" (and 1 more pod)"),
            "{}",
            first.message
        );
        assert_eq!(problems.first("voice", "demo", Component::Gateway), None);

        // Healthy again, and gone while the watch was down.
        let healthy = pod(json!({"phase": "Running"}));
        assert_eq!(problems.take(&Event::Apply(healthy)), vec![demo.clone()]);
        assert_eq!(problems.take(&Event::Init), vec![]);
        assert_eq!(problems.take(&Event::InitDone), vec![demo.clone()]);
        assert_eq!(problems.first("voice", "demo", Component::Riva), None);
        assert!(problems.inner.lock().unwrap().by_owner.is_empty());

        // Pods of others are not ours to report.
        let mut foreign = other;
        foreign.labels_mut().remove("app.kubernetes.io/managed-by");
        assert_eq!(problems.take(&Event::Apply(foreign)), vec![]);
    }
}
