//! `spec` of a [`VoicePipeline`]: what the user declares.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::VoicePipelineStatus;

/// CEL rule of the label maps (labels, node selectors): every key a Kubernetes label key
/// (`[prefix/]name`, the name at most 63 characters), every value a label value.
const LABELS_RULE: &str = "self.all(k, k.size() <= 317 && k.matches('^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$') && self[k].matches('^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$'))";
/// The message of [`LABELS_RULE`].
const LABELS_MESSAGE: &str = "keys must be label keys ([prefix/]name, the name at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric) and values label values (at most 63 such characters, or empty)";

/// Longest pipeline name: children are named `<name>-gateway`, `<name>-riva`, … and a Service
/// name is a DNS-1035 label of at most 63 characters.
pub const MAX_NAME_LEN: usize = 50;

// === VoicePipeline ===

/// A whole voice-to-voice pipeline: the voice gateway, the NVIDIA Riva speech backend (managed
/// on GPU or external), the LLM endpoint it talks to, and the monitoring around them. The
/// voice-operator creates and keeps every child object; read `status.conditions` (`Ready`,
/// `Reconciling`, `Stalled`, one per component) for what it is doing.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "voice.workflow.io",
    version = "v1alpha1",
    kind = "VoicePipeline",
    plural = "voicepipelines",
    singular = "voicepipeline",
    shortname = "vp",
    category = "voice",
    namespaced,
    status = "VoicePipelineStatus",
    derive = "PartialEq",
    doc = "A voice-to-voice pipeline (gateway, Riva ASR/TTS, LLM endpoint, monitoring) kept by the voice-operator.",
    validation = Rule::new("self.metadata.name.size() <= 50 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS-1035 label of at most 50 characters (lower-case letters, digits and '-', starting with a letter): children are named <name>-gateway, <name>-riva"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether every component is available"),
    printcolumn(name = "Gateway", type_ = "string", json_path = ".status.gateway.ready", description = "Gateway pods ready/desired"),
    printcolumn(name = "Riva", type_ = "string", json_path = ".status.riva.ready", description = "Riva pods ready/desired, or 'external'"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1, description = "Why the pipeline is (not) ready"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.gateway.endpoint", priority = 1, description = "In-cluster gRPC endpoint of the gateway"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct VoicePipelineSpec {
    /// The voice gateway: the gRPC `StreamAudio` service clients connect to. It streams audio
    /// to Riva ASR, the transcript to the LLM, and the LLM's sentences to Riva TTS.
    #[serde(default)]
    pub gateway: GatewaySpec,

    /// The OpenAI-compatible LLM endpoint the gateway streams chat completions from
    /// (NVIDIA NIM, vLLM, Ollama, …) and the generation settings.
    pub llm: LlmSpec,

    /// NVIDIA Riva (ASR and TTS): set exactly one of `managed` (the operator runs Riva on GPU
    /// nodes) or `external` (an existing Riva endpoint).
    pub riva: RivaSpec,

    /// Prometheus Operator ServiceMonitors and PrometheusRule, and Grafana dashboards.
    #[serde(default)]
    pub observability: ObservabilitySpec,
}

// === gateway ===

/// How the voice gateway runs and how it talks to its backends.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.grpcPort != self.metricsPort", "message": "gateway.grpcPort and gateway.metricsPort must differ"}
]))]
pub struct GatewaySpec {
    /// Container image of the voice gateway.
    #[serde(default = "default_gateway_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// Image pull policy of the gateway container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// Number of gateway pods. A PodDisruptionBudget (maxUnavailable 1) is created when
    /// this is greater than 1.
    #[serde(default = "default_gateway_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,

    /// CPU and memory of the gateway container.
    #[serde(default = "default_gateway_resources")]
    pub resources: ResourceRequirements,

    /// Port of the gRPC `StreamAudio` service and of the standard gRPC health service
    /// (env `GRPC_PORT`). The Service always exposes it as port 50051 named `grpc`.
    #[serde(default = "default_grpc_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub grpc_port: i32,

