//! OpenAI-compatible chat completions (`POST /v1/chat/completions`, streaming and not), with
//! scripted replies, latency from the profile, fault injection, and an optional "quirks" mode
//! that speaks SSE the way real servers do at their most awkward.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::profile::Fault;
use crate::{SimState, clock};

/// Scripted replies: user message → reply (`"*"` is the fallback).
pub type Script = HashMap<String, String>;

/// The reply to `user` under `script`: an exact match, then `"*"` (with `{user}` replaced), then
/// the built-in reply, which repeats the user's words and exercises the sentence splitter.
pub fn reply_for(script: &Script, user: &str) -> String {
    let user = user.trim();
    if let Some(r) = script.get(user) {
        return r.clone();
    }
    let said = user.trim_end_matches(['.', '!', '?', ' ']);
    if let Some(r) = script.get("*") {
        return r.replace("{user}", said);
    }
    format!(
        "You said: {said}. This reply comes from the voice simulator. \
         Dr. Sim measured 3.5 seconds of audio! Is that not remarkable?"
    )
}

/// Splits a reply into streamed tokens: words with their leading space.
pub fn tokens(reply: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in reply.chars() {
        if c == ' ' && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The router of the LLM API.
pub fn router(state: Arc<SimState>) -> axum::Router {
    axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/v1/health/ready", get(health))
        .route("/health", get(health))
        .with_state(state)
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ready", "name": "voice-sim", "simulator": true}))
}

async fn models(State(s): State<Arc<SimState>>, headers: HeaderMap) -> Response {
    if let Some(refused) = unauthorized(&s, &headers) {
        return refused;
    }
    Json(json!({"object": "list", "data": [
        {"id": s.model, "object": "model", "created": 0, "owned_by": "voice-sim (simulator)"}
    ]}))
    .into_response()
}

/// A 401 when an API key is required and `headers` do not carry it as a bearer token.
fn unauthorized(s: &SimState, headers: &HeaderMap) -> Option<Response> {
    let key = s.required.api_key.as_deref()?;
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    (got != Some(format!("Bearer {key}").as_str())).then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "voice-sim: missing or wrong API key (Authorization: Bearer ...)",
        )
    })
}

fn error(status: StatusCode, msg: &str) -> Response {
    let body =
        json!({"error": {"message": msg, "type": "voice_sim_error", "code": status.as_u16()}});
    (status, Json(body)).into_response()
}

fn last_user(body: &Value) -> Option<String> {
    let msgs = body.get("messages")?.as_array()?;
    let m = msgs
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    match m.get("content")? {
        Value::String(s) => Some(s.clone()),
        // Content parts: concatenate the text ones.
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    }
}

async fn chat(State(s): State<Arc<SimState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = unauthorized(&s, &headers) {
        return refused;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "request body is not JSON");
    };
    let Some(user) = last_user(&body) else {
        return error(StatusCode::BAD_REQUEST, "messages has no user message");
    };
    let fault = s.faults.draw();
    if fault == Fault::Error || user.contains("[llm-error]") {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "voice-sim: simulated LLM outage",
        );
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(&s.model)
        .to_string();
    let n_messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let reply = if user.contains("[count]") {
        // Lets tests see how much history the client sent.
        format!("This conversation has {n_messages} messages.")
    } else {
        reply_for(&s.script, &user)
    };
    let mut toks = tokens(&reply);
    if let Some(max) = body.get("max_tokens").and_then(Value::as_u64) {
        toks.truncate(max as usize);
    }
    let prompt_tokens: usize = body
        .get("messages")
        .and_then(Value::as_array)
        .map(|m| m.iter().map(|m| m.to_string().len() / 4).sum())
        .unwrap_or(0);
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        let p = s.profile;
        clock::after(p.llm_ttft + p.llm_token_delay * toks.len() as u32).await;
        return Json(json!({
            "id": "chatcmpl-voice-sim", "object": "chat.completion", "created": 0, "model": model,
            "system_fingerprint": "voice-sim",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": toks.concat()}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": toks.len(),
                      "total_tokens": prompt_tokens + toks.len()}
        }))
        .into_response();
    }
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mode = if user.contains("[llm-stall]") || fault == Fault::Stall {
        Mode::Stall
    } else if user.contains("[llm-disconnect]") || fault == Fault::Disconnect {
        Mode::Disconnect
    } else if user.contains("[llm-midstream-error]") {
        Mode::MidstreamError
    } else {
        Mode::Normal
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let job = StreamJob {
        state: s.clone(),
        model,
        toks,
        include_usage,
        prompt_tokens,
        mode,
    };
    tokio::spawn(job.run(tx));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(ReceiverStream::new(rx)))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response build"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    Stall,
    Disconnect,
    MidstreamError,
}

struct StreamJob {
    state: Arc<SimState>,
    model: String,
    toks: Vec<String>,
    include_usage: bool,
    prompt_tokens: usize,
    mode: Mode,
}

type Tx = mpsc::Sender<Result<Bytes, std::io::Error>>;

