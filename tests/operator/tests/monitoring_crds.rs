//! Without the Prometheus Operator's CRDs everything else still works, a condition says why
//! monitoring is not configured, and once the CRDs are installed the operator applies the
//! ServiceMonitor and PrometheusRule without a restart. Runs on a private plane: installing
//! CRDs is cluster-wide.

use std::time::Duration;

use kube::Api;
use operator_tests::{Operator, apply_ok, condition, example, install_crd, wait_for, wait_ready};
use test_support::{Plane, PlaneOptions, eventually};
use voice_operator::monitoring_crds::{PrometheusRule, ServiceMonitor};
use voice_types::VoicePipeline;

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_crds_absent_then_installed() {
    let plane = tokio::task::spawn_blocking(|| {
        Plane::private(
            "no-monitoring",
            PlaneOptions {
                monitoring_crds: false,
            },
        )
    })
    .await
    .unwrap();
    install_crd(&plane);
    let ns = plane.namespace("no-mon").await;
    let op = Operator::start(ns.client.clone(), &[&ns.name]).await;
    apply_ok(&plane, &ns.name, &example("minimal.yaml"));
    let api: Api<VoicePipeline> = Api::namespaced(ns.client.clone(), &ns.name);

    let vp = wait_ready(&api, "demo", TIMEOUT).await;
    let (status, reason, message) = condition(&vp, "MonitoringConfigured").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "CRDsNotInstalled"),
        "{message}"
    );
    assert!(
        message.contains("ServiceMonitor") && message.contains("PrometheusRule"),
        "{message}"
    );
    assert!(
        condition(&vp, "Ready")
            .unwrap()
            .2
            .contains("monitoring not configured")
    );
    assert_eq!(condition(&vp, "DashboardsConfigured").unwrap().0, "True");

    plane.install_monitoring_crds();
    let vp = wait_for(&api, "demo", TIMEOUT, "MonitoringConfigured=True", |vp| {
        condition(vp, "MonitoringConfigured").is_some_and(|c| c.0 == "True")
    })
    .await;
    assert_eq!(condition(&vp, "Ready").unwrap().0, "True");
    let sms: Api<ServiceMonitor> = Api::namespaced(ns.client.clone(), &ns.name);
    let rules: Api<PrometheusRule> = Api::namespaced(ns.client.clone(), &ns.name);
    eventually(Duration::from_secs(10), || async {
        (sms.get_opt("demo-gateway").await.ok()?.is_some()
            && rules.get_opt("demo-alerts").await.ok()?.is_some())
        .then_some(())
    })
    .await;
    op.stop().await.unwrap();
    drop(ns);
    tokio::task::spawn_blocking(move || drop(plane))
        .await
        .unwrap();
}
