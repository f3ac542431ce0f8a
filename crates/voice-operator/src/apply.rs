//! The apply step: server-side apply with `force` and the field manager
//! `voice-operator/<scope>`, and deletion of children a pipeline no longer has.
//!
//! Steady state must cost no writes. An SSA patch that changes nothing is not stored, but it is
//! still a request, so the applier skips it when it can prove the child is unchanged since its
//! own last apply: it remembers, per child, the hash of what it applied and a fingerprint of the
//! object the API server returned (generation, or resourceVersion for kinds without one,
//! the values of the labels and annotations the operator applies, and owners). When the watch
//! cache shows the same fingerprint and the desired object hashes the same, nothing is sent.
//! Any edit by someone else (`kubectl scale`, `kubectl edit`, a deleted child, a changed or
//! removed label or annotation of ours) changes the fingerprint and is undone by the next
//! apply.
//!
//! Only the operator's own label and annotation keys count: a key someone else adds (the
//! Deployment controller's `deployment.kubernetes.io/revision`, an admission webhook's) is not
//! drift, since server-side apply would leave it in place anyway, and counting it cost one
//! no-op apply per Deployment after its first rollout. Objects outside the watch caches (a
//! dashboard in a namespace that is neither watched nor given as a dashboard namespace, see
//! [`crate::controller::RunConfig::dashboard_namespaces`]) are re-applied at most every
//! [`UNCACHED_RESYNC`].
//!
//! A watch cache lags behind the applier's own writes: a pipeline reconciled again (by another
//! child's event) before the watch has delivered a child just created finds it missing from
//! the cache. [`Applier::ensure`], for callers that do not read the applied object back, trusts
//! its own write then, for up to [`AWAIT_WATCH`]: the child's watch event follows and
//! reconciles the pipeline again, against a cache that has it. The trust ends with any watch
//! event of that child (so a child deleted after its create is re-created by the pass its
//! delete event triggers) and with a relist of its kind ([`Applier::observe`]). [`Applier::apply`],
//! whose callers read the object back (the gateway Deployment's rollout), trusts its write the
//! same way by keeping what the API server returned for it until the watch delivers: 1,000
//! pipelines sent 100–150 such Deployment applies again.

use std::any::Any;
use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::metrics::Metrics;
use crate::model::OPERATOR;

/// How long an applied object that no watch cache holds is trusted without re-applying.
pub const UNCACHED_RESYNC: Duration = Duration::from_secs(600);

/// How long [`Applier::ensure`] trusts its own write of a child its watch has not delivered.
pub const AWAIT_WATCH: Duration = Duration::from_secs(30);

/// Why an apply or delete failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The API server refused or failed.
    #[error("{verb} {kind} {namespace}/{name}: {source}")]
    Api {
        /// `apply`, `list` or `delete`.
        verb: &'static str,
        /// Kind of the child.
        kind: String,
        /// Namespace of the child.
        namespace: String,
        /// Name of the child.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The object could not be serialized (a bug).
    #[error("serialize {kind}: {0}", kind = .1)]
    Serialize(serde_json::Error, String),
}

impl ApplyError {
    /// HTTP status of the API error, if any.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Api {
                source: kube::Error::Api(s),
                ..
            } => Some(s.code),
            _ => None,
        }
    }

    /// The kind is not served (its CRD is not installed).
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }

    /// Retrying without a change cannot help (invalid object, forbidden).
    pub fn is_permanent(&self) -> bool {
        matches!(self.code(), Some(400 | 403 | 422)) || matches!(self, Self::Serialize(..))
    }

    /// CamelCase reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self.code() {
            Some(403) => "Forbidden",
            Some(400 | 422) => "Invalid",
            Some(404) => "NotFound",
            Some(409) => "Conflict",
            Some(429) => "TooManyRequests",
            Some(500..=599) => "ServerError",
            Some(_) => "ApiError",
            None if matches!(self, Self::Serialize(..)) => "InternalError",
            None => "ApiUnreachable",
        }
    }
}

#[derive(Clone, Debug)]
struct Seen {
    desired: u64,
    fingerprint: u64,
    at: Instant,
    /// Written by the applier; its watch has delivered no event of it since.
    awaiting_watch: bool,
    /// For [`Applier::apply`] callers, which read the object back: what the API server
    /// returned for that write, kept only while `awaiting_watch`, so that a pass before the
    /// watch delivers gets it instead of sending the same apply again.
    written: Option<Written>,
}

/// A child object as the API server returned it to a write, of any kind.
type Written = Arc<dyn Any + Send + Sync>;

