//! Retries of failed passes, with a backoff per pipeline.
//!
//! A pass ends [`Pass::Done`] (nothing left until something changes) or [`Pass::Retry`] (a
//! child could not be applied: the status says why, and the pass runs again). A pass that
//! returns an error (its own status or finalizer could not be written) is retried the same
//! way, by the controller's error policy. The wait before a retry doubles with each failed
//! pass of the same pipeline, from 1 s up to 5 minutes, and starts again from 1 s after a
//! clean pass:
//!
//! ```text
//!  failed passes in a row   1    2    3    4    5    6     7     8     9      10 and on
//!  wait before the next     1 s  2 s  4 s  8 s  16 s 32 s  64 s  128 s 256 s  300 s
//! ```
//!
//! So a child the API server refuses for good (a dashboard namespace that does not exist, an
//! RBAC rule that is missing) costs a few failed writes an hour, not one a second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::controller::Action;

use crate::service_lane::PipelineRef;

/// What a pass of one pipeline left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Everything is applied: wait for a change of the pipeline or of a child.
    Done,
    /// Something failed; run the pass again after the pipeline's backoff.
    Retry,
}

/// The wait before the next pass after `failures` failed passes in a row (1 or more).
pub fn retry_delay(failures: u32) -> Duration {
    Duration::from_millis((500u64 << failures.min(10)).min(300_000))
}

/// Consecutive failed passes per pipeline.
#[derive(Debug, Default)]
pub struct Backoff(Mutex<HashMap<PipelineRef, u32>>);

impl Backoff {
    /// The controller's next action for `key` after a pass that ended in `pass`: a clean
    /// pass forgets the pipeline's failures; a failed one counts and waits [`retry_delay`].
    pub fn after(&self, key: &PipelineRef, pass: Pass) -> Action {
        let mut failures = self.0.lock().expect("not poisoned");
        match pass {
            Pass::Done => {
                failures.remove(key);
                Action::await_change()
            }
            Pass::Retry => {
                let n = failures.entry(key.clone()).or_insert(0);
                *n = n.saturating_add(1);
                Action::requeue(retry_delay(*n))
            }
        }
    }

    /// Forgets a pipeline that is gone.
    pub fn forget(&self, namespace: Option<&str>, name: &str) {
        let mut key = PipelineRef::new(name);
        key.namespace = namespace.map(String::from);
        self.0.lock().expect("not poisoned").remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, name: &str) -> PipelineRef {
        PipelineRef::new(name).within(ns)
    }

    #[test]
    fn the_wait_doubles_from_one_second_to_five_minutes() {
        let waits: Vec<u64> = (1..=12).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn failed_passes_wait_longer_each_time_until_a_clean_pass() {
        let b = Backoff::default();
        let demo = key("a", "demo");
        let secs = |d| Action::requeue(Duration::from_secs(d));
        assert_eq!(b.after(&demo, Pass::Retry), secs(1));
        assert_eq!(b.after(&demo, Pass::Retry), secs(2));
        assert_eq!(b.after(&demo, Pass::Retry), secs(4));
        // Another pipeline, even of the same name elsewhere, has its own count.
        assert_eq!(b.after(&key("b", "demo"), Pass::Retry), secs(1));
        assert_eq!(b.after(&demo, Pass::Done), Action::await_change());
        assert_eq!(b.after(&demo, Pass::Retry), secs(1));
        b.forget(Some("a"), "demo");
        assert_eq!(b.after(&demo, Pass::Retry), secs(1), "forgotten");
        assert_eq!(
            b.after(&key("b", "demo"), Pass::Retry),
            secs(2),
            "the other pipeline's count stays"
        );
    }
}
