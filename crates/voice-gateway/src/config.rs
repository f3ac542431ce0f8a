//! Configuration: the seed gateway's environment variables (same names, same defaults), with
//! command-line flags on top, plus a few of our own (marked "ours").

use std::time::Duration;

use clap::{ArgAction, Parser};

/// The seed's system prompt intent: short spoken answers, no markdown, because all is read aloud.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful voice assistant. Answer in one to three \
short, natural spoken sentences. Do not use markdown, lists, code, or emojis: everything you \
write is read aloud.";

/// Gateway configuration. Every field reads an environment variable of the same upper-case name.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "voice-gateway",
    about = "Streaming ASR -> LLM -> TTS voice gateway"
)]
pub struct Config {
    /// Riva gRPC endpoint, `host:port` (or a full `http://` / `https://` URI).
    #[arg(long, env = "RIVA_URI", default_value = "localhost:50051")]
    pub riva_uri: String,
    /// Ours: use TLS to Riva (with the web PKI roots). An `https://` RIVA_URI implies it.
    #[arg(long, env = "RIVA_USE_TLS", default_value_t = false, action = ArgAction::Set)]
    pub riva_use_tls: bool,
    /// Ours (named after NVIDIA's riva client option `--ssl-cert`): path of a PEM file of CA
    /// certificates to trust for Riva instead of the web PKI roots (a private CA, e.g.
    /// cert-manager's); setting it implies TLS. Read at startup: a missing file, or one without
    /// a valid certificate, stops the gateway (see [`Config::riva_ca_pem`]). Empty: web PKI.
    #[arg(long, env = "RIVA_SSL_CERT", default_value = "")]
    pub riva_ssl_cert: String,
    /// Ours: extra gRPC metadata sent to Riva, `key=value` pairs separated by commas
    /// (e.g. `authorization=Bearer nvapi-…,function-id=…`).
    #[arg(long, env = "RIVA_METADATA", default_value = "")]
    pub riva_metadata: String,
    /// OpenAI-compatible base URL ending in `/v1`.
    #[arg(
        long,
        env = "LLM_SERVICE_URL",
        default_value = "http://localhost:8000/v1"
    )]
    pub llm_service_url: String,
    /// Bearer token for the LLM (empty: no Authorization header).
    #[arg(long, env = "LLM_API_KEY", default_value = "", hide_env_values = true)]
    pub llm_api_key: String,
    /// gRPC listen port.
    #[arg(long, env = "GRPC_PORT", default_value_t = 50051)]
    pub grpc_port: u16,
    /// HTTP port of `/metrics`, `/livez`, `/readyz`.
    #[arg(long, env = "METRICS_PORT", default_value_t = 8080)]
    pub metrics_port: u16,
    /// Ours: listen address (both ports).
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: std::net::IpAddr,
    /// Seconds that active turns get to finish after SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE_PERIOD", default_value_t = 10.0)]
    pub shutdown_grace_period: f64,
    /// `error`, `warn`, `info`, `debug`, `trace`, Python's names (`WARNING`, `CRITICAL`, any
    /// case), or tracing filter directives (see [`log_directives`]).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Ours: `json` (one object per line, with the session id) or `text`.
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    pub log_format: String,
    /// Default ASR language (a session's `language_code` overrides it).
    #[arg(long, env = "ASR_LANGUAGE", default_value = "en-US")]
    pub asr_language: String,
    /// Default audio sample rate (a session's `sample_rate` overrides it).
    #[arg(long, env = "ASR_SAMPLE_RATE", default_value_t = 16_000)]
    pub asr_sample_rate: i32,
    /// Ours: forward interim transcripts to the client.
    #[arg(long, env = "ASR_INTERIM_RESULTS", default_value_t = true, action = ArgAction::Set)]
    pub asr_interim_results: bool,
    /// LLM model name.
    #[arg(long, env = "LLM_MODEL", default_value = "meta/llama-3.1-8b-instruct")]
    pub llm_model: String,
    /// Sampling temperature.
    #[arg(long, env = "LLM_TEMPERATURE", default_value_t = 0.5)]
    pub llm_temperature: f64,
    /// Maximum tokens per reply.
    #[arg(long, env = "LLM_MAX_TOKENS", default_value_t = 256)]
    pub llm_max_tokens: u32,
    /// System prompt.
    #[arg(long, env = "LLM_SYSTEM_PROMPT", default_value = DEFAULT_SYSTEM_PROMPT)]
    pub llm_system_prompt: String,
    /// Ours: ask for `stream_options.include_usage` (token counts from the server).
    #[arg(long, env = "LLM_INCLUDE_USAGE", default_value_t = true, action = ArgAction::Set)]
    pub llm_include_usage: bool,
    /// Ours: seconds from the LLM request to its first streamed byte (connect included).
    #[arg(long, env = "LLM_FIRST_TOKEN_TIMEOUT", default_value_t = 10.0)]
    pub llm_first_token_timeout: f64,
    /// Ours: longest silence, in seconds, inside an LLM stream before it counts as stalled.
    #[arg(long, env = "LLM_IDLE_TIMEOUT", default_value_t = 10.0)]
    pub llm_idle_timeout: f64,
    /// Ours: user/assistant turns of a session's history sent to the LLM.
    #[arg(long, env = "LLM_HISTORY_TURNS", default_value_t = 8)]
    pub llm_history_turns: usize,
    /// TTS voice (empty: the language's default voice).
    #[arg(long, env = "TTS_VOICE", default_value = "")]
    pub tts_voice: String,
    /// TTS output sample rate.
    #[arg(long, env = "TTS_SAMPLE_RATE", default_value_t = 16_000)]
    pub tts_sample_rate: i32,
    /// Ours: longest wait, in seconds, for a Riva answer (TTS chunk, ASR end of stream after the
    /// client's end of audio; speech still without its final transcript then is an ASR timeout).
    #[arg(long, env = "RIVA_TIMEOUT", default_value_t = 10.0)]
    pub riva_timeout: f64,
    /// Ours: seconds a stream's outbound queue may stay full (its client reads nothing) before
    /// the stream is ended with RESOURCE_EXHAUSTED, freeing its slot and its backend calls.
    #[arg(long, env = "CLIENT_STALL_TIMEOUT", default_value_t = 30.0)]
    pub client_stall_timeout: f64,
    /// Ours: concurrent StreamAudio calls; one more gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "MAX_CONCURRENT_STREAMS", default_value_t = 1000)]
    pub max_concurrent_streams: usize,
    /// Ours: a sentence shorter than this (characters) waits to be joined with the next.
    #[arg(long, env = "SENTENCE_MIN_CHARS", default_value_t = 6)]
    pub sentence_min_chars: usize,
    /// Ours: text longer than this without a sentence end is cut at a clause or word boundary.
    #[arg(long, env = "SENTENCE_MAX_CHARS", default_value_t = 250)]
    pub sentence_max_chars: usize,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl Config {
    /// SHUTDOWN_GRACE_PERIOD as a duration.
    pub fn grace(&self) -> Duration {
        secs(self.shutdown_grace_period)
    }
    /// LLM_FIRST_TOKEN_TIMEOUT as a duration.
    pub fn llm_first_token_timeout(&self) -> Duration {
        secs(self.llm_first_token_timeout)
    }
    /// LLM_IDLE_TIMEOUT as a duration.
    pub fn llm_idle_timeout(&self) -> Duration {
        secs(self.llm_idle_timeout)
    }
    /// RIVA_TIMEOUT as a duration.
    pub fn riva_timeout(&self) -> Duration {
        secs(self.riva_timeout)
    }
    /// CLIENT_STALL_TIMEOUT as a duration.
    pub fn client_stall_timeout(&self) -> Duration {
        secs(self.client_stall_timeout)
    }
    /// The PEM of RIVA_SSL_CERT (`None` if empty), checked now, at startup: a file that cannot
    /// be read, holds no PEM certificate, or holds one that is no valid CA certificate is an
    /// error naming the variable and the path (rustls would otherwise skip such certificates
    /// silently, and the gateway would only fail to connect later).
    pub fn riva_ca_pem(&self) -> anyhow::Result<Option<Vec<u8>>> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let path = self.riva_ssl_cert.as_str();
        if path.is_empty() {
            return Ok(None);
        }
        let fail = |why: String| anyhow::anyhow!("RIVA_SSL_CERT {path:?}: {why}");
        let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| fail(format!("not a PEM file of certificates: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| fail(format!("not a valid CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(fail("no PEM certificate in it".into()));
        }
        Ok(Some(pem))
    }
}