    /// Port of the HTTP `/metrics`, `/livez` and `/readyz` endpoints (env `METRICS_PORT`).
    /// The Service always exposes it as port 8080 named `metrics`.
    #[serde(default = "default_metrics_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub metrics_port: i32,

    /// Most audio streams one gateway pod serves at once; further streams are refused with
    /// RESOURCE_EXHAUSTED (env `MAX_CONCURRENT_STREAMS`).
    #[serde(default = "default_max_streams")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_concurrent_streams: i32,

    /// Seconds the gateway lets open streams finish after SIGTERM (env
    /// `SHUTDOWN_GRACE_PERIOD`). The pod's terminationGracePeriodSeconds is 15 s longer.
    #[serde(default = "default_shutdown_grace")]
    #[schemars(range(min = 0, max = 3600))]
    pub shutdown_grace_period_seconds: i32,

    /// Log level of the gateway (env `LOG_LEVEL`).
    #[serde(default)]
    pub log_level: LogLevel,

    /// Speech recognition settings the gateway sends to Riva ASR.
    #[serde(default)]
    pub asr: AsrSpec,

    /// Speech synthesis settings the gateway sends to Riva TTS.
    #[serde(default)]
    pub tts: TtsSpec,

    /// Node labels the gateway pods must match (at most 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "maxProperties" = 32,
        "additionalProperties" = {"type": "string", "maxLength": 63},
        "x-kubernetes-validations" = [{"rule": LABELS_RULE, "message": LABELS_MESSAGE}]
    ))]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Tolerations of the gateway pods (at most 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub tolerations: Option<Vec<Toleration>>,
}

impl Default for GatewaySpec {
    fn default() -> Self {
        Self {
            image: default_gateway_image(),
            image_pull_policy: None,
            replicas: default_gateway_replicas(),
            resources: default_gateway_resources(),
            grpc_port: default_grpc_port(),
            metrics_port: default_metrics_port(),
            max_concurrent_streams: default_max_streams(),
            shutdown_grace_period_seconds: default_shutdown_grace(),
            log_level: LogLevel::default(),
            asr: AsrSpec::default(),
            tts: TtsSpec::default(),
            node_selector: None,
            tolerations: None,
        }
    }
}

/// Image pull policy of the container: when the kubelet pulls its image. Default: the
/// cluster's (`IfNotPresent`, or `Always` for a `:latest` tag).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Pull on every start.
    Always,
    /// Pull only when the image is not on the node.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Log verbosity.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal operation.
    #[default]
    Info,
    /// Problems only.
    Warn,
    /// Failures only.
    Error,
}

impl LogLevel {
    /// The spelling of `LOG_LEVEL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// Speech recognition settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AsrSpec {
    /// BCP-47 language code of the speech (env `ASR_LANGUAGE`), e.g. `en-US`, `de-DE`, or
    /// `multi` for Riva's multilingual models.
    #[serde(default = "default_language")]
    #[schemars(
        length(min = 2, max = 35),
        regex(pattern = r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")
    )]
    pub language: String,

    /// Sample rate in Hz of the audio clients send (env `ASR_SAMPLE_RATE`).
    #[serde(default = "default_sample_rate")]
    #[schemars(range(min = 8000, max = 48000))]
    pub sample_rate: i32,
}

impl Default for AsrSpec {
    fn default() -> Self {
        Self {
            language: default_language(),
            sample_rate: default_sample_rate(),
        }
    }
}

/// Speech synthesis settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TtsSpec {
    /// Riva voice name (env `TTS_VOICE`), e.g. `English-US.Female-1`. Empty: the language's
    /// default voice.
    #[serde(default)]
    #[schemars(length(max = 128))]
    pub voice: String,

    /// Sample rate in Hz of the audio sent back to clients (env `TTS_SAMPLE_RATE`).
    #[serde(default = "default_sample_rate")]
    #[schemars(range(min = 8000, max = 48000))]
    pub sample_rate: i32,
}