impl StreamJob {
    /// A content chunk, written directly rather than built as a `Value` (one per token: the
    /// simulator shares the cores with the gateway it measures). Same fields as [`Self::chunk`].
    fn content_chunk(&self, token: &str) -> String {
        let q = |s: &str| Value::String(s.to_string()).to_string();
        format!(
            r#"{{"choices":[{{"delta":{{"content":{}}},"finish_reason":null,"index":0}}],"created":0,"id":"chatcmpl-voice-sim","model":{},"object":"chat.completion.chunk","system_fingerprint":"voice-sim"}}"#,
            q(token),
            q(&self.model)
        )
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({"id": "chatcmpl-voice-sim", "object": "chat.completion.chunk", "created": 0,
               "model": self.model, "system_fingerprint": "voice-sim",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    /// Writes one SSE event; in quirks mode with `\r\n`, `data:` without a space, and split in
    /// two writes. Err when the client went away.
    async fn event(&self, tx: &Tx, data: &str, n: usize) -> Result<(), ()> {
        let quirks = self.state.llm_quirks;
        let text = if quirks {
            let sep = if n.is_multiple_of(2) {
                "data:"
            } else {
                "data: "
            };
            format!("{sep}{data}\r\n\r\n")
        } else {
            format!("data: {data}\n\n")
        };
        if quirks {
            let mid = text.len() / 2;
            let mid = (0..=mid)
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            let (a, b) = text.split_at(mid);
            tx.send(Ok(Bytes::copy_from_slice(a.as_bytes())))
                .await
                .map_err(|_| ())?;
            tx.send(Ok(Bytes::copy_from_slice(b.as_bytes())))
                .await
                .map_err(|_| ())
        } else {
            tx.send(Ok(Bytes::from(text))).await.map_err(|_| ())
        }
    }

    async fn run(self, tx: Tx) {
        let _ = self.run_inner(&tx).await;
    }

    async fn run_inner(&self, tx: &Tx) -> Result<(), ()> {
        let p = self.state.profile;
        let quirks = self.state.llm_quirks;
        let start = Instant::now();
        let mut n = 0;
        self.event(
            tx,
            &self
                .chunk(json!({"role": "assistant", "content": ""}), None)
                .to_string(),
            n,
        )
        .await?;
        if self.mode == Mode::Stall {
            tx.closed().await;
            return Ok(());
        }
        if quirks {
            tx.send(Ok(Bytes::from_static(b": keep-alive\r\n\r\n")))
                .await
                .map_err(|_| ())?;
            let empty = json!({"id": "chatcmpl-voice-sim", "object": "chat.completion.chunk",
                               "created": 0, "model": self.model, "choices": []});
            self.event(tx, &empty.to_string(), n).await?;
            for r in [
                json!({"reasoning_content": "The user wants an answer. "}),
                json!({"reasoning": "Keep it short."}),
                json!({"content": "<think>Plan the reply."}),
                json!({"content": " Done.</th"}),
                json!({"content": "ink>"}),
            ] {
                n += 1;
                self.event(tx, &self.chunk(r, None).to_string(), n).await?;
            }
        }
        let total = self.toks.len();
        for (i, t) in self.toks.iter().enumerate() {
            clock::until(start + p.llm_ttft + p.llm_token_delay * i as u32).await;
            if self.mode == Mode::Disconnect && i * 2 >= total {
                let e = std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "voice-sim: simulated disconnect",
                );
                let _ = tx.send(Err(e)).await;
                return Err(());
            }
            if self.mode == Mode::MidstreamError && i * 2 >= total {
                let e = json!({"error": {"message": "voice-sim: simulated mid-stream error", "type": "server_error"}});
                self.event(tx, &e.to_string(), n).await?;
                return Ok(());
            }
            n += 1;
            self.event(tx, &self.content_chunk(t), n).await?;
        }
        self.event(tx, &self.chunk(json!({}), Some("stop")).to_string(), n)
            .await?;
        if self.include_usage {
            let u = json!({"id": "chatcmpl-voice-sim", "object": "chat.completion.chunk",
                           "created": 0, "model": self.model, "choices": [],
                           "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": total,
                                     "total_tokens": self.prompt_tokens + total}});
            self.event(tx, &u.to_string(), n).await?;
        }
        if !quirks {
            // Quirks mode closes without [DONE], as some servers do.
            tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n")))
                .await
                .map_err(|_| ())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_spaces_and_concat_back() {
        let r = "Hello there, Dr. Sim.";
        let t = tokens(r);
        assert_eq!(t, vec!["Hello", " there,", " Dr.", " Sim."]);
        assert_eq!(t.concat(), r);
    }

    #[test]
    fn content_chunk_is_the_generic_chunk() {
        let job = StreamJob {
            state: Arc::new(crate::SimState {
                profile: crate::profile::Profile::ZERO,
                faults: crate::profile::Faults::new(0.0, 0.0, 0.0, 1),
                script: Script::new(),
                sidecars: Default::default(),
                model: "sim".into(),
                llm_quirks: false,
                required: Default::default(),
            }),
            model: "m \"x\"".into(),
            toks: Vec::new(),
            include_usage: false,
            prompt_tokens: 0,
            mode: Mode::Normal,
        };
        for t in [" hello", "a\"b\\c\n", "é ✓"] {
            let fast: Value = serde_json::from_str(&job.content_chunk(t)).unwrap();
            assert_eq!(fast, job.chunk(json!({"content": t}), None));
        }
    }

    #[test]
    fn script_lookup_order() {
        let mut s = Script::new();
        assert!(reply_for(&s, "hi there.").starts_with("You said: hi there. "));
        s.insert("*".into(), "Echo {user}!".into());
        assert_eq!(reply_for(&s, "abc?"), "Echo abc!");
        s.insert("abc?".into(), "Exact.".into());
        assert_eq!(reply_for(&s, " abc? "), "Exact.");
    }
}
