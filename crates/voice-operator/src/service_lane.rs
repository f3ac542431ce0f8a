//! Service creation off the reconcile path.
//!
//! kube-apiserver (1.33+) allocates a ClusterIP, an IPAddress object, while holding one lock
//! for the whole API server (`MetaAllocator.AllocateNextService`) across a loopback create of
//! that IPAddress: Service creates run one at a time, whoever sends them, and each takes as
//! long as one API write on the server (~15 ms idle; 300–700 ms on this project's 2-core plane
//! while 1,000 Deployments roll out, by kube-apiserver's own traces: see BENCHMARKS.md, "Eighth
//! session"). When every reconcile awaited its own Service create, the reconcile slots sat in that
//! queue and every other child of every pipeline waited behind it (1,000 pipelines: ~5
//! reconciles a second). Updates of an existing Service allocate nothing.
//!
//! So a reconcile hands a Service the watch cache does not have to its controller's
//! [`ServiceLane`] and moves on; the pipeline stays `Ready=False` (`CreatingService`) meanwhile:
//!
//! ```text
//!  apply(svc) ── in the cache? ── yes ─────────────────────────────► applied inline (update/skip)
//!                     │ no
//!                     ▼
//!               entry? ── none ──► Pending; create queued ─► (SERVICE_CREATES at a time)
//!                     │                                         ├ ok:   stays Pending until the
//!                     │                                         │       watch brings the Service:
//!                     │                                         │       entry dropped, and the
//!                     │                                         │       owner-mapped event runs
//!                     │                                         │       the pipeline again
//!                     │                                         └ fail: Failed; the owner is sent
//!                     │                                                 to `retries` (reconciled)
//!                     ├ Pending ─► still pending
//!                     └ Failed ──► entry dropped, the error returned (the pass reports it and
//!                                  retries with backoff; that pass queues the create again)
//! ```
//!
//! An entry lives from the create's queueing until the watch cache has the Service (dropped
//! by [`ServiceLane::seen`] on the Service's watch event, or by the next pass), or, for a
//! failed create, until the owner's next pass, which the lane triggers. [`ServiceLane::forget`]
//! drops the entries of a pipeline that is gone. A Service deleted by someone (drift) leaves
//! the cache, so the next pass queues it again like a new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::Stream;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Service;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{Semaphore, mpsc};
use voice_types::VoicePipeline;

use crate::apply::ApplyError;

/// Service creates in flight at once, over every controller's lane: the API server's allocator
/// serves one at a time, and two keep it busy (measured: 2 in flight create as many Services
/// a second as 16). More would only wait on that lock, holding API-server request slots.
pub const SERVICE_CREATES: usize = 2;

/// A pipeline, as its controller names it.
pub type PipelineRef = ObjectRef<DeserializeGuard<VoicePipeline>>;

/// Server-side applies a Service under a field-manager scope (`voice-operator/<scope>`).
pub type ApplyService =
    Arc<dyn Fn(Service, &'static str) -> BoxFuture<'static, Result<(), ApplyError>> + Send + Sync>;

/// What [`ServiceLane::apply`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum LaneOutcome {
    /// The Service is in the watch cache: applied (or skipped as unchanged) inline.
    Applied,
    /// The Service is not in the watch cache yet: its create is queued, running, or done and
    /// not yet seen by the watch.
    Pending,
}

/// A Service the lane is creating.
#[derive(Debug)]
struct Entry {
    /// The pipeline to reconcile should the create fail.
    owner: PipelineRef,
    /// Which create this is, so that a create that finishes late cannot mark a newer one.
    attempt: u64,
    /// Where the create is.
    state: EntryState,
}

/// Where a create handed to the lane is.
#[derive(Debug)]
enum EntryState {
    /// Queued, running, or done and not yet in the watch cache.
    Pending,
    /// Failed; returned by the owner's next pass.
    Failed(ApplyError),
}

