//! The local Kubernetes control plane, as the API-server and end-to-end tests use it.
//!
//! ```text
//!  test binary ──Plane::shared()──► flock .cluster.lock ─► tests/plane/up.sh (no-op when up)
//!       │                                                   etcd, kube-apiserver,
//!       ├── plane.namespace("x") ─► fresh namespace x-<n>   controller-manager, scheduler,
//!       │      dropped: deleted (kept on panic, logs named) kwok + kwok nodes + monitoring CRDs
//!       └── plane.client() / plane.kubectl()
//! ```
//!
//! The plane is started once per test run (every test binary of a run shares it, guarded by a
//! file lock) or reused when one is already running. `make test` stops it at the end; a plain
//! `cargo test` leaves it running for the next run (`make cluster-down` stops it).

use std::{
    future::Future,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

pub mod processes;

use anyhow::{Context as _, bail};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Namespace, ServiceAccount},
};
use kube::{
    Api, Client, Config,
    api::PostParams,
    config::{KubeConfigOptions, Kubeconfig},
};

/// The components whose logs are printed when a test fails.
const COMPONENTS: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
];

/// What a private plane starts with.
#[derive(Clone, Debug)]
pub struct PlaneOptions {
    /// Install prometheus-operator's monitoring CRDs at start.
    pub monitoring_crds: bool,
}

impl Default for PlaneOptions {
    fn default() -> Self {
        Self {
            monitoring_crds: true,
        }
    }
}

/// A running local control plane.
#[derive(Debug)]
pub struct Plane {
    /// The admin kubeconfig (client certificate in `system:masters`).
    pub kubeconfig: PathBuf,
    /// The plane's directory: kubeconfig, certificates, `logs/`, `pids/`.
    pub dir: PathBuf,
    /// Stop the plane when this value is dropped (private planes only).
    owned: bool,
}

// === impl Plane ===

impl Plane {
    /// The plane shared by every test of this run: started on first use, or reused when one
    /// is already running in `.cluster/` (or `$VOICE_PLANE_DIR`). Blocks until the API answers.
    pub fn shared() -> &'static Plane {
        static SHARED: OnceLock<Plane> = OnceLock::new();
        SHARED.get_or_init(|| {
            let dir = std::env::var_os("VOICE_PLANE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo_root().join(".cluster"));
            start(&dir, &PlaneOptions::default()).unwrap_or_else(|e| panic!("{e:#}"));
            Plane {
                kubeconfig: dir.join("kubeconfig"),
                dir,
                owned: false,
            }
        })
    }

    /// A separate plane of its own (own ports and directory), stopped when dropped: for tests
    /// that change cluster-wide state, such as removing the monitoring CRDs.
    pub fn private(name: &str, options: PlaneOptions) -> Plane {
        let dir = std::env::temp_dir().join(format!("voice-plane-{name}-{}", std::process::id()));
        start(&dir, &options).unwrap_or_else(|e| panic!("{e:#}"));
        Plane {
            kubeconfig: dir.join("kubeconfig"),
            dir,
            owned: true,
        }
    }

    /// A client with the admin's rights.
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("readable kubeconfig");
        client_from(kubeconfig).await
    }

    /// `kubectl` talking to this plane: the one built with the plane (same version as the
    /// API server) when there is one, else the PATH's.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(kubectl_in(&self.dir));
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// Runs `kubectl ARGS` and returns its output whatever the exit code.
    pub fn kubectl_output(&self, args: &[&str]) -> Output {
        self.kubectl().args(args).output().expect("kubectl runs")
    }

    /// Waits (up to 60 s) until CRD `name` is Established. Polls rather than `kubectl wait`,
    /// which fails at once with "accessor error: <nil>" on a CRD so new that its
    /// `status.conditions` is still null.
    pub fn wait_crd_established(&self, name: &str) {
        let start = Instant::now();
        loop {
            let out = self.kubectl_output(&[
                "get",
                &format!("crd/{name}"),
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Established")].status}"#,
            ]);
            if out.status.success() && out.stdout == b"True" {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "CRD {name} not Established within 60 s: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A fresh namespace `PREFIX-<unique>` with its default ServiceAccount in place.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{:x}{n}", (nanos ^ std::process::id()) & 0xfffff);
        let client = self.client().await;
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "voice.workflow.io/test": "true" } }
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        eventually(Duration::from_secs(30), || async {
            accounts.get_opt("default").await.ok().flatten()
        })
        .await;
        TestNamespace {
            name,
            client,
            plane_dir: self.dir.clone(),
            kubeconfig: self.kubeconfig.clone(),
        }
    }

    /// A client that authenticates as ServiceAccount `NAME` of `NAMESPACE` (a bound token from
    /// the TokenRequest API), to prove that an RBAC role is enough.
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> Client {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client().await, namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("token for {namespace}/{name}: {e}"))
            .status
            .expect("token status")
            .token;
        let mut kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("readable kubeconfig");
        for user in &mut kubeconfig.auth_infos {
            let auth = user.auth_info.get_or_insert_with(Default::default);
            auth.client_certificate_data = None;
            auth.client_key_data = None;
            auth.token = Some(token.clone().into());
        }
        client_from(kubeconfig).await
    }

    /// Installs prometheus-operator's monitoring CRDs (for planes started without them).
    pub fn install_monitoring_crds(&self) {
        let script = repo_root().join("tests/plane/monitoring-crds.sh");
        run(Command::new(script)
            .env("KUBECTL", kubectl_in(&self.dir))
            .arg(&self.kubeconfig))
        .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Where each component's log is.
    pub fn log_paths(&self) -> Vec<PathBuf> {
        COMPONENTS
            .iter()
            .map(|c| self.dir.join("logs").join(format!("{c}.log")))
            .collect()
    }
}