/// What the watch cache shows of a child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CacheView {
    /// The kind has no watch cache here.
    NotWatched,
    /// The cache does not hold the child.
    Missing,
    /// The cache holds a copy with this fingerprint.
    Holds(u64),
}

/// What to do with a child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Send the apply.
    Send,
    /// Skip: the cache shows the child as last applied.
    SkipCached,
    /// Skip: the applier wrote it moments ago and its watch has not delivered it yet.
    SkipAwaitingWatch,
    /// Skip: unwatched, applied less than [`UNCACHED_RESYNC`] ago.
    SkipUncached,
}

/// Whether to apply a child whose desired object hashes to `desired`, given the applier's memory
/// of its last apply, what the cache shows, and whether the caller accepts a skip that returns
/// no object (`trust_own_write`). A caller that needs the object back trusts its own write
/// only when the applier kept what that write returned.
fn verdict(prev: Option<&Seen>, desired: u64, cache: CacheView, trust_own_write: bool) -> Verdict {
    let Some(prev) = prev.filter(|p| p.desired == desired) else {
        return Verdict::Send;
    };
    let trust = trust_own_write || prev.written.is_some();
    match cache {
        CacheView::Holds(fp) if fp == prev.fingerprint => Verdict::SkipCached,
        CacheView::Missing if trust && prev.awaiting_watch && prev.at.elapsed() < AWAIT_WATCH => {
            Verdict::SkipAwaitingWatch
        }
        CacheView::NotWatched if prev.at.elapsed() < UNCACHED_RESYNC => Verdict::SkipUncached,
        _ => Verdict::Send,
    }
}

type Key = (String, String, String);

/// A kind of child the applier applies: namespaced, serializable both ways, and shareable
/// between tasks (the applier keeps a just-written object, see [`Seen::written`]).
pub trait Child:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Serialize
    + DeserializeOwned
    + Clone
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Child for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// Applies children and remembers what it applied.
pub struct Applier {
    client: Client,
    metrics: Arc<Metrics>,
    seen: Mutex<HashMap<Key, Seen>>,
}

impl Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier").finish_non_exhaustive()
    }
}

/// A hash of `v`, stable within one process (not across builds).
pub(crate) fn hash_of(v: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// What identifies a version of an object for drift detection (status changes excluded where
/// the kind has a generation): its generation (else resourceVersion), the values it has for
/// the label and annotation keys of `desired` (absent counts), owners, and deletion.
fn fingerprint<K: Resource>(k: &K, desired: &K) -> u64 {
    let m = k.meta();
    let version = match m.generation {
        Some(g) => g.to_string(),
        None => m.resource_version.clone().unwrap_or_default(),
    };
    let ours = |have: &Option<std::collections::BTreeMap<String, String>>,
                want: &Option<std::collections::BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .map(|(k, _)| have.as_ref().and_then(|h| h.get(k)).cloned())
            .collect::<Vec<_>>()
    };
    let d = desired.meta();
    let owners: Vec<&str> = m
        .owner_references
        .iter()
        .flatten()
        .map(|o| o.uid.as_str())
        .collect();
    hash_of(&(
        version,
        ours(&m.labels, &d.labels),
        ours(&m.annotations, &d.annotations),
        owners,
        m.deletion_timestamp.is_some(),
    ))
}

impl Applier {
    /// An applier writing with `client`.
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            metrics,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Applies `obj` (server-side apply, forced, field manager `voice-operator/<scope>`) unless
    /// `cached` (the watch cache's copy, if the kind is watched) proves it is already as
    /// applied. Returns the object as the API server or the cache has it, or as the API server
    /// returned it to this applier's own write that the watch has not delivered yet.
    pub async fn apply<K>(
        &self,
        obj: &K,
        scope: &str,
        cached: Option<&Store<K>>,
    ) -> Result<Option<Arc<K>>, ApplyError>
    where
        K: Child,
    {
        self.apply_child(obj, scope, cached, false).await
    }

    /// [`Applier::apply`] for a caller that does not read the object back: it also skips a
    /// child that the applier created or changed moments ago and whose watch has not delivered
    /// it yet (see the module docs).
    pub async fn ensure<K>(
        &self,
        obj: &K,
        scope: &str,
        cached: Option<&Store<K>>,
    ) -> Result<(), ApplyError>
    where
        K: Child,
    {
        self.apply_child(obj, scope, cached, true).await.map(|_| ())
    }