/// Sample rates the gateway accepts from clients (what Riva's ASR models take).
pub const SUPPORTED_SAMPLE_RATES: &[i32] = &[8_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000];

/// A level name, tracing's or Python logging's (the seed gateway's), in any case, as tracing's.
fn level_name(s: &str) -> Option<&'static str> {
    Some(match s.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "critical" | "fatal" => "error",
        "off" => "off",
        _ => return None,
    })
}

/// LOG_LEVEL as tracing `EnvFilter` directives. Level names are mapped, in a bare directive or
/// after `target=`: `WARNING` → `warn`, `CRITICAL`/`FATAL` → `error` (unmapped, tracing would
/// read such a word as a target name and log nothing else). A bare word that is no level is
/// an error, as is anything `EnvFilter` rejects; the caller then logs at `info`. Empty: `info`.
pub fn log_directives(level: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for d in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let mapped = match d.rsplit_once('=') {
            Some((target, l)) => {
                level_name(l).map_or_else(|| d.to_string(), |l| format!("{target}={l}"))
            }
            None if d.contains('[') => d.to_string(),
            None => level_name(d)
                .ok_or_else(|| format!("LOG_LEVEL {level:?}: {d:?} is not a level"))?
                .to_string(),
        };
        out.push(mapped);
    }
    if out.is_empty() {
        return Ok("info".into());
    }
    let directives = out.join(",");
    tracing_subscriber::EnvFilter::try_new(&directives)
        .map_err(|e| format!("LOG_LEVEL {level:?}: {e}"))?;
    Ok(directives)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::filter::LevelFilter;

    fn max_level(level: &str) -> Option<LevelFilter> {
        let d = log_directives(level).expect("valid");
        tracing_subscriber::EnvFilter::new(d).max_level_hint()
    }

    #[test]
    fn python_level_names_are_tracing_levels() {
        for (python, tracing) in [
            ("WARNING", "warn"),
            ("warning", "warn"),
            ("CRITICAL", "error"),
            ("FATAL", "error"),
            ("ERROR", "error"),
            ("INFO", "info"),
            (" Debug ", "debug"),
            ("", "info"),
        ] {
            assert_eq!(log_directives(python).as_deref(), Ok(tracing), "{python}");
        }
        assert_eq!(max_level("WARNING"), Some(LevelFilter::WARN));
        assert_eq!(max_level("CRITICAL"), Some(LevelFilter::ERROR));
    }

    #[test]
    fn tracing_directives_keep_working_with_either_names() {
        let ok = |s| log_directives(s).expect(s);
        assert_eq!(ok("h2=warn,info"), "h2=warn,info");
        assert_eq!(
            ok("voice_gateway=DEBUG,WARNING"),
            "voice_gateway=debug,warn"
        );
        assert_eq!(
            max_level("voice_gateway=trace,warn"),
            Some(LevelFilter::TRACE)
        );
        assert_eq!(ok("voice_gateway[session]"), "voice_gateway[session]");
    }

    /// RIVA_SSL_CERT's file errors, each naming the variable and the path (a valid CA is in
    /// the end-to-end test `riva_tls`, which makes one with openssl).
    #[test]
    fn riva_ssl_cert_is_checked_at_startup() {
        let ca = |path: &str| {
            Config::try_parse_from(["voice-gateway", "--riva-ssl-cert", path])
                .expect("flags")
                .riva_ca_pem()
        };
        assert!(ca("").expect("empty: web PKI").is_none());
        let dir = std::env::temp_dir().join(format!("riva-ssl-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n";
        for (name, content, why) in [
            ("missing.pem", None, "cannot read it"),
            ("empty.pem", Some("not PEM at all\n"), "no PEM certificate"),
            ("garbage.pem", Some(garbage), "not a valid CA certificate"),
        ] {
            let path = dir.join(name);
            if let Some(c) = content {
                std::fs::write(&path, c).unwrap();
            }
            let path = path.to_str().unwrap();
            let e = ca(path).expect_err(name).to_string();
            assert!(
                e.starts_with(&format!("RIVA_SSL_CERT {path:?}: {why}")),
                "{e}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn invalid_values_are_errors() {
        for bad in ["loud", "info,verbose", "voice_gateway=loud"] {
            let e = log_directives(bad).expect_err(bad);
            assert!(e.contains("LOG_LEVEL"), "{e}");
        }
    }
}
