//! The voice-operator: keeps the cluster matching each `VoicePipeline`.
//!
//! Reconcile is a pipeline of steps, each in its own module with its own error type:
//!
//! ```text
//!  watch events ─► reconcile(pipeline)
//!                    │ read      the pipeline (DeserializeGuard: a malformed one is skipped)
//!                    │ validate  model::validate        (pure)  → Validated | Stalled
//!                    │ build     build::build           (pure)  → Children
//!                    │ apply     apply::Applier         (SSA, force, field manager voice-operator/<scope>)
//!                    │           service_lane::ServiceLane: new Services, a few at a time, off the pass
//!                    │           + delete the children a switched-off component no longer has
//!                    │ observe   pods::PodProblems: why a gateway or Riva pod does not start
//!                    │           (a read-only pod watch; only the problems are kept)
//!                    └ status    status::compute        (pure)  → written only when it changed
//!                  ─► backoff::Backoff: a failed pass runs again after 1 s, 2 s, 4 s, … 5 min
//! ```
//!
//! `controller` wires the steps to kube-runtime; `admin` serves `/metrics`, `/livez`,
//! `/readyz`; `leader` holds a coordination.k8s.io Lease so that only one replica reconciles.
#![forbid(unsafe_code)]

pub mod admin;
pub mod apply;
pub mod backoff;
pub mod build;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod monitoring_crds;
pub mod pods;
pub mod render;
pub mod service_lane;
pub mod status;

#[cfg(test)]
mod testdata;
