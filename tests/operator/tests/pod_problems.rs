//! A pod that does not start, or runs and is not ready, says why in the pipeline's status, and
//! the status recovers once the cause is gone: a Riva no node can hold (the real
//! kube-scheduler's verdict), a gateway container in a crash loop, and a gateway whose
//! readiness probe fails (those pod statuses written here as a kubelet would: kwok's fake
//! kubelets never crash and run no probes).

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use operator_tests::{
    Operator, apply_ok, bind_volume, condition, example, plane, wait_ready, wait_reason,
};
use serde_json::json;
use test_support::TestNamespace;
use voice_types::VoicePipeline;

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_riva_no_node_can_hold_is_reported_unschedulable_until_the_spec_fits() {
    let plane = plane();
    let ns = plane.namespace("pod-unschedulable").await;
    let c = ns.client.clone();
    let _op = Operator::start(c.clone(), &[&ns.name]).await;
    bind_volume(plane, &ns.name, "riva-models");
    // The plane's only GPU node has 8.
    let yaml = example("managed-riva-gpu.yaml").replace("count: 1", "count: 9");
    assert!(yaml.contains("count: 9"));
    apply_ok(plane, &ns.name, &yaml);
    let api: Api<VoicePipeline> = Api::namespaced(c.clone(), &ns.name);

    let vp = wait_reason(&api, "voice", "RivaAvailable", "Unschedulable", TIMEOUT).await;
    let (status, _, message) = condition(&vp, "RivaAvailable").unwrap();
    assert_eq!(status, "False");
    assert!(
        message.starts_with("0/1 Riva pods available; pod voice-riva-")
            && message.contains("cannot be scheduled: 0/")
            && message.contains("Insufficient nvidia.com/gpu"),
        "the scheduler's own words: {message}"
    );
    let (ready, reason, ready_message) = condition(&vp, "Ready").unwrap();
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "Unschedulable")
    );
    assert_eq!(ready_message, message);
    assert_eq!(condition(&vp, "Reconciling").unwrap().0, "True");
    assert_eq!(condition(&vp, "Stalled").unwrap().0, "False");
    let describe = plane.kubectl_output(&["describe", "-n", &ns.name, "vp/voice"]);
    let describe = String::from_utf8_lossy(&describe.stdout);
    assert!(
        describe.contains("Insufficient nvidia.com/gpu"),
        "kubectl describe shows it:\n{describe}"
    );

    // A spec that fits: the pending pod goes, and so does its problem.
    let patch = json!({"spec": {"riva": {"managed": {"gpu": {"count": 1}}}}});
    api.patch("voice", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let vp = wait_ready(&api, "voice", Duration::from_secs(90)).await;
    assert_eq!(condition(&vp, "RivaAvailable").unwrap().1, "Available");
}

/// The minimal pipeline, Ready under its own operator in namespace `prefix-…`, and its one
/// gateway pod, whose status a test writes as a kubelet would.
struct GatewayPod {
    api: Api<VoicePipeline>,
    pods: Api<Pod>,
    pod: Pod,
    healthy: PodStatus,
    _op: Operator,
    _ns: TestNamespace,
}

impl GatewayPod {
    async fn start(prefix: &str) -> Self {
        let plane = plane();
        let ns = plane.namespace(prefix).await;
        let c = ns.client.clone();
        let op = Operator::start(c.clone(), &[&ns.name]).await;
        apply_ok(plane, &ns.name, &example("minimal.yaml"));
        let api: Api<VoicePipeline> = Api::namespaced(c.clone(), &ns.name);
        wait_ready(&api, "demo", TIMEOUT).await;
        let pods: Api<Pod> = Api::namespaced(c, &ns.name);
        let lp = ListParams::default()
            .labels("app.kubernetes.io/instance=demo,app.kubernetes.io/component=gateway");
        let pod = pods.list(&lp).await.unwrap().items.remove(0);
        let healthy = pod.status.clone().unwrap();
        Self {
            api,
            pods,
            pod,
            healthy,
            _op: op,
            _ns: ns,
        }
    }

    fn name(&self) -> String {
        self.pod.name_any()
    }

