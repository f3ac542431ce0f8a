//! The operator's own Prometheus metrics, served on the admin port's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of an error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// CamelCase reason (e.g. `ApplyFailed`, `InvalidSpec`, `Forbidden`).
    pub reason: String,
}

/// Labels of an API write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// Kind of the object written.
    pub kind: String,
    /// `apply`, `delete`, `status`, `finalizer`.
    pub verb: String,
}

/// Labels of the pipelines-by-condition gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    /// `Ready`, `Stalled` or `Reconciling` (kstatus).
    pub condition: String,
    /// `True`, `False` or `Unknown` (also: no such condition yet).
    pub status: String,
}

/// The conditions counted by [`Metrics::conditions`].
pub const CONDITIONS: [&str; 3] = ["Ready", "Stalled", "Reconciling"];
/// The statuses counted by [`Metrics::conditions`].
pub const CONDITION_STATUSES: [&str; 3] = ["True", "False", "Unknown"];

/// Every metric of the operator.
#[derive(Debug)]
pub struct Metrics {
    /// Reconciles run (`voice_operator_reconciles_total`).
    pub reconciles: Counter,
    /// Reconcile failures by reason (`voice_operator_reconcile_errors_total`).
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration (`voice_operator_reconcile_duration_seconds`).
    pub duration: Histogram,
    /// API writes by kind and verb (`voice_operator_api_writes_total`): flat in steady state.
    pub writes: Family<WriteLabels, Counter>,
    /// Applies skipped because the cached child already matched (`voice_operator_apply_skipped_total`).
    pub skipped: Counter,
    /// 1 while this replica leads: it holds the leader Lease, or runs without leader election
    /// (`voice_operator_leader`).
    pub leader: Gauge,
    /// Pipelines in the watch caches (`voice_operator_pipelines`).
    pub pipelines: Gauge,
    /// Pipelines in the watch caches by status of their `Ready`, `Stalled` and `Reconciling`
    /// conditions (`voice_operator_pipelines_by_condition{condition, status}`): every
    /// combination is exposed from the start, 0 on a standby replica.
    pub conditions: Family<ConditionLabels, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Counter::default(),
            errors: Family::default(),
            duration: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            writes: Family::default(),
            skipped: Counter::default(),
            leader: Gauge::default(),
            pipelines: Gauge::default(),
            conditions: Family::default(),
        };
        for condition in CONDITIONS {
            for status in CONDITION_STATUSES {
                let _ = m.conditions.get_or_create(&ConditionLabels {
                    condition: condition.into(),
                    status: status.into(),
                });
            }
        }
        registry.register(
            "voice_operator_reconciles",
            "Reconciles run",
            m.reconciles.clone(),
        );
        registry.register(
            "voice_operator_reconcile_errors",
            "Reconcile failures by reason",
            m.errors.clone(),
        );
        registry.register(
            "voice_operator_reconcile_duration_seconds",
            "Reconcile duration",
            m.duration.clone(),
        );
        registry.register(
            "voice_operator_api_writes",
            "API writes by kind and verb",
            m.writes.clone(),
        );
        registry.register(
            "voice_operator_apply_skipped",
            "Applies skipped: child already as desired",
            m.skipped.clone(),
        );
        registry.register(
            "voice_operator_leader",
            "1 while this replica leads",
            m.leader.clone(),
        );
        registry.register(
            "voice_operator_pipelines",
            "VoicePipelines in the watch cache",
            m.pipelines.clone(),
        );
        registry.register(
            "voice_operator_pipelines_by_condition",
            "VoicePipelines in the watch cache by status of their Ready, Stalled and Reconciling conditions",
            m.conditions.clone(),
        );
        m
    }

    /// Sets the pipeline gauges from the statuses of every watched pipeline (`None`: no status
    /// yet, counted as `Unknown`).
    pub fn set_pipelines<'a>(
        &self,
        statuses: impl IntoIterator<Item = Option<&'a voice_types::VoicePipelineStatus>>,
    ) {
        let mut total = 0i64;
        let mut counts = std::collections::HashMap::<(&str, &str), i64>::new();
        for st in statuses {
            total += 1;
            for condition in CONDITIONS {
                let status = st
                    .and_then(|s| s.condition(condition))
                    .and_then(|c| CONDITION_STATUSES.into_iter().find(|s| *s == c.status))
                    .unwrap_or("Unknown");
                *counts.entry((condition, status)).or_insert(0) += 1;
            }
        }
        self.pipelines.set(total);
        for condition in CONDITIONS {
            for status in CONDITION_STATUSES {
                self.conditions
                    .get_or_create(&ConditionLabels {
                        condition: condition.into(),
                        status: status.into(),
                    })
                    .set(counts.get(&(condition, status)).copied().unwrap_or(0));
            }
        }
    }

    /// Counts an API write.
    pub fn write(&self, kind: &str, verb: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.into(),
                verb: verb.into(),
            })
            .inc();
    }

    /// Counts a failed reconcile.
    pub fn error(&self, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                reason: reason.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(conditions: &[(&str, &str)]) -> voice_types::VoicePipelineStatus {
        serde_json::from_value(serde_json::json!({
            "conditions": conditions.iter().map(|(t, s)| serde_json::json!({
                "type": t, "status": s, "reason": "R", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            })).collect::<Vec<_>>(),
        }))
        .expect("status")
    }

    #[test]
    fn pipelines_counted_by_condition() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let ready = status(&[
            ("Ready", "True"),
            ("Stalled", "False"),
            ("Reconciling", "False"),
        ]);
        let stalled = status(&[
            ("Ready", "False"),
            ("Stalled", "True"),
            ("Reconciling", "False"),
        ]);
        m.set_pipelines([Some(&ready), Some(&ready), Some(&stalled), None]);
        let get = |c: &str, s: &str| {
            m.conditions
                .get_or_create(&ConditionLabels {
                    condition: c.into(),
                    status: s.into(),
                })
                .get()
        };
        assert_eq!(m.pipelines.get(), 4);
        assert_eq!(get("Ready", "True"), 2);
        assert_eq!(get("Ready", "False"), 1);
        assert_eq!(get("Ready", "Unknown"), 1);
        assert_eq!(get("Stalled", "True"), 1);
        assert_eq!(get("Reconciling", "True"), 0);
        // Back to none: every series stays, at 0.
        m.set_pipelines([]);
        assert_eq!(get("Stalled", "True"), 0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert_eq!(
            text.matches("voice_operator_pipelines_by_condition{")
                .count(),
            9,
            "{text}"
        );
    }
}
