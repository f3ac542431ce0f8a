//! The build step: pure functions from a [`Validated`] pipeline to the typed child objects
//! the operator applies. No API calls, no clocks, no randomness: the same pipeline always
//! builds the same objects, which is what makes `render -f` a faithful preview and keeps
//! steady-state reconciles free of writes.
//!
//! ```text
//! Validated ──build()──► Children { gateway_config, gateway_deployment, gateway_service,
//!                                   gateway_pdb?, riva_deployment?, riva_service?,
//!                                   gateway_service_monitor?, riva_service_monitor?,
//!                                   prometheus_rule?, dashboard? }
//! ```
//! A `None` child is one that must not exist: the applier deletes it if it does.

mod dashboard;
mod gateway;
mod monitoring;
mod riva;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{Component, Validated};
use crate::monitoring_crds::{PrometheusRule, ServiceMonitor};

pub use dashboard::build_dashboard;
pub use gateway::{
    build_gateway_config, build_gateway_deployment, build_gateway_pdb, build_gateway_service,
    config_hash,
};
pub use monitoring::{
    build_gateway_service_monitor, build_prometheus_rule, build_riva_service_monitor,
};
pub use riva::{build_riva_deployment, build_riva_service};

/// Every child of a pipeline. The applier destructures this without `..`, so a new kind of
/// child that is built but not applied is a compile error.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    /// Gateway runtime configuration (the seed's environment variable names).
    pub gateway_config: ConfigMap,
    /// Gateway Deployment.
    pub gateway_deployment: Deployment,
    /// Gateway Service (`grpc` 50051, `metrics` 8080).
    pub gateway_service: Service,
    /// Gateway PodDisruptionBudget, when replicas > 1.
    pub gateway_pdb: Option<PodDisruptionBudget>,
    /// Riva Deployment, when managed.
    pub riva_deployment: Option<Deployment>,
    /// Riva Service, when managed.
    pub riva_service: Option<Service>,
    /// ServiceMonitor of the gateway, when enabled.
    pub gateway_service_monitor: Option<ServiceMonitor>,
    /// ServiceMonitor of Riva/Triton, when enabled and Riva is managed.
    pub riva_service_monitor: Option<ServiceMonitor>,
    /// PrometheusRule, when enabled.
    pub prometheus_rule: Option<PrometheusRule>,
    /// Grafana dashboard ConfigMap, when enabled (maybe in another namespace).
    pub dashboard: Option<ConfigMap>,
}

/// Builds every child.
pub fn build(v: &Validated) -> Children {
    let gateway_config = build_gateway_config(v);
    let hash = config_hash(&gateway_config, v);
    Children {
        gateway_deployment: build_gateway_deployment(v, &hash),
        gateway_config,
        gateway_service: build_gateway_service(v),
        gateway_pdb: build_gateway_pdb(v),
        riva_deployment: build_riva_deployment(v),
        riva_service: build_riva_service(v),
        gateway_service_monitor: build_gateway_service_monitor(v),
        riva_service_monitor: build_riva_service_monitor(v),
        prometheus_rule: build_prometheus_rule(v),
        dashboard: build_dashboard(v),
    }
}

/// Metadata of a child in the pipeline's namespace: name, labels, controller owner reference.
fn owned_meta(v: &Validated, component: Component, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(v.namespace.clone()),
        labels: Some(v.labels(component)),
        owner_references: v.owner.clone().map(|o| vec![o]),
        ..Default::default()
    }
}

/// Labels plus the `release` label and the user's extra labels (monitoring objects).
fn monitoring_labels(
    v: &Validated,
    component: Component,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = extra.clone();
    if !v.spec.observability.release.is_empty() {
        labels.insert("release".into(), v.spec.observability.release.clone());
    }
    // Ours win: the operator finds its children by these.
    labels.extend(v.labels(component));
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::validate;
    use crate::testdata;

    #[test]
    fn external_riva_builds_no_riva_children() {
        let c = build(&validate(&testdata::external()).unwrap());
        assert!(
            c.riva_deployment.is_none()
                && c.riva_service.is_none()
                && c.riva_service_monitor.is_none()
        );
        assert!(c.gateway_pdb.is_none(), "one replica: no PDB");
        assert!(
            c.gateway_service_monitor.is_some()
                && c.prometheus_rule.is_some()
                && c.dashboard.is_some()
        );
    }

    #[test]
    fn managed_riva_builds_everything() {
        let c = build(&validate(&testdata::managed()).unwrap());
        assert!(
            c.riva_deployment.is_some()
                && c.riva_service.is_some()
                && c.riva_service_monitor.is_some()
        );
        assert!(c.gateway_pdb.is_some(), "two replicas: a PDB");
    }

    #[test]
    fn every_child_is_labelled_and_owned() {
        let v = validate(&testdata::managed()).unwrap();
        let c = build(&v);
        let metas = [
            &c.gateway_config.metadata,
            &c.gateway_deployment.metadata,
            &c.gateway_service.metadata,
            &c.gateway_pdb.as_ref().unwrap().metadata,
            &c.riva_deployment.as_ref().unwrap().metadata,
            &c.riva_service.as_ref().unwrap().metadata,
            &c.gateway_service_monitor.as_ref().unwrap().metadata,
            &c.riva_service_monitor.as_ref().unwrap().metadata,
            &c.prometheus_rule.as_ref().unwrap().metadata,
            &c.dashboard.as_ref().unwrap().metadata,
        ];
        for m in metas {
            let l = m.labels.as_ref().unwrap();
            for k in ["name", "instance", "component", "part-of", "managed-by"] {
                assert!(
                    l.contains_key(&format!("app.kubernetes.io/{k}")),
                    "{:?} lacks {k}",
                    m.name
                );
            }
            assert_eq!(
                m.owner_references.as_ref().unwrap()[0].controller,
                Some(true),
                "{:?}",
                m.name
            );
        }
    }

    #[test]
    fn switched_off_components_build_nothing() {
        let mut vp = testdata::managed();
        vp.spec.observability.service_monitor.enabled = false;
        vp.spec.observability.prometheus_rule.enabled = false;
        vp.spec.observability.dashboards.enabled = false;
        let c = build(&validate(&vp).unwrap());
        assert!(c.gateway_service_monitor.is_none() && c.riva_service_monitor.is_none());
        assert!(c.prometheus_rule.is_none() && c.dashboard.is_none());
    }

    #[test]
    fn building_is_deterministic() {
        let v = validate(&testdata::managed()).unwrap();
        assert_eq!(build(&v), build(&v));
    }
}
