//! OpenAI-compatible streaming chat completions over HTTP/1.1 (hyper, rustls for `https`).
//!
//! `POST {LLM_SERVICE_URL}/chat/completions` with `stream: true`; the body is read frame by frame
//! through [`crate::sse`]. Timeouts: the first byte of the body must come within
//! LLM_FIRST_TOKEN_TIMEOUT of the request, and no gap in the stream may exceed LLM_IDLE_TIMEOUT.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::error::{Stage, TurnError};
use crate::sse::{self, SseDecoder};

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// One chat message.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    /// Text.
    pub content: String,
}

/// Settings of the LLM client.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    /// Base URL ending in `/v1`.
    pub base_url: String,
    /// Bearer token, empty for none.
    pub api_key: String,
    /// Model name.
    pub model: String,
    /// Sampling temperature.
    pub temperature: f64,
    /// Max tokens per reply.
    pub max_tokens: u32,
    /// Ask for `stream_options.include_usage`.
    pub include_usage: bool,
    /// Request → first body byte.
    pub first_token_timeout: Duration,
    /// Longest gap inside the stream.
    pub idle_timeout: Duration,
}

/// The client: one connection pool shared by every session.
#[derive(Debug, Clone)]
pub struct LlmClient {
    http: Client<Https, Full<Bytes>>,
    completions: Uri,
    models: Uri,
    auth: Option<HeaderValue>,
    settings: LlmSettings,
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    stream: bool,
    temperature: f64,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

fn err(kind: &str, msg: impl Into<String>) -> TurnError {
    TurnError::backend(Stage::Llm, kind, msg)
}

impl LlmClient {
    /// Builds the client (no connection is made yet).
    pub fn new(settings: LlmSettings) -> anyhow::Result<Self> {
        let base = settings.base_url.trim_end_matches('/');
        let completions: Uri = format!("{base}/chat/completions").parse()?;
        let models: Uri = format!("{base}/models").parse()?;
        let mut http_conn = HttpConnector::new();
        http_conn.set_nodelay(true);
        http_conn.enforce_http(false);
        http_conn.set_connect_timeout(Some(settings.first_token_timeout));
        let tls = rustls_config()?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http_conn);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4096)
            .build(https);
        let auth = (!settings.api_key.is_empty())
            .then(|| HeaderValue::from_str(&format!("Bearer {}", settings.api_key)))
            .transpose()?;
        Ok(Self {
            http,
            completions,
            models,
            auth,
            settings,
        })
    }

    /// Model name (the `model` label).
    pub fn model(&self) -> &str {
        &self.settings.model
    }

    /// Starts a streaming completion; returns once the response headers are in and are 2xx.
    pub async fn stream(&self, messages: &[ChatMessage]) -> Result<LlmStream, TurnError> {
        let s = &self.settings;
        let body = serde_json::to_vec(&Body {
            model: &s.model,
            messages,
            stream: true,
            temperature: s.temperature,
            max_tokens: s.max_tokens,
            stream_options: s.include_usage.then_some(StreamOptions {
                include_usage: true,
            }),
        })
        .map_err(|e| err("request", e.to_string()))?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.completions.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "text/event-stream");
        if let Some(a) = &self.auth {
            req = req.header(header::AUTHORIZATION, a.clone());
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| err("request", e.to_string()))?;
        let deadline = tokio::time::Instant::now() + s.first_token_timeout;
        let resp = match tokio::time::timeout_at(deadline, self.http.request(req)).await {
            Err(_) => {
                return Err(err(
                    "timeout",
                    "no response headers within LLM_FIRST_TOKEN_TIMEOUT",
                ));
            }
            Ok(Err(e)) => {
                let kind = if e.is_connect() { "connect" } else { "http" };
                return Err(err(kind, format!("{e:?}")));
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if !status.is_success() {
            return Err(non_2xx(status, resp.into_body(), s.idle_timeout).await);
        }
        Ok(LlmStream {
            body: resp.into_body(),
            sse: SseDecoder::default(),
            events: Vec::new(),
            next: 0,
            first_deadline: Some(deadline),
            idle: s.idle_timeout,
            ended: false,
        })
    }

    /// Whether the LLM answers and takes the API key: `GET /models` returns anything but a 5xx,
    /// a 401 or a 403 (a 404 passes: some OpenAI-compatible servers have no `/models`). A
    /// refused key makes the pod not ready, so a rollout with a wrong key stops before it
    /// replaces pods that work.
    pub async fn probe(&self, timeout: Duration) -> Result<(), String> {
        let mut req = Request::builder().uri(self.models.clone());
        if let Some(a) = &self.auth {
            req = req.header(header::AUTHORIZATION, a.clone());
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(timeout, self.http.request(req)).await {
            Err(_) => Err("LLM probe timed out".into()),
            Ok(Err(e)) => Err(format!("LLM unreachable: {e}")),
            Ok(Ok(r)) if r.status().is_server_error() => {
                Err(format!("LLM answered {}", r.status()))
            }
            Ok(Ok(r))
                if matches!(
                    r.status(),
                    hyper::StatusCode::UNAUTHORIZED | hyper::StatusCode::FORBIDDEN
                ) =>
            {
                Err(format!(
                    "LLM refused the API key ({}): check LLM_API_KEY",
                    r.status()
                ))
            }
            Ok(Ok(_)) => Ok(()),
        }
    }
}

fn rustls_config() -> anyhow::Result<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    Ok(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// Bytes of a non-2xx body read for the error message; the rest is never read.
const ERROR_BODY_LIMIT: usize = 4096;

/// At most the first `limit` bytes of `body`, read within `within` (what came by then).
async fn body_prefix<B>(mut body: B, limit: usize, within: Duration) -> Vec<u8>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = Vec::new();
    while buf.len() < limit {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    buf.extend_from_slice(&d[..d.len().min(limit - buf.len())]);
                }
            }
            _ => break,
        }
    }
    buf
}

