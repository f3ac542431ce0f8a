//! A pod that does not start says why in the pipeline's status, and the status recovers once
//! the cause is gone: a Riva no node can hold (the real kube-scheduler's verdict), and a
//! gateway container in a crash loop (its pod status written here as a kubelet would; kwok's
//! fake kubelets never crash).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use operator_tests::{
    Operator, apply_ok, bind_volume, condition, example, plane, wait_ready, wait_reason,
};
use serde_json::json;
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
        message.starts_with("0/1 Riva pods available, ")
            && message.contains(" updated; pod voice-riva-")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_container_in_a_crash_loop_is_reported_until_it_runs_again() {
    let plane = plane();
    let ns = plane.namespace("pod-crashloop").await;
    let c = ns.client.clone();
    let _op = Operator::start(c.clone(), &[&ns.name]).await;
    apply_ok(plane, &ns.name, &example("minimal.yaml"));
    let api: Api<VoicePipeline> = Api::namespaced(c.clone(), &ns.name);
    wait_ready(&api, "demo", TIMEOUT).await;

    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns.name);
    let lp = ListParams::default()
        .labels("app.kubernetes.io/instance=demo,app.kubernetes.io/component=gateway");
    let pod = pods.list(&lp).await.unwrap().items.remove(0);
    let name = pod.name_any();
    let healthy = pod.status.clone().unwrap();

    // What a kubelet writes after the third exit of the gateway's container.
    let mut crashing = pod.clone();
    let st = crashing.status.as_mut().unwrap();
    for cond in st.conditions.iter_mut().flatten() {
        if cond.type_ == "Ready" || cond.type_ == "ContainersReady" {
            cond.status = "False".into();
            cond.reason = Some("ContainersNotReady".into());
        }
    }
    let container = &mut st.container_statuses.as_mut().unwrap()[0];
    *container = serde_json::from_value(json!({
        "name": container.name, "image": container.image, "imageID": container.image_id,
        "ready": false, "started": false, "restartCount": 3,
        "state": {"waiting": {"reason": "CrashLoopBackOff",
            "message": "back-off 40s restarting failed container=gateway"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
            "message": "{\"level\":\"ERROR\",\"message\":\"RIVA_URI: cannot resolve riva-api.riva.svc\"}\n"}},
    }))
    .unwrap();
    pods.replace_status(&name, &PostParams::default(), &crashing)
        .await
        .unwrap();

    let vp = wait_reason(
        &api,
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
            "0/1 gateway pods available, 1 updated; pod {name}: container gateway keeps exiting: exit code 1 (Error): {{\"level\":\"ERROR\",\"message\":\"RIVA_URI: cannot resolve riva-api.riva.svc\"}}"
        )
    );
    assert_eq!(condition(&vp, "Ready").unwrap().1, "CrashLoopBackOff");

    // Running and ready again: the problem goes with it.
    let mut recovered = pods.get(&name).await.unwrap();
    recovered.status = Some(healthy);
    pods.replace_status(&name, &PostParams::default(), &recovered)
        .await
        .unwrap();
    let vp = wait_ready(&api, "demo", TIMEOUT).await;
    assert_eq!(condition(&vp, "GatewayAvailable").unwrap().1, "Available");
}
