//! Processes of the end-to-end tests: the project's binaries (built once per test binary, or
//! prebuilt ones from `VOICE_BINS_DIR`), children killed on drop, free loopback ports,
//! temporary directories, plain HTTP/1.0 probes, polling, and the backend simulator.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::repo_root;

/// Paths of the project's binaries.
#[derive(Debug)]
pub struct Bins {
    /// `voice-operator`.
    pub operator: PathBuf,
    /// `voice-gateway`.
    pub gateway: PathBuf,
    /// `voice-sim`.
    pub sim: PathBuf,
    /// `voice-client`.
    pub client: PathBuf,
}

/// The binaries: prebuilt ones from `VOICE_BINS_DIR` (as `make test` passes), or from
/// `VOICE_GATEWAY_BIN` and `VOICE_SIM_BIN` (the others beside them, unless
/// `VOICE_OPERATOR_BIN` / `VOICE_CLIENT_BIN` say otherwise); else built once per test process
/// into this test's target directory (cargo is a no-op when they are fresh).
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let at = |dir: &Path| Bins {
            operator: dir.join("voice-operator"),
            gateway: dir.join("voice-gateway"),
            sim: dir.join("voice-sim"),
            client: dir.join("voice-client"),
        };
        // Prebuilt binaries (CI): no cargo build.
        if let Some(dir) = std::env::var_os("VOICE_BINS_DIR") {
            return at(Path::new(&dir));
        }
        let from_env = |v: &str| std::env::var_os(v).map(PathBuf::from);
        if let (Some(gateway), Some(sim)) =
            (from_env("VOICE_GATEWAY_BIN"), from_env("VOICE_SIM_BIN"))
        {
            return Bins {
                operator: from_env("VOICE_OPERATOR_BIN")
                    .unwrap_or_else(|| gateway.with_file_name("voice-operator")),
                client: from_env("VOICE_CLIENT_BIN")
                    .unwrap_or_else(|| sim.with_file_name("voice-client")),
                gateway,
                sim,
            };
        }
        // <target>/<profile>/deps/<this test> → <target>/<profile>/
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(repo_root()).args([
            "build",
            "-q",
            "-p",
            "voice-operator",
            "-p",
            "voice-gateway",
            "-p",
            "voice-sim",
            "-p",
            "voice-client",
            "--bins",
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        if let Some(target) = dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        let st = cmd.status().expect("run cargo build");
        assert!(st.success(), "cargo build of the binaries failed");
        at(&dir)
    })
}

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates a fresh directory whose name starts with `prefix`.
    pub fn new(prefix: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    /// `name` inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed when dropped.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `GET path` on 127.0.0.1:`port` over HTTP/1.0: (status, body).
pub fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("bad HTTP status line")?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `within`.
pub fn poll<T>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if start.elapsed() > within {
            bail!("{what}: not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running simulator.
#[derive(Debug)]
pub struct Sim {
    /// Process.
    pub proc: Proc,
    /// Riva gRPC address.
    pub riva: String,
    /// LLM HTTP address.
    pub llm: String,
}

impl Sim {
    /// Starts `voice-sim` on free loopback ports with extra arguments.
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn(Command::new(&bins().sim), args)
    }

    /// Starts `voice-sim --profile zero` whose LLM answers every message with `reply` (a script
    /// of one `*` entry), with extra arguments.
    pub fn replying(reply: &str, args: &[&str]) -> anyhow::Result<Self> {
        let dir = TempDir::new("voice-sim-script");
        let script = dir.join("script.json");
        std::fs::write(&script, serde_json::json!({ "*": reply }).to_string())?;
        let script = script.to_str().context("temp path")?;
        let mut all = vec!["--profile", "zero", "--script", script];
        all.extend_from_slice(args);
        // The simulator has read its script once it prints its addresses.
        Self::start(&all)
    }

    /// Starts the simulator by `command` (its program and any arguments before the sim's own,
    /// e.g. a `chroot`) on free loopback ports with extra arguments, and reads the addresses it
    /// prints.
    pub fn spawn(mut command: Command, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = command
            .args(["--riva-addr", "127.0.0.1:0", "--llm-addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn voice-sim")?;
        let stdout = child.stdout.take().context("sim stdout")?;
        let proc = Proc(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
                .with_context(|| format!("no {k} in {line:?}"))
        };
        Ok(Self {
            riva: field("riva=")?,
            llm: field("llm=")?,
            proc,
        })
    }
}

/// A running `voice-gateway` on free loopback ports (killed on drop).
#[derive(Debug)]
pub struct GatewayProcess {
    /// Process.
    pub proc: Proc,
    /// gRPC port.
    pub grpc_port: u16,
    /// Admin port (`/metrics`, `/livez`, `/readyz`).
    pub admin_port: u16,
    /// The file its stderr (its logs) goes to, if not the test's stderr: [`Self::logs`].
    pub log: Option<PathBuf>,
}

impl GatewayProcess {
    /// Starts `voice-gateway` against `riva` and `llm` (host:port) with extra environment, and
    /// waits until `/livez` answers (not `/readyz`: some tests start it against dead backends).
    pub fn start(riva: &str, llm: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::spawn(Command::new(&bins().gateway), riva, llm, env)
    }

    /// The same, with the gateway started by `command` (its program and any arguments before
    /// the gateway's own, e.g. a `chroot`). Its log level is `GATEWAY_LOG_LEVEL` (default
    /// `warn`); its logs go to the test's stderr.
    pub fn spawn(
        command: Command,
        riva: &str,
        llm: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::spawn_logging(command, riva, llm, env, None)
    }

    /// Starts the gateway against a simulator and waits until it is ready, with its logs
    /// (stderr) written to the file `log` instead of the test's stderr: [`Self::logs`] reads them.
    pub fn with_sim_logged(sim: &Sim, env: &[(&str, &str)], log: &Path) -> anyhow::Result<Self> {
        let command = Command::new(&bins().gateway);
        let g = Self::spawn_logging(command, &sim.riva, &sim.llm, env, Some(log))?;
        g.wait_http("/readyz", 200, Duration::from_secs(20))?;
        Ok(g)
    }

    /// What the gateway has logged so far, when started with a log file (else empty).
    pub fn logs(&self) -> anyhow::Result<String> {
        match &self.log {
            Some(p) => std::fs::read_to_string(p).with_context(|| format!("read {}", p.display())),
            None => Ok(String::new()),
        }
    }

    /// [`Self::spawn`], with stderr to the file `log` if given.
    fn spawn_logging(
        mut command: Command,
        riva: &str,
        llm: &str,
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> anyhow::Result<Self> {
        if let Some(path) = log {
            let file = std::fs::File::create(path)
                .with_context(|| format!("create {}", path.display()))?;
            command.stderr(file);
        }
        let grpc_port = free_port();
        let admin_port = free_port();
        let child = command
            .env("RIVA_URI", riva)
            .env("LLM_SERVICE_URL", format!("http://{llm}/v1"))
            .env("GRPC_PORT", grpc_port.to_string())
            .env("METRICS_PORT", admin_port.to_string())
            .env("BIND_ADDRESS", "127.0.0.1")
            .env("LLM_MODEL", "sim-model")
            .env(
                "LOG_LEVEL",
                std::env::var("GATEWAY_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {command:?}"))?;
        let g = Self {
            proc: Proc(child),
            grpc_port,
            admin_port,
            log: log.map(Path::to_path_buf),
        };
        g.wait_http("/livez", 200, Duration::from_secs(20))?;
        Ok(g)
    }

    /// Starts the gateway against a simulator and waits until it is ready.
    pub fn with_sim(sim: &Sim, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let g = Self::start(&sim.riva, &sim.llm, env)?;
        g.wait_http("/readyz", 200, Duration::from_secs(20))?;
        Ok(g)
    }

    /// `GET path` on the admin port: (status, body).
    pub fn http(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.admin_port, path)
    }

    /// Polls `path` on the admin port until it answers `status`.
    pub fn wait_http(&self, path: &str, status: u16, within: Duration) -> anyhow::Result<()> {
        poll(
            within,
            &format!("gateway {path} answering {status}"),
            || self.http(path).ok().filter(|(s, _)| *s == status),
        )
        .map(|_| ())
    }
}