    async fn apply_child<K>(
        &self,
        obj: &K,
        scope: &str,
        cached: Option<&Store<K>>,
        trust_own_write: bool,
    ) -> Result<Option<Arc<K>>, ApplyError>
    where
        K: Child,
    {
        let kind = K::kind(&()).to_string();
        let ns = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        let mut value =
            serde_json::to_value(obj).map_err(|e| ApplyError::Serialize(e, kind.clone()))?;
        value["apiVersion"] = K::api_version(&()).into();
        value["kind"] = kind.clone().into();
        // The value's own hash: writing it out as JSON first escaped every string again
        // (a dashboard's ~10 kB of text) on every pass.
        let desired = hash_of(&value);
        let key = (kind.clone(), ns.clone(), name.clone());
        let prev = self.seen.lock().expect("not poisoned").get(&key).cloned();
        let child_ref = kube::runtime::reflector::ObjectRef::new(&name).within(&ns);
        let in_cache = cached.and_then(|s| s.get(&child_ref));
        let view = match (&in_cache, cached) {
            (Some(c), _) => CacheView::Holds(fingerprint(c.as_ref(), obj)),
            (None, Some(_)) => CacheView::Missing,
            (None, None) => CacheView::NotWatched,
        };
        match verdict(prev.as_ref(), desired, view, trust_own_write) {
            Verdict::Send => {}
            Verdict::SkipAwaitingWatch if in_cache.is_none() => {
                self.metrics.skipped.inc();
                let written = prev
                    .and_then(|p| p.written)
                    .and_then(|w| w.downcast::<K>().ok());
                return Ok(written);
            }
            Verdict::SkipCached | Verdict::SkipAwaitingWatch | Verdict::SkipUncached => {
                self.metrics.skipped.inc();
                return Ok(in_cache);
            }
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
        let pp = PatchParams::apply(&format!("{OPERATOR}/{scope}")).force();
        let out = api
            .patch(&name, &pp, &Patch::Apply(&value))
            .await
            .map_err(|source| ApplyError::Api {
                verb: "apply",
                kind: kind.clone(),
                namespace: ns.clone(),
                name: name.clone(),
                source,
            })?;
        self.metrics.write(&kind, "apply");
        let mut seen = self.seen.lock().expect("not poisoned");
        // Under the lock that `observe` takes after the cache took an event: either the watch
        // delivered this write already (the cache has the child) or its event clears the flag.
        let awaiting_watch = cached.is_some_and(|s| s.get(&child_ref).is_none());
        let out = Arc::new(out);
        let written = (awaiting_watch && !trust_own_write).then(|| out.clone() as Written);
        seen.insert(
            key,
            Seen {
                desired,
                fingerprint: fingerprint(out.as_ref(), obj),
                at: Instant::now(),
                awaiting_watch,
                written,
            },
        );
        Ok(Some(out))
    }

    /// Call with every event of a child watch, after its cache took the event: the watch has
    /// delivered that child (or relists its kind), so [`Applier::ensure`] goes by the cache
    /// again.
    pub fn observe<K>(&self, event: &watcher::Event<K>)
    where
        K: Resource<DynamicType = ()>,
    {
        let kind = K::kind(&());
        let mut seen = self.seen.lock().expect("not poisoned");
        match event {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) | watcher::Event::Delete(o) => {
                let key = (
                    kind.to_string(),
                    o.namespace().unwrap_or_default(),
                    o.name_any(),
                );
                if let Some(s) = seen.get_mut(&key) {
                    s.awaiting_watch = false;
                    s.written = None;
                }
            }
            watcher::Event::Init => {
                for ((k, _, _), s) in seen.iter_mut() {
                    if k == kind.as_ref() {
                        s.awaiting_watch = false;
                        s.written = None;
                    }
                }
            }
            watcher::Event::InitDone => {}
        }
    }

    /// Deletes `namespace/name` of kind `K` if it exists (404 is success).
    pub async fn delete<K>(&self, namespace: &str, name: &str) -> Result<(), ApplyError>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + DeserializeOwned
            + Clone
            + Debug,
    {
        let kind = K::kind(&()).to_string();
        self.seen.lock().expect("not poisoned").remove(&(
            kind.clone(),
            namespace.into(),
            name.into(),
        ));
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {
                self.metrics.write(&kind, "delete");
                tracing::info!(%kind, %namespace, %name, "deleted child no longer desired");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(ApplyError::Api {
                verb: "delete",
                kind,
                namespace: namespace.into(),
                name: name.into(),
                source,
            }),
        }
    }

