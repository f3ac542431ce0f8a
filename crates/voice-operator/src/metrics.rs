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
    /// 1 while this replica holds the leader Lease (`voice_operator_leader`).
    pub leader: Gauge,
    /// Pipelines in the watch caches (`voice_operator_pipelines`).
    pub pipelines: Gauge,
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
        };
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
        m
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