impl Drop for Plane {
    /// A private plane is stopped, and its directory (etcd data, certificates, logs) and lock
    /// file removed, unless the test is failing or `VOICE_KEEP_PLANES` is set: then they are
    /// kept for reading.
    fn drop(&mut self) {
        if self.owned {
            let script = repo_root().join("tests/plane/down.sh");
            let _ = Command::new(script).arg("--dir").arg(&self.dir).output();
            if keep_private_plane(
                std::thread::panicking(),
                std::env::var_os("VOICE_KEEP_PLANES"),
            ) {
                eprintln!("private plane kept: {}", self.dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&self.dir);
                let _ = std::fs::remove_file(self.dir.with_extension("lock"));
            }
        }
    }
}

/// Whether a stopped private plane's directory stays: when its test is failing, or when
/// `VOICE_KEEP_PLANES` is set to anything but empty or `0`.
fn keep_private_plane(failing: bool, keep_var: Option<std::ffi::OsString>) -> bool {
    failing || keep_var.is_some_and(|v| !v.is_empty() && v != "0")
}

/// A namespace of one test: deleted when dropped, unless the test is failing, in which case it
/// is kept for inspection and the components' log paths are printed.
#[allow(missing_debug_implementations)] // kube::Client is not Debug
pub struct TestNamespace {
    /// The namespace's name.
    pub name: String,
    /// An admin client.
    pub client: Client,
    plane_dir: PathBuf,
    kubeconfig: PathBuf,
}

// === impl TestNamespace ===

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: namespace {} kept for inspection", self.name);
            eprintln!("  KUBECONFIG={}", self.kubeconfig.display());
            for c in COMPONENTS {
                eprintln!(
                    "  {c} log: {}",
                    self.plane_dir
                        .join("logs")
                        .join(format!("{c}.log"))
                        .display()
                );
            }
            return;
        }
        let _ = Command::new(kubectl_in(&self.plane_dir))
            .env("KUBECONFIG", &self.kubeconfig)
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .output();
    }
}

/// Polls `check` every 100 ms until it returns `Some`, and returns that; panics after
/// `timeout` with the caller's location.
#[track_caller]
pub fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> impl Future<Output = T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let caller = std::panic::Location::caller();
    async move {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            if Instant::now() > deadline {
                panic!("condition not met within {timeout:?} (waiting at {caller})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The repository's top directory: the nearest directory holding `Cargo.lock` above the
/// running test's package (`CARGO_MANIFEST_DIR`, which `cargo test` sets at run time).
///
/// Read at run time, not compiled in: the cargo target directory lives outside the checkout
/// and is shared by clones at different paths, and cargo reuses a test binary built in one
/// clone for another whose sources are older, so a compiled-in path can name a clone that is
/// gone.
pub fn repo_root() -> PathBuf {
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    package
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .unwrap_or_else(|| panic!("no Cargo.lock above {}", package.display()))
        .canonicalize()
        .expect("repository root")
}

fn kubectl_in(plane_dir: &Path) -> PathBuf {
    let built = plane_dir.join("bin/kubectl");
    if built.exists() {
        built
    } else {
        PathBuf::from("kubectl")
    }
}

async fn client_from(kubeconfig: Kubeconfig) -> Client {
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("valid kubeconfig");
    Client::try_from(config).expect("client")
}

/// Starts (or finds running) the plane in `dir`, serialised across test processes by a lock.
fn start(dir: &Path, options: &PlaneOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock = dir.with_extension("lock");
    let mut cmd = Command::new("flock");
    // -o: the plane's daemons must not inherit the locked descriptor, or they would hold the
    // lock for as long as they run and every later test binary would wait on it.
    cmd.arg("-o")
        .arg(&lock)
        .arg(repo_root().join("tests/plane/up.sh"))
        .arg("--dir")
        .arg(dir);
    if !options.monitoring_crds {
        cmd.arg("--no-monitoring-crds");
    }
    run(&mut cmd)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::keep_private_plane;

    #[test]
    fn a_private_plane_is_kept_only_for_a_failing_test_or_when_asked() {
        assert!(!keep_private_plane(false, None));
        assert!(keep_private_plane(true, None));
        assert!(keep_private_plane(false, Some("1".into())));
        assert!(!keep_private_plane(false, Some("0".into())));
        assert!(!keep_private_plane(false, Some("".into())));
    }
}
