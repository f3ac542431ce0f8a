//! `status` of a [`crate::VoicePipeline`]: what the operator observed.
//!
//! Conditions follow kstatus (what Flux, `kubectl wait` and most GitOps tools read):
//!
//! | type | True means |
//! |---|---|
//! | `Ready` | every component is available at `observedGeneration` |
//! | `Reconciling` | the operator is still making the cluster match the spec |
//! | `Stalled` | it cannot progress without a change (bad spec, permission, missing CRD) |
//! | `GatewayAvailable`, `RivaAvailable` | that component's pods are available |
//! | `MonitoringConfigured`, `DashboardsConfigured` | those children are applied (or disabled) |

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type: the whole pipeline is available.
pub const CONDITION_READY: &str = "Ready";
/// Condition type (abnormal-true): work is under way.
pub const CONDITION_RECONCILING: &str = "Reconciling";
/// Condition type (abnormal-true): no progress without a change.
pub const CONDITION_STALLED: &str = "Stalled";
/// Condition type: the gateway Deployment is available.
pub const CONDITION_GATEWAY: &str = "GatewayAvailable";
/// Condition type: the managed Riva Deployment is available (or Riva is external).
pub const CONDITION_RIVA: &str = "RivaAvailable";
/// Condition type: ServiceMonitors and PrometheusRule are applied (or disabled).
pub const CONDITION_MONITORING: &str = "MonitoringConfigured";
/// Condition type: the dashboard ConfigMap is applied (or disabled).
pub const CONDITION_DASHBOARDS: &str = "DashboardsConfigured";

/// What the operator observed of a pipeline.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VoicePipelineStatus {
    /// The `metadata.generation` this status describes. Trust nothing else in the status
    /// while it differs from `metadata.generation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling`, `Stalled` (kstatus) and one per component, each with a reason
    /// and a message saying what to do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The gateway's replicas and endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayStatus>,

    /// Riva's replicas and endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub riva: Option<RivaStatus>,

    /// Namespace where the dashboard ConfigMap was last applied, so that it can be removed
    /// when it moves or the pipeline is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboards_namespace: Option<String>,
}

/// Observed state of the gateway.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// Desired gateway pods.
    pub replicas: i32,
    /// Gateway pods ready to serve.
    pub ready_replicas: i32,
    /// `ready/desired`, for `kubectl get`.
    pub ready: String,
    /// In-cluster gRPC endpoint clients connect to, `host:port`.
    pub endpoint: String,
}

/// Observed state of Riva.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RivaStatus {
    /// `managed` or `external`.
    pub mode: String,
    /// Desired Riva pods (0 when external).
    pub replicas: i32,
    /// Riva pods ready (0 when external).
    pub ready_replicas: i32,
    /// `ready/desired` when managed, `external` otherwise, for `kubectl get`.
    pub ready: String,
    /// The gRPC endpoint the gateway uses (`RIVA_URI`).
    pub endpoint: String,
}

impl VoicePipelineStatus {
    /// The condition of this type, if any.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}