impl Default for TtsSpec {
    fn default() -> Self {
        Self {
            voice: String::new(),
            sample_rate: default_sample_rate(),
        }
    }
}

// === llm ===

/// The OpenAI-compatible LLM endpoint and generation settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LlmSpec {
    /// Base URL of the OpenAI-compatible API, usually ending in `/v1`, e.g.
    /// `http://llm-nim.nim.svc:8000/v1` (env `LLM_SERVICE_URL`); the gateway posts to
    /// `{url}/chat/completions`.
    #[schemars(length(min = 8, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.startsWith('http://') || self.startsWith('https://')", "message": "llm.url must start with http:// or https://"},
        {"rule": "isURL(self) && url(self).getHostname() != ''", "message": "llm.url must be an absolute URL with a host, e.g. http://llm.example.svc:8000/v1"},
        {"rule": "!self.contains('?') && !self.contains('#')", "message": "llm.url must be a base URL without query or fragment"}
    ]))]
    pub url: String,

    /// Model name sent in each request (env `LLM_MODEL`).
    #[serde(default = "default_llm_model")]
    #[schemars(length(min = 1, max = 256))]
    pub model: String,

    /// Secret key holding the API key sent as `Authorization: Bearer` (env `LLM_API_KEY`).
    /// Omit for endpoints without authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,

    /// Sampling temperature (env `LLM_TEMPERATURE`).
    #[serde(default = "default_temperature")]
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: f64,

    /// Most tokens generated per answer (env `LLM_MAX_TOKENS`).
    #[serde(default = "default_max_tokens")]
    #[schemars(range(min = 1, max = 32768))]
    pub max_tokens: i32,

    /// System prompt (env `LLM_SYSTEM_PROMPT`). Everything the LLM writes is read aloud: ask
    /// for short, spoken-style answers without markdown.
    #[serde(default = "default_system_prompt")]
    #[schemars(length(max = 16384))]
    pub system_prompt: String,
}

/// A key of a Secret in the pipeline's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the pipeline's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

// === riva ===

/// Riva: exactly one of `managed` or `external`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.managed) != has(self.external)", "message": "riva: set exactly one of riva.managed (the operator runs Riva) or riva.external (an existing endpoint)"}
]))]
pub struct RivaSpec {
    /// The operator runs Riva as a Deployment on GPU nodes, with a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRiva>,

    /// An existing Riva endpoint; the operator creates nothing for Riva.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRiva>,
}

/// An existing Riva server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRiva {
    /// gRPC endpoint as `host:port` (env `RIVA_URI`), e.g. `riva-api.riva.svc:50051`.
    #[schemars(
        length(min = 3, max = 261),
        regex(pattern = r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?:[0-9]{1,5}$")
    )]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "int(self.split(':')[1]) >= 1 && int(self.split(':')[1]) <= 65535", "message": "riva.external.uri: the port must be between 1 and 65535"}
    ]))]
    pub uri: String,

    /// TLS to Riva (env `RIVA_USE_TLS`): present, even empty (`tls: {}`), the gateway speaks
    /// TLS, trusting the public web PKI roots unless `caSecretRef` names its CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RivaTls>,

    /// Secret key whose value is the gRPC metadata sent with every Riva call, as
    /// `key=value,key=value` (env `RIVA_METADATA`), e.g. the `authorization` and `function-id`
    /// of a Riva hosted on NVIDIA's cloud functions. From a Secret: it usually holds a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_secret_ref: Option<SecretKeyRef>,
}

