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

/// Pending deadlines, earliest first; the sequence number keeps equal deadlines in order.
#[derive(Debug, Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    senders: std::collections::HashMap<u64, oneshot::Sender<()>>,
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
        let earliest = q.heap.peek().map(|Reverse((at, _))| *at);
        let id = q.next;
        q.next += 1;
        q.heap.push(Reverse((deadline, id)));
        q.senders.insert(id, tx);
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
            while let Some(&Reverse((at, id))) = q.heap.peek() {
                if at > now {
                    break;
                }
                q.heap.pop();
                if let Some(tx) = q.senders.remove(&id) {
                    let _ = tx.send(());
                }
            }
            q = match q.heap.peek() {
                Some(&Reverse((at, _))) => {
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
