//! The validate step: a [`VoicePipeline`] as read from the API becomes a [`Validated`]
//! pipeline, or a [`ValidateError`] that names the field and what to do. Pure: no API calls.
//!
//! The CRD's schema and CEL rules already reject most bad specs at `kubectl apply`; this step
//! re-checks what the builders rely on, because objects stored before a stricter CRD was
//! installed are still read, and `render -f` reads files the API server never saw.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use voice_types::{MAX_NAME_LEN, VoicePipeline, VoicePipelineSpec};

/// Name of this operator: `app.kubernetes.io/managed-by` and field-manager prefix.
pub const OPERATOR: &str = "voice-operator";
/// `app.kubernetes.io/name` of every child.
pub const APP_NAME: &str = "voice-pipeline";
/// `app.kubernetes.io/part-of` of every child.
pub const PART_OF: &str = "voice-workflow";
/// Label on children naming the pipeline's namespace (dashboards may live elsewhere).
pub const LABEL_PIPELINE_NAMESPACE: &str = "voice.workflow.io/pipeline-namespace";
/// Finalizer that removes dashboards living outside the pipeline's namespace.
pub const DASHBOARD_FINALIZER: &str = "voice.workflow.io/dashboards";
/// Pod-template annotation carrying the hash of the gateway's rendered configuration.
pub const CONFIG_HASH_ANNOTATION: &str = "voice.workflow.io/config-hash";

/// Port of the gateway Service's `grpc` port (the container port is configurable).
pub const GATEWAY_GRPC_SERVICE_PORT: i32 = 50051;
/// Port of the gateway Service's `metrics` port.
pub const GATEWAY_METRICS_SERVICE_PORT: i32 = 8080;
/// Riva's gRPC port.
pub const RIVA_GRPC_PORT: i32 = 50051;
/// Triton's HTTP port inside Riva.
pub const RIVA_HTTP_PORT: i32 = 8000;
/// Triton's gRPC port inside Riva.
pub const RIVA_TRITON_GRPC_PORT: i32 = 8001;
/// Triton's Prometheus metrics port inside Riva.
pub const RIVA_METRICS_PORT: i32 = 8002;

/// A component of a pipeline: the `app.kubernetes.io/component` label of its children.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// Gateway Deployment, Service, PDB, config ConfigMap, ServiceMonitor.
    Gateway,
    /// Riva Deployment, Service, ServiceMonitor.
    Riva,
    /// PrometheusRule.
    Alerts,
    /// Dashboard ConfigMap.
    Dashboards,
}

impl Component {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Riva => "riva",
            Self::Alerts => "alerts",
            Self::Dashboards => "dashboards",
        }
    }
}

/// Why a pipeline cannot be built. Each names the field and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidateError {
    /// Missing metadata the API server always sets (only in `render` of a careless file).
    #[error("metadata.{0} is missing")]
    MissingMetadata(&'static str),
    /// A field breaks a rule the CRD also enforces.
    #[error("{field}: {message}")]
    Field {
        /// JSON path of the field.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl ValidateError {
    fn field(field: &'static str, message: impl Into<String>) -> Self {
        Self::Field {
            field,
            message: message.into(),
        }
    }
}

/// A pipeline that passed validation, with the names and values every builder needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Validated {
    /// Pipeline name.
    pub name: String,
    /// Pipeline namespace.
    pub namespace: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Controller owner reference for children in the pipeline's namespace (absent when
    /// rendering a file that was never stored: it has no uid).
    pub owner: Option<OwnerReference>,
    /// The spec, defaults applied.
    pub spec: VoicePipelineSpec,
    /// `RIVA_URI` of the gateway.
    pub riva_uri: String,
    /// Namespace of the dashboard ConfigMap.
    pub dashboards_namespace: String,
}

impl Validated {
    /// Name of a child of this component.
    pub fn child_name(&self, c: Component) -> String {
        match c {
            Component::Gateway => format!("{}-gateway", self.name),
            Component::Riva => format!("{}-riva", self.name),
            Component::Alerts => format!("{}-alerts", self.name),
            Component::Dashboards => dashboard_name(&self.namespace, &self.name),
        }
    }

    /// Whether Riva is run by the operator.
    pub fn riva_managed(&self) -> bool {
        self.spec.riva.managed.is_some()
    }

    /// In-cluster gRPC endpoint of the gateway.
    pub fn gateway_endpoint(&self) -> String {
        format!(
            "{}.{}.svc:{}",
            self.child_name(Component::Gateway),
            self.namespace,
            GATEWAY_GRPC_SERVICE_PORT
        )
    }