/// TLS to an external Riva.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RivaTls {
    /// Secret key holding the PEM CA certificates to trust for Riva (e.g. the `ca.crt` of a
    /// cert-manager Secret), mounted into the gateway (env `RIVA_SSL_CERT`). Empty: the
    /// public web PKI roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// Riva run by the operator on GPU nodes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedRiva {
    /// Container image of the Riva speech server.
    #[serde(default = "default_riva_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// Image pull policy of the Riva container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// Number of Riva pods.
    #[serde(default = "default_riva_replicas")]
    #[schemars(range(min = 0, max = 16))]
    pub replicas: i32,

    /// GPUs per Riva pod.
    #[serde(default)]
    pub gpu: GpuSpec,

    /// CPU and memory of the Riva container (the GPU limit is set from `gpu`).
    #[serde(default = "default_riva_resources")]
    pub resources: ResourceRequirements,

    /// Where Riva's deployed models live (mounted at `/data`).
    pub model_repository: ModelRepository,

    /// Secret key holding the NGC API key (env `NGC_API_KEY`), used to fetch models.
    pub ngc_api_key_secret_ref: SecretKeyRef,

    /// Node labels the Riva pods must match (at most 32).
    #[serde(default = "default_gpu_node_selector")]
    #[schemars(extend(
        "maxProperties" = 32,
        "additionalProperties" = {"type": "string", "maxLength": 63},
        "x-kubernetes-validations" = [{"rule": LABELS_RULE, "message": LABELS_MESSAGE}]
    ))]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the Riva pods (GPU nodes are usually tainted; at most 32).
    #[serde(default = "default_gpu_tolerations")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,

    /// Size of the in-memory `/dev/shm` (Triton passes tensors through shared memory).
    #[serde(default = "default_shm_size")]
    pub shm_size: Quantity,

    /// Seconds Riva may take to load its models before the startup probe gives up (model
    /// loading takes 20–60 minutes on first start).
    #[serde(default = "default_startup_timeout")]
    #[schemars(range(min = 60, max = 14400))]
    pub startup_timeout_seconds: i32,
}

/// GPUs requested by each Riva pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuSpec {
    /// Number of GPUs.
    #[serde(default = "default_gpu_count")]
    #[schemars(range(min = 1, max = 16))]
    pub count: i32,

    /// Extended resource name of the GPU (device plugin), e.g. `nvidia.com/gpu` or a MIG
    /// profile such as `nvidia.com/mig-3g.40gb`.
    #[serde(default = "default_gpu_resource")]
    #[schemars(
        length(min = 3, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[-._a-zA-Z0-9]+$")
    )]
    pub resource_name: String,
}

impl Default for GpuSpec {
    fn default() -> Self {
        Self {
            count: default_gpu_count(),
            resource_name: default_gpu_resource(),
        }
    }
}

/// The model repository volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelRepository {
    /// Name of a PersistentVolumeClaim in the pipeline's namespace holding the models.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub claim_name: String,

    /// Path inside the volume to mount instead of its root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^[^/].*$"))]
    pub sub_path: Option<String>,
}

// === observability ===

/// Monitoring of the pipeline with the Prometheus Operator and Grafana.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservabilitySpec {
    /// Value of the `release` label on the ServiceMonitors and the PrometheusRule:
    /// kube-prometheus-stack selects them by its own Helm release name. Empty: no label.
    #[serde(default = "default_release")]
    #[schemars(length(max = 63))]
    pub release: String,

    /// ServiceMonitors for the gateway's and Riva/Triton's metrics.
    #[serde(default)]
    pub service_monitor: ServiceMonitorSpec,

    /// Alerting rules for this pipeline.
    #[serde(default)]
    pub prometheus_rule: PrometheusRuleSpec,

    /// Grafana dashboards as ConfigMaps for Grafana's dashboard sidecar.
    #[serde(default)]
    pub dashboards: DashboardsSpec,
}

impl Default for ObservabilitySpec {
    fn default() -> Self {
        Self {
            release: default_release(),
            service_monitor: ServiceMonitorSpec::default(),
            prometheus_rule: PrometheusRuleSpec::default(),
            dashboards: DashboardsSpec::default(),
        }
    }
}

