//! Riva over TLS with a private CA (an in-cluster Riva behind cert-manager): a simulator that
//! serves TLS with a certificate from a throwaway CA (made with the `openssl` CLI) serves a
//! gateway given that CA in `RIVA_SSL_CERT`; with the web PKI roots alone the gateway stays
//! unready; an unreadable `RIVA_SSL_CERT` stops the gateway at startup.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use gateway_e2e::*;
use test_support::processes::TempDir;

/// Runs `openssl` in `dir` with the words of `args`.
fn openssl(dir: &Path, args: &str) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args.split_whitespace())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A throwaway CA (`ca.pem`) and a server certificate it signed for 127.0.0.1 and localhost
/// (`server.pem`, `server.key`), in a fresh temporary directory.
fn make_certs() -> anyhow::Result<TempDir> {
    let dir = TempDir::new("gateway-e2e-riva-tls");
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    openssl(
        &dir.0,
        &format!(
            "req -x509 {key} -keyout ca.key -out ca.pem -days 1 -subj /CN=voice-e2e-throwaway-CA \
             -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign,cRLSign"
        ),
    )?;
    openssl(
        &dir.0,
        &format!("req {key} -keyout server.key -out server.csr -subj /CN=voice-sim"),
    )?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        &dir.0,
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
         -days 1 -extfile server.ext",
    )?;
    Ok(dir)
}

/// The certificates and a simulator whose Riva listener serves TLS with them.
fn tls_sim() -> anyhow::Result<(TempDir, Sim)> {
    let dir = make_certs()?;
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let sim = Sim::start(&[
        "--profile",
        "zero",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])?;
    Ok((dir, sim))
}

/// With the CA in RIVA_SSL_CERT (and no RIVA_USE_TLS: it implies TLS), the gateway is ready
/// (Riva's health over TLS) and a spoken turn works: ASR and TTS over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riva_ssl_cert_trusts_a_private_ca() -> anyhow::Result<()> {
    let (dir, sim) = tls_sim()?;
    let ca = dir.join("ca.pem");
    let gw = Gateway::with_sim(&sim, &[("RIVA_SSL_CERT", ca.to_str().unwrap())])?;
    let got = gw.speak_and_close("are you there").await?;
    assert!(
        got.contains(&Got::Transcript("are you there".into())),
        "{got:?}"
    );
    let heard = hear(&audio(&got));
    assert_eq!(heard.len(), 4, "{heard:?} {:?}", tags(&got));
    assert_eq!(heard[0], "You said: are you there.");
    assert_eq!(gw.metrics()?.requests(), (1.0, 0.0));
    Ok(())
}

/// TLS with the web PKI roots only: the private CA's certificate is refused, so the gateway
/// stays unready and says why (Riva; the LLM answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riva_tls_without_the_ca_is_not_ready() -> anyhow::Result<()> {
    let (_dir, sim) = tls_sim()?;
    let gw = Gateway::start(&sim.riva, &sim.llm, &[("RIVA_USE_TLS", "true")])?;
    let why = poll(Duration::from_secs(10), "/readyz names Riva", || {
        let (status, why) = gw.http("/readyz").ok()?;
        (status == 503 && why.contains("Riva")).then_some(why)
    })?;
    assert!(!why.contains("LLM"), "{why}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(gw.http("/readyz")?.0, 503);
    Ok(())
}

/// An unreadable RIVA_SSL_CERT is a startup error naming the variable and the path.
#[test]
fn a_missing_riva_ssl_cert_stops_the_gateway() -> anyhow::Result<()> {
    let mut child = Command::new(&bins().gateway)
        .env("RIVA_URI", "127.0.0.1:1")
        .env("LLM_SERVICE_URL", "http://127.0.0.1:1/v1")
        .env("GRPC_PORT", free_port().to_string())
        .env("METRICS_PORT", free_port().to_string())
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("RIVA_SSL_CERT", "/nonexistent")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let status = poll(Duration::from_secs(10), "the gateway exits", || {
        child.try_wait().ok().flatten()
    });
    if status.is_err() {
        let _ = child.kill();
    }
    let status = status?;
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "{status:?}: {stderr}");
    assert!(
        stderr.contains("RIVA_SSL_CERT") && stderr.contains("/nonexistent"),
        "{stderr}"
    );
    Ok(())
}
