//! A stored VoicePipeline that the operator cannot read is logged, reported as a
//! `MalformedObject` Warning Event and skipped; the watch goes on: a pipeline created after it
//! becomes Ready, and once the bad object is fixed it is reconciled too.
//!
//! The CRD's schema refuses such an object, so one is stored the way it happens in practice:
//! under an earlier, looser CRD (here: `x-kubernetes-preserve-unknown-fields` for the whole
//! object), which is then replaced by the real one. The API server validates writes, not what
//! is already in etcd. Runs on a private plane: CRDs are cluster-wide.

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::Api;
use operator_tests::{Operator, apply_ok, example, install_crd, kubectl_apply, wait_ready};
use test_support::{Plane, PlaneOptions, eventually, repo_root};
use voice_types::VoicePipeline;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The real CRD with its schema replaced by "anything goes".
fn loose_crd() -> String {
    let path = repo_root().join("crds/voice.workflow.io_voicepipelines.yaml");
    let mut crd: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).expect("CRD file")).expect("CRD YAML");
    for v in crd["spec"]["versions"].as_sequence_mut().expect("versions") {
        v["schema"] = serde_yaml::from_str(
            "openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}",
        )
        .unwrap();
    }
    serde_yaml::to_string(&crd).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_pipeline_is_reported_and_skipped_and_the_watch_goes_on() {
    let plane = tokio::task::spawn_blocking(|| {
        Plane::private(
            "malformed",
            PlaneOptions {
                monitoring_crds: false,
            },
        )
    })
    .await
    .unwrap();
    let ns = plane.namespace("malformed").await;

    // Stored under the loose CRD: `llm` must be an object with a URL.
    let out = kubectl_apply(&plane, &ns.name, &loose_crd());
    assert!(out.status.success(), "loose CRD: {out:?}");
    plane.wait_crd_established("voicepipelines.voice.workflow.io");
    let bad = "apiVersion: voice.workflow.io/v1alpha1\nkind: VoicePipeline\nmetadata: {name: bad}\nspec: {llm: 42}\n";
    // The loose CRD's OpenAPI may take a moment to reach kubectl's discovery: retry.
    eventually(TIMEOUT, || async {
        kubectl_apply(&plane, &ns.name, bad)
            .status
            .success()
            .then_some(())
    })
    .await;
    // The real CRD replaces it; the bad object stays stored.
    install_crd(&plane);
    let api: Api<VoicePipeline> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(
        api.get("bad").await.is_err(),
        "the operator's types must not read the bad object, or this test proves nothing"
    );

    let op = Operator::start(ns.client.clone(), &[&ns.name]).await;
    // Reported: an Event on the object, and the metric.
    let events: Api<Event> = Api::namespaced(ns.client.clone(), &ns.name);
    let event = eventually(TIMEOUT, || async {
        events
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("MalformedObject")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad")
            })
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.unwrap_or_default();
    assert!(note.contains("cannot read this VoicePipeline"), "{note}");
    assert!(
        op.metric(r#"voice_operator_reconcile_errors_total{reason="MalformedObject"}"#)
            .await
            >= 1.0
    );

    // The watch goes on: a pipeline created afterwards is reconciled, and the operator is ready.
    apply_ok(&plane, &ns.name, &example("minimal.yaml"));
    wait_ready(&api, "demo", TIMEOUT).await;
    assert_eq!(op.admin_get("/readyz").await.0, 200);

    // Fixed, the bad object is reconciled like any other.
    let fix = plane.kubectl_output(&[
        "patch",
        "-n",
        &ns.name,
        "voicepipeline",
        "bad",
        "--type=merge",
        "-p",
        r#"{"spec":{"llm":{"url":"http://llm.llm.svc:8000/v1"},"riva":{"external":{"uri":"riva-api.riva.svc:50051"}}}}"#,
    ]);
    assert!(fix.status.success(), "{fix:?}");
    wait_ready(&api, "bad", TIMEOUT).await;
    op.stop().await.expect("operator stops cleanly");
}
