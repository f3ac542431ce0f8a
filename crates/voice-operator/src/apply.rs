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

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::metrics::Metrics;
use crate::model::OPERATOR;

/// How long an applied object that no watch cache holds is trusted without re-applying.
pub const UNCACHED_RESYNC: Duration = Duration::from_secs(600);

/// Why an apply or delete failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The API server refused or failed.
    #[error("{verb} {kind} {namespace}/{name}: {source}")]
    Api {
        /// `apply` or `delete`.
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
}

type Key = (String, String, String);

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

fn hash_of(v: &impl Hash) -> u64 {
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
    /// applied. Returns the object as the API server or the cache has it.
    pub async fn apply<K>(
        &self,
        obj: &K,
        scope: &str,
        cached: Option<&Store<K>>,
    ) -> Result<Option<Arc<K>>, ApplyError>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug,
    {
        let kind = K::kind(&()).to_string();
        let ns = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        let mut value =
            serde_json::to_value(obj).map_err(|e| ApplyError::Serialize(e, kind.clone()))?;
        value["apiVersion"] = K::api_version(&()).into();
        value["kind"] = kind.clone().into();
        let desired = hash_of(&value.to_string());
        let key = (kind.clone(), ns.clone(), name.clone());
        let prev = self.seen.lock().expect("not poisoned").get(&key).cloned();
        let in_cache = cached
            .and_then(|s| s.get(&kube::runtime::reflector::ObjectRef::new(&name).within(&ns)));
        if let Some(prev) = &prev
            && prev.desired == desired
        {
            match (&in_cache, cached) {
                (Some(c), _) if fingerprint(c.as_ref(), obj) == prev.fingerprint => {
                    self.metrics.skipped.inc();
                    return Ok(in_cache);
                }
                (None, None) if prev.at.elapsed() < UNCACHED_RESYNC => {
                    self.metrics.skipped.inc();
                    return Ok(None);
                }
                _ => {}
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
        self.seen.lock().expect("not poisoned").insert(
            key,
            Seen {
                desired,
                fingerprint: fingerprint(&out, obj),
                at: Instant::now(),
            },
        );
        Ok(Some(Arc::new(out)))
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

    /// Deletes every cached `K` of pipeline `namespace/pipeline` (by the operator's labels)
    /// whose name is not in `keep`: the children of switched-off components.
    pub async fn delete_orphans<K>(
        &self,
        store: &Store<K>,
        namespace: &str,
        pipeline: &str,
        keep: &[&str],
    ) -> Result<(), ApplyError>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + DeserializeOwned
            + Clone
            + Debug,
    {
        let orphans: Vec<String> = store
            .state()
            .iter()
            .filter(|o| o.namespace().as_deref() == Some(namespace))
            .filter(|o| {
                let l = o.labels();
                l.get("app.kubernetes.io/managed-by").map(String::as_str) == Some(OPERATOR)
                    && l.get("app.kubernetes.io/instance").map(String::as_str) == Some(pipeline)
            })
            .filter(|o| o.meta().deletion_timestamp.is_none())
            .map(|o| o.name_any())
            .filter(|n| !keep.contains(&n.as_str()))
            .collect();
        for name in orphans {
            self.delete::<K>(namespace, &name).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::Deployment;

    use super::fingerprint;

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
}