    /// Whether the dashboards live outside the pipeline's namespace (owner references cannot
    /// reach them: a finalizer removes them).
    pub fn dashboards_elsewhere(&self) -> bool {
        self.spec.observability.dashboards.enabled && self.dashboards_namespace != self.namespace
    }

    /// Recommended labels of a child of `component`.
    pub fn labels(&self, component: Component) -> BTreeMap<String, String> {
        let mut l = self.selector_labels(component);
        l.insert("app.kubernetes.io/part-of".into(), PART_OF.into());
        l.insert("app.kubernetes.io/managed-by".into(), OPERATOR.into());
        l
    }

    /// The labels a Deployment selects its pods by (immutable once created).
    pub fn selector_labels(&self, component: Component) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".into(), APP_NAME.into()),
            ("app.kubernetes.io/instance".into(), self.name.clone()),
            (
                "app.kubernetes.io/component".into(),
                component.as_str().into(),
            ),
        ])
    }

    /// Selector of every child this operator made for this pipeline.
    pub fn all_children_selector(name: &str) -> String {
        format!("app.kubernetes.io/managed-by={OPERATOR},app.kubernetes.io/instance={name}")
    }
}

/// The validate step.
pub fn validate(vp: &VoicePipeline) -> Result<Validated, ValidateError> {
    let name = vp
        .metadata
        .name
        .clone()
        .ok_or(ValidateError::MissingMetadata("name"))?;
    let namespace = vp
        .metadata
        .namespace
        .clone()
        .ok_or(ValidateError::MissingMetadata("namespace"))?;
    if name.len() > MAX_NAME_LEN || !is_dns1035(&name) {
        return Err(ValidateError::field(
            "metadata.name",
            format!("must be a DNS-1035 label of at most {MAX_NAME_LEN} characters"),
        ));
    }
    let spec = &vp.spec;
    let riva_uri = match (&spec.riva.managed, &spec.riva.external) {
        (Some(_), None) => format!("{name}-riva.{namespace}.svc:{RIVA_GRPC_PORT}"),
        (None, Some(ext)) => ext.uri.clone(),
        _ => {
            return Err(ValidateError::field(
                "spec.riva",
                "set exactly one of riva.managed or riva.external",
            ));
        }
    };
    if !(spec.llm.url.starts_with("http://") || spec.llm.url.starts_with("https://")) {
        return Err(ValidateError::field(
            "spec.llm.url",
            "must start with http:// or https://",
        ));
    }
    if spec.gateway.grpc_port == spec.gateway.metrics_port {
        return Err(ValidateError::field(
            "spec.gateway.metricsPort",
            "must differ from grpcPort",
        ));
    }
    let sm = &spec.observability.service_monitor;
    match (
        parse_duration_ms(&sm.interval),
        parse_duration_ms(&sm.scrape_timeout),
    ) {
        (Some(i), Some(t)) if t <= i => {}
        (Some(_), Some(_)) => {
            return Err(ValidateError::field(
                "spec.observability.serviceMonitor.scrapeTimeout",
                "must not be longer than the interval",
            ));
        }
        _ => {
            return Err(ValidateError::field(
                "spec.observability.serviceMonitor",
                "interval and scrapeTimeout must be durations such as 15s or 1m",
            ));
        }
    }
    let owner = vp.controller_owner_ref(&());
    let owner = owner.filter(|o| !o.uid.is_empty());
    let dashboards_namespace = spec
        .observability
        .dashboards
        .namespace
        .clone()
        .unwrap_or_else(|| namespace.clone());
    Ok(Validated {
        generation: vp.meta().generation,
        name: vp.name_any(),
        namespace,
        owner,
        spec: spec.clone(),
        riva_uri,
        dashboards_namespace,
    })
}

fn is_dns1035(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && !s.ends_with('-')
}

/// Milliseconds of a duration like `15s`, `500ms`, `1m`, `2h`.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mul = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    Some(n * mul)
}

/// Name of the dashboard ConfigMap of pipeline `namespace/name`: `voice-dashboard.<namespace>.<name>`.
///
/// Unique across namespaces, since dashboards of many pipelines may share Grafana's: dots
/// separate the parts, and neither a namespace nor a pipeline name has one.
pub fn dashboard_name(namespace: &str, name: &str) -> String {
    format!("voice-dashboard.{namespace}.{name}")
}