/// Creates the Services of one controller's pipelines that the watch cache does not have, a
/// few at a time, off the reconcile path. See the module docs.
pub struct ServiceLane {
    /// Applies a Service (inline and for creates).
    apply: ApplyService,
    /// Creates in flight, shared by every controller's lane.
    creates: Arc<Semaphore>,
    /// The controller's Service watch cache.
    cache: Store<Service>,
    /// Services being created.
    entries: Arc<Mutex<HashMap<ObjectRef<Service>, Entry>>>,
    /// Numbers the creates.
    attempts: std::sync::atomic::AtomicU64,
    /// Owners of failed creates, to reconcile: the controller's `reconcile_on` stream.
    retries: mpsc::UnboundedSender<PipelineRef>,
}

impl std::fmt::Debug for ServiceLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceLane").finish_non_exhaustive()
    }
}

impl ServiceLane {
    /// A lane applying with `apply`, `creates` permits being the creates in flight (shared by
    /// all lanes), reading the Service watch cache `cache`. Also returns the stream of pipelines
    /// whose Service create failed, for the controller's `reconcile_on`.
    pub fn new(
        apply: ApplyService,
        creates: Arc<Semaphore>,
        cache: Store<Service>,
    ) -> (Self, impl Stream<Item = PipelineRef> + Send + 'static) {
        let (retries, mut rx) = mpsc::unbounded_channel();
        let lane = Self {
            apply,
            creates,
            cache,
            entries: Arc::default(),
            attempts: Default::default(),
            retries,
        };
        (lane, futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    /// Applies `svc` (owned by pipeline `owner`) inline when the watch cache has it: an update
    /// or a skip, no allocation. Else queues its create, once, and returns
    /// [`LaneOutcome::Pending`]. A failed create is returned once, by the next call for that
    /// Service; the call after queues it again.
    pub async fn apply(
        &self,
        svc: &Service,
        scope: &'static str,
        owner: &PipelineRef,
    ) -> Result<LaneOutcome, ApplyError> {
        let key = ObjectRef::from_obj(svc);
        if self.cache.get(&key).is_some() {
            self.entries.lock().expect("not poisoned").remove(&key);
            (self.apply)(svc.clone(), scope).await?;
            return Ok(LaneOutcome::Applied);
        }
        let mut entries = self.entries.lock().expect("not poisoned");
        match entries.remove(&key) {
            Some(Entry {
                state: EntryState::Failed(e),
                ..
            }) => return Err(e),
            Some(pending) => {
                entries.insert(key, pending);
            }
            None => {
                let attempt = self
                    .attempts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                entries.insert(
                    key.clone(),
                    Entry {
                        owner: owner.clone(),
                        attempt,
                        state: EntryState::Pending,
                    },
                );
                self.spawn_create(key, attempt, svc.clone(), scope);
            }
        }
        Ok(LaneOutcome::Pending)
    }

    /// Creates `svc` when a permit is free; on failure marks its entry (if still this attempt)
    /// and sends its owner to be reconciled.
    fn spawn_create(
        &self,
        key: ObjectRef<Service>,
        attempt: u64,
        svc: Service,
        scope: &'static str,
    ) {
        let (apply, creates, entries, retries) = (
            self.apply.clone(),
            self.creates.clone(),
            self.entries.clone(),
            self.retries.clone(),
        );
        tokio::spawn(async move {
            let queued = std::time::Instant::now();
            let result = {
                let _permit = creates.acquire_owned().await;
                let sent = std::time::Instant::now();
                let result = apply(svc, scope).await;
                // When each create waited and ran, to line up with the API server's own log.
                tracing::debug!(
                    service = %key,
                    queued_ms = (sent - queued).as_secs_f64() * 1e3,
                    create_ms = sent.elapsed().as_secs_f64() * 1e3,
                    ok = result.is_ok(),
                    "Service create answered"
                );
                result
            };
            let Err(e) = result else { return };
            let mut entries = entries.lock().expect("not poisoned");
            if let Some(entry) = entries.get_mut(&key)
                && entry.attempt == attempt
            {
                tracing::debug!(service = %key, error = %e, "Service create failed; reconciling its pipeline");
                entry.state = EntryState::Failed(e);
                let _ = retries.send(entry.owner.clone());
            }
        });
    }

    /// Call on each watch event of a Service, after the cache took it: once the cache has the
    /// Service, the lane no longer tracks it.
    pub fn seen(&self, svc: &Service) {
        let key = ObjectRef::from_obj(svc);
        if self.cache.get(&key).is_some() {
            self.entries.lock().expect("not poisoned").remove(&key);
        }
    }

    /// Drops what the lane tracks for pipeline `namespace/name`, which is gone.
    pub fn forget(&self, namespace: Option<&str>, name: &str) {
        self.entries
            .lock()
            .expect("not poisoned")
            .retain(|_, e| e.owner.name != name || e.owner.namespace.as_deref() != namespace);
    }

    /// Services the lane tracks.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.entries.lock().expect("not poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures::{FutureExt, StreamExt};
    use kube::runtime::reflector::{self, store::Writer};
    use kube::runtime::watcher;

    use super::*;

    fn service(name: &str) -> Service {
        let mut s = Service::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("ns".into());
        s
    }

    fn owner() -> PipelineRef {
        ObjectRef::new("demo").within("ns")
    }

    fn server_error() -> ApplyError {
        ApplyError::Api {
            verb: "apply",
            kind: "Service".into(),
            namespace: "ns".into(),
            name: "demo-gateway".into(),
            source: kube::Error::Api(
                kube::core::Status::failure("etcdserver: request timed out", "InternalError")
                    .with_code(500)
                    .boxed(),
            ),
        }
    }

    /// Counts applies; the first `fail` of them fail; each waits for `gate` when given.
    struct FakeServer {
        applies: Arc<AtomicUsize>,
        in_flight: Arc<AtomicUsize>,
        most_in_flight: Arc<AtomicUsize>,
    }

    fn fake(fail: usize, gate: Option<Arc<Semaphore>>) -> (ApplyService, FakeServer) {
        let applies = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most_in_flight = Arc::new(AtomicUsize::new(0));
        let server = FakeServer {
            applies: applies.clone(),
            in_flight: in_flight.clone(),
            most_in_flight: most_in_flight.clone(),
        };
        let apply: ApplyService = Arc::new(move |_svc, _scope| {
            let n = applies.fetch_add(1, Ordering::SeqCst);
            let (in_flight, most, gate) = (in_flight.clone(), most_in_flight.clone(), gate.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                if let Some(g) = gate {
                    g.acquire().await.expect("open").forget();
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
                if n < fail {
                    Err(server_error())
                } else {
                    Ok(())
                }
            }
            .boxed()
        });
        (apply, server)
    }

    fn lane(
        apply: ApplyService,
    ) -> (
        ServiceLane,
        Writer<Service>,
        impl Stream<Item = PipelineRef> + Unpin,
    ) {
        let (cache, writer) = reflector::store();
        let (lane, retries) =
            ServiceLane::new(apply, Arc::new(Semaphore::new(SERVICE_CREATES)), cache);
        (lane, writer, Box::pin(retries))
    }

    /// The watch delivers `svc`: the cache takes it, then the lane hears of it.
    fn watch_adds(lane: &ServiceLane, writer: &mut Writer<Service>, svc: &Service) {
        writer.apply_watcher_event(&watcher::Event::Apply(svc.clone()));
        lane.seen(svc);
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn a_missing_service_is_created_once_and_tracked_until_the_watch_has_it() {
        let (apply, server) = fake(0, None);
        let (lane, mut writer, _retries) = lane(apply);
        let svc = service("demo-gateway");
        assert_eq!(
            lane.apply(&svc, "gateway", &owner()).await.unwrap(),
            LaneOutcome::Pending
        );
        settle().await;
        // Created, not yet in the cache: nothing sent again, still pending.
        assert_eq!(
            lane.apply(&svc, "gateway", &owner()).await.unwrap(),
            LaneOutcome::Pending
        );
        assert_eq!(server.applies.load(Ordering::SeqCst), 1);
        watch_adds(&lane, &mut writer, &svc);
        assert_eq!(lane.tracked(), 0);
        // In the cache: applied inline (the applier skips what is unchanged).
        assert_eq!(
            lane.apply(&svc, "gateway", &owner()).await.unwrap(),
            LaneOutcome::Applied
        );
        assert_eq!(server.applies.load(Ordering::SeqCst), 2);
        assert_eq!(lane.tracked(), 0);
    }

    #[tokio::test]
    async fn a_failed_create_triggers_its_pipeline_is_reported_once_and_retried() {
        let (apply, server) = fake(1, None);
        let (lane, _writer, mut retries) = lane(apply);
        let svc = service("demo-gateway");
        assert_eq!(
            lane.apply(&svc, "gateway", &owner()).await.unwrap(),
            LaneOutcome::Pending
        );
        let triggered = tokio::time::timeout(Duration::from_secs(5), retries.next())
            .await
            .expect("the failure reconciles the pipeline");
        assert_eq!(triggered, Some(owner()));
        let err = lane.apply(&svc, "gateway", &owner()).await.unwrap_err();
        assert_eq!(err.reason(), "ServerError");
        // Reported once: the next pass queues the create again, which succeeds.
        assert_eq!(
            lane.apply(&svc, "gateway", &owner()).await.unwrap(),
            LaneOutcome::Pending
        );
        settle().await;
        assert_eq!(server.applies.load(Ordering::SeqCst), 2);
        assert_eq!(
            lane.apply(&svc, "gateway", &owner()).await.unwrap(),
            LaneOutcome::Pending
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(50), retries.next())
                .await
                .is_err(),
            "a successful create triggers nothing: the Service's watch event does"
        );
    }

    #[tokio::test]
    async fn a_deleted_service_is_created_again() {
        let (apply, server) = fake(0, None);
        let (lane, mut writer, _retries) = lane(apply);
        let svc = service("demo-gateway");
        lane.apply(&svc, "gateway", &owner()).await.unwrap();
        settle().await;
        watch_adds(&lane, &mut writer, &svc);
        // Someone deletes it: the cache drops it, the pass queues a create.
        writer.apply_watcher_event(&watcher::Event::Delete(svc.clone()));
        lane.seen(&svc);
        assert_eq!(
            lane.apply(&svc, "gateway", &owner()).await.unwrap(),
            LaneOutcome::Pending
        );
        settle().await;
        assert_eq!(server.applies.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn at_most_service_creates_run_at_once() {
        let gate = Arc::new(Semaphore::new(0));
        let (apply, server) = fake(0, Some(gate.clone()));
        let (lane, _writer, _retries) = lane(apply);
        for i in 0..6 {
            let svc = service(&format!("p{i}-gateway"));
            lane.apply(&svc, "gateway", &owner()).await.unwrap();
        }
        settle().await;
        assert_eq!(server.in_flight.load(Ordering::SeqCst), SERVICE_CREATES);
        gate.add_permits(6);
        settle().await;
        assert_eq!(server.applies.load(Ordering::SeqCst), 6);
        assert_eq!(
            server.most_in_flight.load(Ordering::SeqCst),
            SERVICE_CREATES
        );
    }

    #[tokio::test]
    async fn a_deleted_pipeline_leaves_nothing_behind() {
        let (apply, _server) = fake(1, None);
        let (lane, _writer, mut retries) = lane(apply);
        lane.apply(&service("demo-gateway"), "gateway", &owner())
            .await
            .unwrap();
        retries.next().await;
        assert_eq!(lane.tracked(), 1);
        lane.forget(Some("ns"), "other");
        assert_eq!(lane.tracked(), 1);
        lane.forget(Some("ns"), "demo");
        assert_eq!(lane.tracked(), 0);
    }
}
