//! The simulator's waits, which end at their deadlines rather than up to a millisecond later.
//!
//! tokio's timer wheel ticks every millisecond and rounds each deadline up to the next tick, so a
//! profile's 0 ms wait took 0–1 ms and its 70 ms wait 70–71 ms, a different amount on each call.
//! The benchmarks compare a turn through the gateway with a direct turn beside it, so that jitter
//! was counted twice in their difference. Here a deadline that has already passed returns at
//! once (the zero profile never waits), and later ones are kept by one thread that sleeps with
//! the OS's high-resolution timer (a futex timeout: tens of microseconds late, not a tick).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Waits until `deadline`; returns at once when it has passed.
pub async fn until(deadline: Instant) {
    if Instant::now() >= deadline {
        return;
    }
    let (tx, rx) = oneshot::channel();
    TIMER.add(deadline, tx);
    // The timer thread never drops a sender unsent, so this only ends at the deadline.
    let _ = rx.await;
}

/// Waits for `d` from now; returns at once when `d` is zero.
pub async fn after(d: Duration) {
    until(Instant::now() + d).await;
}

/// A wait: its deadline, the order it came in (equal deadlines end in that order), and the
/// sender that ends it.
#[derive(Debug)]
struct Pending {
    at: Instant,
    seq: u64,
    tx: oneshot::Sender<()>,
}

impl Pending {
    fn key(&self) -> (Instant, u64) {
        (self.at, self.seq)
    }
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// Pending waits, earliest first.
#[derive(Debug, Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Pending>>,
    next: u64,
}

#[derive(Debug)]
struct Timer {
    queue: Mutex<Queue>,
    changed: Condvar,
}

static TIMER: LazyLock<&'static Timer> = LazyLock::new(|| {
    let t: &'static Timer = Box::leak(Box::new(Timer {
        queue: Mutex::new(Queue::default()),
        changed: Condvar::new(),
    }));
    std::thread::Builder::new()
        .name("voice-sim-clock".into())
        .spawn(move || t.run())
        .expect("voice-sim: cannot start the clock thread");
    t
});

impl Timer {
    fn add(&self, deadline: Instant, tx: oneshot::Sender<()>) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let earliest = q.heap.peek().map(|Reverse(p)| p.at);
        let seq = q.next;
        q.next += 1;
        q.heap.push(Reverse(Pending {
            at: deadline,
            seq,
            tx,
        }));
        drop(q);
        if earliest.is_none_or(|e| deadline < e) {
            self.changed.notify_one();
        }
    }

    /// Sends each sender when its deadline comes; sleeps until the earliest one in between.
    fn run(&self) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            while q.heap.peek().is_some_and(|Reverse(p)| p.at <= now) {
                if let Some(Reverse(p)) = q.heap.pop() {
                    let _ = p.tx.send(());
                }
            }
            q = match q.heap.peek().map(|Reverse(p)| p.at) {
                Some(at) => {
                    self.changed
                        .wait_timeout(q, at.saturating_duration_since(now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.changed.wait(q).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_passed_deadline_is_ready_on_the_first_poll() {
        let now = Instant::now();
        assert!(until(now).now_or_never().is_some());
        assert!(after(Duration::ZERO).now_or_never().is_some());
        // What this replaces: tokio rounds the deadline up to its next millisecond tick.
        assert!(
            tokio::time::sleep_until(now.into())
                .now_or_never()
                .is_none()
        );
        assert!(after(Duration::from_millis(5)).now_or_never().is_none());
    }

    #[tokio::test]
    async fn waits_end_in_deadline_order_and_not_before() {
        let start = Instant::now();
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for ms in [30u64, 10, 20, 10] {
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let at = start + Duration::from_millis(ms);
                until(at).await;
                assert!(Instant::now() >= at);
                order.lock().unwrap().push(ms);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [10, 10, 20, 30]);
    }
}