/// The name [`dashboard_name`] gave before: `voice-dashboard-<namespace>-<name>`. Two pipelines
/// could share it (`prod` in `voice-eu`, `eu-prod` in `voice`), so only one labelled as this
/// pipeline's is removed, once the dashboard under its new name is in place.
pub fn legacy_dashboard_name(namespace: &str, name: &str) -> String {
    format!("voice-dashboard-{namespace}-{name}")
}

/// Whether `o` carries the operator's labels for pipeline `namespace/name`.
pub fn belongs_to<K: Resource>(o: &K, namespace: &str, name: &str) -> bool {
    owner_of(o).is_some_and(|r| r.name == name && r.namespace.as_deref() == Some(namespace))
}

/// The pipeline a child belongs to, from the operator's labels.
pub fn owner_of<K: Resource>(o: &K) -> Option<ObjectRef<DeserializeGuard<VoicePipeline>>> {
    let l = o.labels();
    if l.get("app.kubernetes.io/managed-by").map(String::as_str) != Some(OPERATOR) {
        return None;
    }
    let name = l.get("app.kubernetes.io/instance")?;
    let ns = l
        .get(LABEL_PIPELINE_NAMESPACE)
        .cloned()
        .or_else(|| o.namespace())?;
    Some(ObjectRef::new(name).within(&ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;
    use k8s_openapi::api::core::v1::ConfigMap;

    #[test]
    fn validates_the_minimal_example() {
        let v = validate(&testdata::external()).unwrap();
        assert_eq!(v.riva_uri, "riva-api.riva.svc:50051");
        assert_eq!(v.gateway_endpoint(), "demo-gateway.voice.svc:50051");
        assert_eq!(v.dashboards_namespace, "voice");
        assert!(v.owner.is_some());
    }

    #[test]
    fn dashboard_names_of_pipelines_in_different_namespaces_differ() {
        // The old names of `voice-eu/prod` and `voice/eu-prod` were the same.
        assert_eq!(
            legacy_dashboard_name("voice-eu", "prod"),
            legacy_dashboard_name("voice", "eu-prod")
        );
        assert_eq!(
            dashboard_name("voice-eu", "prod"),
            "voice-dashboard.voice-eu.prod"
        );
        assert_ne!(
            dashboard_name("voice-eu", "prod"),
            dashboard_name("voice", "eu-prod")
        );
        let v = validate(&testdata::external()).unwrap();
        assert_eq!(
            v.child_name(Component::Dashboards),
            "voice-dashboard.voice.demo"
        );
    }

    #[test]
    fn a_child_belongs_to_the_pipeline_its_labels_name() {
        let v = validate(&testdata::external()).unwrap();
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some("grafana".into());
        cm.metadata.labels = Some(v.labels(Component::Dashboards));
        // Without the pipeline-namespace label, a child is of its own namespace's pipeline.
        assert!(belongs_to(&cm, "grafana", "demo"));
        assert!(!belongs_to(&cm, "voice", "demo"));
        cm.labels_mut()
            .insert(LABEL_PIPELINE_NAMESPACE.into(), "voice".into());
        assert!(belongs_to(&cm, "voice", "demo"));
        assert!(!belongs_to(&cm, "voice", "other"));
        assert!(!belongs_to(&cm, "grafana", "demo"));
        cm.labels_mut()
            .insert("app.kubernetes.io/managed-by".into(), "someone-else".into());
        assert!(!belongs_to(&cm, "voice", "demo"));
    }

    #[test]
    fn managed_riva_uri_points_at_its_service() {
        let v = validate(&testdata::managed()).unwrap();
        assert_eq!(v.riva_uri, "demo-riva.voice.svc:50051");
    }

    #[test]
    fn rejects_what_the_schema_also_rejects() {
        let mut vp = testdata::external();
        vp.spec.riva.managed = testdata::managed().spec.riva.managed;
        assert!(matches!(
            validate(&vp),
            Err(ValidateError::Field {
                field: "spec.riva",
                ..
            })
        ));

        let mut vp = testdata::external();
        vp.spec.observability.service_monitor.scrape_timeout = "1m".into();
        assert!(
            validate(&vp)
                .unwrap_err()
                .to_string()
                .contains("scrapeTimeout")
        );

        let mut vp = testdata::external();
        vp.metadata.name = Some("9lives".into());
        assert!(validate(&vp).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("15s"), Some(15_000));
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("2h"), Some(7_200_000));
        assert_eq!(parse_duration_ms("1d"), None);
        assert_eq!(parse_duration_ms("s"), None);
    }
}