    /// Deletes the cached `K`s named in `names` that are labelled as pipeline
    /// `namespace/pipeline`'s children, except those in `keep`: the children of switched-off
    /// components. `names` are all the names a child of this kind can have
    /// ([`crate::model::Validated::child_name`]), so each is a lookup in the cache, not a scan
    /// of it: with 1,000 pipelines a scan per kind and pass was most of the operator's CPU.
    pub async fn delete_orphans<K>(
        &self,
        store: &Store<K>,
        namespace: &str,
        pipeline: &str,
        names: &[&str],
        keep: &[&str],
    ) -> Result<(), ApplyError>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + DeserializeOwned
            + Clone
            + Debug,
    {
        for name in orphans(store, namespace, pipeline, names, keep) {
            self.delete::<K>(namespace, name).await?;
        }
        Ok(())
    }
}

/// The names among `names`, less `keep`, that `store` holds as live (not being deleted)
/// children of pipeline `namespace/pipeline`, by the operator's labels.
fn orphans<'n, K>(
    store: &Store<K>,
    namespace: &str,
    pipeline: &str,
    names: &[&'n str],
    keep: &[&str],
) -> Vec<&'n str>
where
    K: Resource<DynamicType = ()> + Clone,
{
    names
        .iter()
        .copied()
        .filter(|n| !keep.contains(n))
        .filter(|n| {
            store
                .get(&ObjectRef::new(n).within(namespace))
                .is_some_and(|o| {
                    is_child_of(o.as_ref(), pipeline) && o.meta().deletion_timestamp.is_none()
                })
        })
        .collect()
}