/// The ServiceMonitors (monitoring.coreos.com/v1).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "duration(self.scrapeTimeout) <= duration(self.interval)", "message": "serviceMonitor.scrapeTimeout must not be longer than serviceMonitor.interval"}
]))]
pub struct ServiceMonitorSpec {
    /// Create the ServiceMonitors.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Scrape interval, e.g. `15s`, `1m`.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,4}(ms|s|m|h)$"), length(max = 8))]
    pub interval: String,

    /// Scrape timeout, at most the interval.
    #[serde(default = "default_scrape_timeout")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,4}(ms|s|m|h)$"), length(max = 8))]
    pub scrape_timeout: String,

    /// Extra labels on the ServiceMonitors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 32,
        "additionalProperties" = {"type": "string", "maxLength": 63},
        "x-kubernetes-validations" = [{"rule": LABELS_RULE, "message": LABELS_MESSAGE}]
    ))]
    pub labels: BTreeMap<String, String>,
}

impl Default for ServiceMonitorSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: default_interval(),
            scrape_timeout: default_scrape_timeout(),
            labels: BTreeMap::new(),
        }
    }
}

/// The PrometheusRule (monitoring.coreos.com/v1) with this pipeline's alerts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusRuleSpec {
    /// Create the PrometheusRule.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Alert when the gateway's P95 end-to-end latency exceeds this many seconds.
    #[serde(default = "default_latency_threshold")]
    #[schemars(range(min = 0.05, max = 120.0))]
    pub e2e_latency_p95_seconds: f64,

    /// Alert when the ratio of failed requests (and of each backend's errors) exceeds this
    /// (0.05 = 5 %).
    #[serde(default = "default_error_ratio")]
    #[schemars(range(min = 0.0001, max = 1.0))]
    pub error_ratio: f64,

    /// Alert when a GPU's framebuffer use exceeds this ratio (0.9 = 90 %). The alert exists when
    /// Riva is managed, or when `gpuSelector` names the GPUs of an external Riva.
    #[serde(default = "default_gpu_memory_ratio")]
    #[schemars(range(min = 0.1, max = 1.0))]
    pub gpu_memory_ratio: f64,

    /// How long a condition must hold before an alert fires, e.g. `5m`.
    #[serde(default = "default_for")]
    #[schemars(regex(pattern = r"^[0-9]{1,5}(s|m|h)$"), length(max = 8))]
    pub for_duration: String,

    /// PromQL label matchers selecting this pipeline's GPUs in DCGM exporter series, e.g.
    /// `Hostname=~"gpu-node-.*",gpu="0"`. Default, when Riva is managed:
    /// `exported_namespace="<ns>",exported_pod=~"<name>-riva-[a-z0-9]+-[a-z0-9]+"` (the
    /// labels dcgm-exporter writes for the pod using a GPU, renamed by Prometheus because the
    /// scrape target has its own; the pods of the Riva Deployment, not those of a pipeline
    /// named `<name>-riva`).
    /// With an external Riva and no selector, there is no GPU alert and the dashboard shows
    /// every GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^ *[a-zA-Z_][a-zA-Z0-9_]* *(=|!=|=~|!~) *\"[^\"]*\" *(, *[a-zA-Z_][a-zA-Z0-9_]* *(=|!=|=~|!~) *\"[^\"]*\" *)*,? *$')",
         "message": "prometheusRule.gpuSelector must be PromQL label matchers without braces, e.g. Hostname=~\"gpu-node-.*\",gpu=\"0\""}
    ]))]
    pub gpu_selector: Option<String>,

    /// Extra labels on the PrometheusRule.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 32,
        "additionalProperties" = {"type": "string", "maxLength": 63},
        "x-kubernetes-validations" = [{"rule": LABELS_RULE, "message": LABELS_MESSAGE}]
    ))]
    pub labels: BTreeMap<String, String>,
}

impl Default for PrometheusRuleSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            e2e_latency_p95_seconds: default_latency_threshold(),
            error_ratio: default_error_ratio(),
            gpu_memory_ratio: default_gpu_memory_ratio(),
            for_duration: default_for(),
            gpu_selector: None,
            labels: BTreeMap::new(),
        }
    }
}

