//! Small typed mirrors of the two prometheus-operator kinds the operator writes
//! (`monitoring.coreos.com/v1` ServiceMonitor and PrometheusRule), only the fields used here.
//! The CRDs themselves are prometheus-operator's; these types never generate a schema.

use std::collections::BTreeMap;

use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// `spec` of a ServiceMonitor.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "monitoring.coreos.com",
    version = "v1",
    kind = "ServiceMonitor",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Label to take the `job` label from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_label: Option<String>,
    /// Services selected.
    pub selector: LabelSelector,
    /// Namespaces searched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,
    /// Endpoints scraped.
    pub endpoints: Vec<Endpoint>,
}

/// A label selector (matchLabels only).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must match.
    pub match_labels: BTreeMap<String, String>,
}

/// Namespaces a ServiceMonitor searches.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    /// Namespace names.
    pub match_names: Vec<String>,
}

/// One scrape endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Service port name.
    pub port: String,
    /// HTTP path.
    pub path: String,
    /// Scrape interval.
    pub interval: String,
    /// Scrape timeout.
    pub scrape_timeout: String,
    /// Relabelings applied before the scrape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relabelings: Vec<Relabeling>,
}

/// A relabel config (the `replace` action).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Relabeling {
    /// Target label.
    pub target_label: String,
    /// Replacement value.
    pub replacement: String,
    /// Action.
    pub action: String,
}

/// `spec` of a PrometheusRule.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "monitoring.coreos.com",
    version = "v1",
    kind = "PrometheusRule",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
pub struct PrometheusRuleSpec {
    /// Rule groups.
    pub groups: Vec<RuleGroup>,
}

/// A group of rules evaluated together.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct RuleGroup {
    /// Group name.
    pub name: String,
    /// Rules.
    pub rules: Vec<Rule>,
}

/// An alerting rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Rule {
    /// Alert name.
    pub alert: String,
    /// PromQL expression.
    pub expr: String,
    /// How long the expression must hold.
    #[serde(rename = "for")]
    pub for_: String,
    /// Labels (severity, pipeline).
    pub labels: BTreeMap<String, String>,
    /// summary, description, runbook.
    pub annotations: BTreeMap<String, String>,
}