/// Whether `o` carries the operator's labels for pipeline `pipeline` (of its namespace).
fn is_child_of<K: Resource>(o: &K, pipeline: &str) -> bool {
    let l = o.labels();
    l.get("app.kubernetes.io/managed-by").map(String::as_str) == Some(OPERATOR)
        && l.get("app.kubernetes.io/instance").map(String::as_str) == Some(pipeline)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::{
        AWAIT_WATCH, Applier, Arc, CacheView, Client, Duration, Instant, Metrics, Seen,
        UNCACHED_RESYNC, Verdict, fingerprint, verdict, watcher,
    };

    fn deployment(
        generation: i64,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> Deployment {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let mut d = Deployment::default();
        d.metadata.generation = Some(generation);
        d.metadata.labels = map(labels);
        d.metadata.annotations = map(annotations);
        d
    }

    #[test]
    fn fingerprint_ignores_keys_of_others_but_not_ours() {
        let desired = deployment(0, &[("app", "gw")], &[("voice/config", "abc")]);
        let applied = deployment(1, &[("app", "gw")], &[("voice/config", "abc")]);
        let fp = fingerprint(&applied, &desired);
        // The Deployment controller's revision annotation is not drift.
        let revised = deployment(
            1,
            &[("app", "gw")],
            &[
                ("voice/config", "abc"),
                ("deployment.kubernetes.io/revision", "1"),
            ],
        );
        assert_eq!(fingerprint(&revised, &desired), fp);
        // A spec edit (kubectl scale), a changed or removed key of ours are.
        for drifted in [
            deployment(2, &[("app", "gw")], &[("voice/config", "abc")]),
            deployment(1, &[("app", "other")], &[("voice/config", "abc")]),
            deployment(1, &[], &[("voice/config", "abc")]),
            deployment(1, &[("app", "gw")], &[("voice/config", "edited")]),
        ] {
            assert_ne!(fingerprint(&drifted, &desired), fp, "{drifted:?}");
        }
    }

    fn seen(desired: u64, fingerprint: u64, ago: Duration, awaiting_watch: bool) -> Seen {
        Seen {
            desired,
            fingerprint,
            at: Instant::now() - ago,
            awaiting_watch,
            written: None,
        }
    }

    #[test]
    fn a_child_the_watch_has_not_delivered_is_trusted_briefly_by_ensure_and_by_apply_with_the_write_kept()
     {
        let fresh = seen(1, 7, Duration::ZERO, true);
        let old = seen(1, 7, AWAIT_WATCH + Duration::from_secs(1), true);
        let kept = |mut s: Seen| {
            s.written = Some(Arc::new(deployment(1, &[], &[])) as super::Written);
            s
        };
        let fresh_kept = kept(seen(1, 7, Duration::ZERO, true));
        let old_kept = kept(seen(1, 7, AWAIT_WATCH + Duration::from_secs(1), true));
        let delivered = seen(1, 7, Duration::ZERO, false);
        let recent_unwatched = seen(1, 7, Duration::from_secs(1), false);
        let old_unwatched = seen(1, 7, UNCACHED_RESYNC + Duration::from_secs(1), false);
        use CacheView::{Holds, Missing, NotWatched};
        use Verdict::{Send, SkipAwaitingWatch, SkipCached, SkipUncached};
        let cases = [
            (
                Some(&fresh),
                1,
                Missing,
                true,
                SkipAwaitingWatch,
                "just written, not delivered",
            ),
            (
                Some(&fresh),
                1,
                Missing,
                false,
                Send,
                "apply returns the object: no kept write, no trust",
            ),
            (
                Some(&fresh_kept),
                1,
                Missing,
                false,
                SkipAwaitingWatch,
                "apply returns the object: the kept write",
            ),
            (
                Some(&old_kept),
                1,
                Missing,
                false,
                Send,
                "apply returns the object: kept too long ago",
            ),
            (
                Some(&fresh),
                2,
                Missing,
                true,
                Send,
                "the desired object changed",
            ),
            (Some(&old), 1, Missing, true, Send, "written too long ago"),
            (
                Some(&delivered),
                1,
                Missing,
                true,
                Send,
                "delivered, then gone: deleted",
            ),
            (
                Some(&fresh),
                1,
                Holds(6),
                true,
                Send,
                "an older copy in the cache",
            ),
            (
                Some(&fresh),
                1,
                Holds(7),
                true,
                SkipCached,
                "the cache has the write",
            ),
            (None, 1, Missing, true, Send, "never applied"),
            (
                Some(&recent_unwatched),
                1,
                NotWatched,
                false,
                SkipUncached,
                "unwatched, recent",
            ),
            (
                Some(&old_unwatched),
                1,
                NotWatched,
                false,
                Send,
                "unwatched, resync due",
            ),
        ];
        for (prev, desired, view, trust, want, why) in cases {
            assert_eq!(verdict(prev, desired, view, trust), want, "{why}");
        }
    }

    fn applier() -> Applier {
        // A client that is never used to send: these tests drive the memory only.
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("a URL"));
        let client = Client::try_from(config).expect("a client");
        let mut registry = prometheus_client::registry::Registry::default();
        Applier::new(client, Arc::new(Metrics::new(&mut registry)))
    }

    fn remember(a: &Applier, kind: &str, name: &str) {
        a.seen.lock().unwrap().insert(
            (kind.into(), "ns".into(), name.into()),
            seen(1, 7, Duration::ZERO, true),
        );
    }

    fn awaiting(a: &Applier, kind: &str, name: &str) -> bool {
        a.seen.lock().unwrap()[&(kind.to_string(), "ns".to_string(), name.to_string())]
            .awaiting_watch
    }

    fn config_map(name: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.metadata.namespace = Some("ns".into());
        cm
    }

    #[tokio::test]
    async fn any_watch_event_of_a_child_or_a_relist_of_its_kind_ends_the_trust() {
        let a = applier();
        remember(&a, "ConfigMap", "one");
        remember(&a, "ConfigMap", "two");
        remember(&a, "Deployment", "one");
        a.observe(&watcher::Event::Apply(config_map("one")));
        assert!(!awaiting(&a, "ConfigMap", "one"));
        assert!(awaiting(&a, "ConfigMap", "two"), "another child");
        assert!(awaiting(&a, "Deployment", "one"), "another kind");
        remember(&a, "ConfigMap", "one");
        a.observe(&watcher::Event::Delete(config_map("one")));
        assert!(!awaiting(&a, "ConfigMap", "one"));
        a.observe(&watcher::Event::<ConfigMap>::Init);
        assert!(!awaiting(&a, "ConfigMap", "two"));
        assert!(
            awaiting(&a, "Deployment", "one"),
            "a relist of ConfigMaps only"
        );
    }

    #[test]
    fn orphans_are_the_named_children_of_this_pipeline_not_kept_and_not_being_deleted() {
        let (store, mut writer) = kube::runtime::reflector::store::<ConfigMap>();
        let child = |name: &str, instance: &str| {
            let mut cm = config_map(name);
            cm.metadata.labels = Some(
                [
                    ("app.kubernetes.io/managed-by", super::OPERATOR),
                    ("app.kubernetes.io/instance", instance),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            );
            cm
        };
        let mut deleting = child("p-dash", "p");
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        for cm in [
            child("p-gateway", "p"),
            child("p-riva", "q"), // same name shape, another pipeline's labels
            deleting,
            config_map("p-unlabelled"),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(cm));
        }
        let names = ["p-gateway", "p-riva", "p-dash", "p-unlabelled", "p-absent"];
        assert_eq!(
            super::orphans(&store, "ns", "p", &names, &[]),
            ["p-gateway"]
        );
        assert!(super::orphans(&store, "ns", "p", &names, &["p-gateway"]).is_empty());
        assert!(
            super::orphans(&store, "other", "p", &names, &[]).is_empty(),
            "another namespace"
        );
    }
}