/// Grafana dashboards, one ConfigMap picked up by Grafana's dashboard sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DashboardsSpec {
    /// Create the dashboard ConfigMap.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Namespace of the dashboard ConfigMap (the plain Grafana chart's sidecar searches only
    /// Grafana's own namespace). Default: the pipeline's namespace. In another namespace the
    /// ConfigMap is removed on delete by the finalizer `voice.workflow.io/dashboards`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: Option<String>,

    /// Labels the sidecar selects dashboards by.
    #[serde(default = "default_dashboard_labels")]
    #[schemars(extend(
        "maxProperties" = 32,
        "additionalProperties" = {"type": "string", "maxLength": 63},
        "x-kubernetes-validations" = [{"rule": LABELS_RULE, "message": LABELS_MESSAGE}]
    ))]
    pub labels: BTreeMap<String, String>,

    /// Grafana folder (annotation `grafana_folder`, read by the sidecar when
    /// `folderAnnotation` is set). Empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub folder: Option<String>,
}

impl Default for DashboardsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            namespace: None,
            labels: default_dashboard_labels(),
            folder: None,
        }
    }
}

// === defaults ===

fn default_true() -> bool {
    true
}
fn default_gateway_image() -> String {
    "ghcr.io/voice-workflow/voice-gateway:0.1.0".into()
}
fn default_gateway_replicas() -> i32 {
    1
}
fn default_gateway_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("250m".into())),
            ("memory".into(), Quantity("128Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".into(),
            Quantity("512Mi".into()),
        )])),
        ..Default::default()
    }
}
fn default_grpc_port() -> i32 {
    50051
}
fn default_metrics_port() -> i32 {
    8080
}
fn default_max_streams() -> i32 {
    100
}
fn default_shutdown_grace() -> i32 {
    10
}
fn default_language() -> String {
    "en-US".into()
}
fn default_sample_rate() -> i32 {
    16000
}
fn default_llm_model() -> String {
    "meta/llama-3.1-8b-instruct".into()
}
fn default_temperature() -> f64 {
    0.7
}
fn default_max_tokens() -> i32 {
    256
}
/// The seed's intent: everything the LLM writes is spoken.
pub fn default_system_prompt() -> String {
    "You are a helpful voice assistant. Answer briefly in plain spoken sentences, \
     without markdown, lists, code or emoji, because everything you write is read aloud."
        .into()
}
fn default_riva_image() -> String {
    "nvcr.io/nvidia/riva/riva-speech:2.19.0".into()
}
fn default_riva_replicas() -> i32 {
    1
}
fn default_riva_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("2".into())),
            ("memory".into(), Quantity("16Gi".into())),
        ])),
        limits: Some(BTreeMap::from([("memory".into(), Quantity("32Gi".into()))])),
        ..Default::default()
    }
}
fn default_gpu_count() -> i32 {
    1
}
fn default_gpu_resource() -> String {
    "nvidia.com/gpu".into()
}
fn default_gpu_node_selector() -> BTreeMap<String, String> {
    BTreeMap::from([("nvidia.com/gpu.present".into(), "true".into())])
}
fn default_gpu_tolerations() -> Vec<Toleration> {
    vec![Toleration {
        key: Some("nvidia.com/gpu".into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }]
}
fn default_shm_size() -> Quantity {
    Quantity("8Gi".into())
}
fn default_startup_timeout() -> i32 {
    3600
}
fn default_release() -> String {
    "kube-prometheus-stack".into()
}
fn default_interval() -> String {
    "15s".into()
}
fn default_scrape_timeout() -> String {
    "10s".into()
}
fn default_latency_threshold() -> f64 {
    3.0
}
fn default_error_ratio() -> f64 {
    0.05
}
fn default_gpu_memory_ratio() -> f64 {
    0.9
}
fn default_for() -> String {
    "5m".into()
}
fn default_dashboard_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("grafana_dashboard".into(), "1".into())])
}
