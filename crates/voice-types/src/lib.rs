//! The `VoicePipeline` custom resource (`voice.workflow.io/v1alpha1`): types only, no runtime.
//!
//! ```text
//! VoicePipeline
//! ├── spec.gateway        the voice gateway Deployment (+ Service, PDB, config ConfigMap)
//! ├── spec.llm            the OpenAI-compatible LLM endpoint the gateway streams from
//! ├── spec.riva           exactly one of: managed (Deployment on GPU + Service) | external (endpoint)
//! ├── spec.observability  ServiceMonitors, PrometheusRule, Grafana dashboard ConfigMap
//! └── status              observedGeneration, kstatus conditions, replicas, endpoints
//! ```
//!
//! Every `///` comment on a field becomes the field's description in the generated CRD, so
//! `kubectl explain voicepipeline.spec --recursive` reads as the manual. Every default is a
//! `#[serde(default = ...)]` so that the schema default the API server applies and the value
//! the operator's `render` subcommand computes offline are one and the same.
//!
//! Validation lives in the schema (ranges, patterns, lengths) and in CEL rules
//! (`x-kubernetes-validations`) for what a schema cannot say (one of two, URL shape,
//! timeout ≤ interval). A bad spec is rejected at `kubectl apply` with the rule's message.
#![forbid(unsafe_code)]

mod spec;
mod status;

pub use spec::*;
pub use status::*;

/// The API group of every resource in this crate.
pub const GROUP: &str = "voice.workflow.io";
/// The API version of [`VoicePipeline`].
pub const VERSION: &str = "v1alpha1";

#[cfg(test)]
mod tests;