    /// Writes the pod's status: its `Ready` and `ContainersReady` conditions false, and its
    /// container's status as `container` makes it from the healthy one.
    async fn not_ready(&self, container: impl FnOnce(&mut ContainerStatus)) {
        let mut pod = self.pod.clone();
        let st = pod.status.as_mut().unwrap();
        for cond in st.conditions.iter_mut().flatten() {
            if cond.type_ == "Ready" || cond.type_ == "ContainersReady" {
                cond.status = "False".into();
                cond.reason = Some("ContainersNotReady".into());
                cond.message = Some("containers with unready status: [gateway]".into());
            }
        }
        container(&mut st.container_statuses.as_mut().unwrap()[0]);
        self.pods
            .replace_status(&self.name(), &PostParams::default(), &pod)
            .await
            .unwrap();
    }

    /// Writes the pod's healthy status back; the pipeline is Ready again, the gateway available.
    async fn recovers(&self) {
        let mut recovered = self.pods.get(&self.name()).await.unwrap();
        recovered.status = Some(self.healthy.clone());
        self.pods
            .replace_status(&self.name(), &PostParams::default(), &recovered)
            .await
            .unwrap();
        let vp = wait_ready(&self.api, "demo", TIMEOUT).await;
        assert_eq!(condition(&vp, "GatewayAvailable").unwrap().1, "Available");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_container_in_a_crash_loop_is_reported_until_it_runs_again() {
    let g = GatewayPod::start("pod-crashloop").await;
    let name = g.name();

    // What a kubelet writes after the third exit of the gateway's container.
    g.not_ready(|container| {
        *container = serde_json::from_value(json!({
            "name": container.name, "image": container.image, "imageID": container.image_id,
            "ready": false, "started": false, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff",
                "message": "back-off 40s restarting failed container=gateway"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                "message": "{\"level\":\"ERROR\",\"message\":\"RIVA_URI: cannot resolve riva-api.riva.svc\"}\n"}},
        }))
        .unwrap();
    })
    .await;

    let vp = wait_reason(
        &g.api,
        "demo",
        "GatewayAvailable",
        "CrashLoopBackOff",
        TIMEOUT,
    )
    .await;
    let (_, _, message) = condition(&vp, "GatewayAvailable").unwrap();
    assert_eq!(
        message,
        format!(
            "0/1 gateway pods available; pod {name}: container gateway keeps exiting: exit code 1 (Error): {{\"level\":\"ERROR\",\"message\":\"RIVA_URI: cannot resolve riva-api.riva.svc\"}}"
        )
    );
    assert_eq!(condition(&vp, "Ready").unwrap().1, "CrashLoopBackOff");

    // Running and ready again: the problem goes with it.
    g.recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_runs_but_whose_backends_do_not_answer_is_reported_until_it_is_ready() {
    let g = GatewayPod::start("pod-notready").await;
    let name = g.name();

    // What a kubelet writes while the gateway runs, has passed its startup probe, and its
    // readiness probe (/readyz) fails: the LLM at spec.llm.url does not answer. (kwok leaves
    // `started` unset; a kubelet sets it for every running container.)
    g.not_ready(|container| {
        container.ready = false;
        container.started = Some(true);
    })
    .await;

    let vp = wait_reason(
        &g.api,
        "demo",
        "GatewayAvailable",
        "WaitingForBackends",
        TIMEOUT,
    )
    .await;
    let (status, _, message) = condition(&vp, "GatewayAvailable").unwrap();
    assert_eq!(status, "False");
    assert_eq!(
        message,
        format!(
            "0/1 gateway pods available; pod {name} runs but is not ready: the gateway is ready only while Riva and the LLM answer its checks; its log (`kubectl logs {name}`) names the one that does not (spec.riva, spec.llm.url, the LLM API key Secret)"
        )
    );
    let (ready, reason, ready_message) = condition(&vp, "Ready").unwrap();
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "WaitingForBackends")
    );
    assert_eq!(ready_message, message);
    assert_eq!(condition(&vp, "Reconciling").unwrap().0, "True");

    // Its backends answer again: ready, and the problem goes.
    g.recovers().await;
}