/// The error of a non-2xx answer: the JSON `error` message in the first [`ERROR_BODY_LIMIT`]
/// bytes of its body, or else their first 2 KiB as text.
async fn non_2xx<B>(status: StatusCode, body: B, idle: Duration) -> TurnError
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let kind = if status.is_server_error() {
        "http_5xx"
    } else {
        "http_4xx"
    };
    let bytes = body_prefix(body, ERROR_BODY_LIMIT, idle).await;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(2048)]).into_owned();
    let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("error").map(sse::error_message))
        .unwrap_or(text);
    err(kind, format!("LLM answered {status}: {msg}"))
}

/// What the stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmPiece {
    /// Text (may hold `<think>` tags).
    Content(String),
    /// `usage.completion_tokens`.
    Usage(u64),
}

/// A streaming completion in progress.
#[derive(Debug)]
pub struct LlmStream {
    body: Incoming,
    sse: SseDecoder,
    events: Vec<String>,
    next: usize,
    first_deadline: Option<tokio::time::Instant>,
    idle: Duration,
    ended: bool,
}

impl LlmStream {
    /// The next piece; `None` at the end of the stream (`[DONE]` or EOF).
    pub async fn next(&mut self) -> Result<Option<LlmPiece>, TurnError> {
        loop {
            while self.next < self.events.len() {
                let data = std::mem::take(&mut self.events[self.next]);
                self.next += 1;
                let ev = sse::parse_event(&data).map_err(|(k, m)| err(k, m))?;
                if ev.done {
                    self.ended = true;
                    return Ok(None);
                }
                if let Some(c) = ev.content {
                    return Ok(Some(LlmPiece::Content(c)));
                }
                if let Some(n) = ev.completion_tokens {
                    return Ok(Some(LlmPiece::Usage(n)));
                }
            }
            if self.ended {
                return Ok(None);
            }
            self.events.clear();
            self.next = 0;
            let frame = match self.first_deadline.take() {
                Some(d) => tokio::time::timeout_at(d, self.body.frame()).await,
                None => tokio::time::timeout(self.idle, self.body.frame()).await,
            };
            match frame {
                Err(_) => return Err(err("timeout", "LLM stream stalled")),
                Ok(None) => {
                    self.sse.finish(&mut self.events);
                    self.ended = true;
                }
                Ok(Some(Err(e))) => return Err(err("stream", format!("LLM stream broke: {e}"))),
                Ok(Some(Ok(f))) => {
                    if let Ok(data) = f.into_data() {
                        self.sse
                            .push(&data, &mut self.events)
                            .map_err(|(k, m)| err(k, m))?;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    #[tokio::test(start_paused = true)]
    async fn an_endless_error_body_is_read_only_up_to_the_limit() {
        // A 500 whose body never ends: a chunk of 1 KiB every millisecond.
        let body = StreamBody::new(
            futures::stream::repeat(())
                .then(|()| async {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![b'x'; 1024])))
                })
                .boxed(),
        );
        let started = tokio::time::Instant::now();
        let e = non_2xx(
            StatusCode::INTERNAL_SERVER_ERROR,
            body,
            Duration::from_secs(10),
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let TurnError::Backend {
            error_type,
            message,
            ..
        } = e
        else {
            panic!("{e:?}")
        };
        assert_eq!(error_type, "http_5xx");
        assert!(message.ends_with(&"x".repeat(2048)), "{message}");
        assert!(message.len() < 2100, "{}", message.len());
    }

    #[tokio::test]
    async fn a_json_error_body_gives_its_message() {
        let body = Full::new(Bytes::from_static(
            br#"{"error":{"message":"no such model"}}"#,
        ));
        let e = non_2xx(StatusCode::NOT_FOUND, body, Duration::from_secs(1)).await;
        assert!(
            e.to_string()
                .contains("LLM answered 404 Not Found: no such model"),
            "{e}"
        );
    }
}
