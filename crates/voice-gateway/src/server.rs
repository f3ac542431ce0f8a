//! The gRPC service, the admin HTTP endpoints, readiness, and the shutdown sequence.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_stream::StreamExt;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::ServingStatus;
use tracing::{info, warn};
use voice_proto::voice::ClientMessage;
use voice_proto::voice::voice_gateway_server::{VoiceGateway, VoiceGatewayServer};

use crate::Shared;
use crate::config::Config;
use crate::llm::{LlmClient, LlmSettings};
use crate::metrics::Metrics;
use crate::riva::{Metadata, Riva};
use crate::session::{self, OutStream};

/// gRPC health service name of the gateway (also "" for the whole server).
pub const SERVICE_NAME: &str = "voice_workflow.VoiceGateway";

/// The `VoiceGateway` service.
#[derive(Debug, Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
}

#[tonic::async_trait]
impl VoiceGateway for Gateway {
    type StreamAudioStream = OutStream;

    async fn stream_audio(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::StreamAudioStream>, Status> {
        if *self.shared.drain.borrow() {
            return Err(Status::unavailable("the gateway is shutting down"));
        }
        let permit = self.limit.clone().try_acquire_owned().map_err(|_| {
            self.shared.metrics.streams_rejected.inc();
            Status::resource_exhausted(format!(
                "the gateway already serves MAX_CONCURRENT_STREAMS={} streams",
                self.shared.config.max_concurrent_streams
            ))
        })?;
        let (out, tx, ctl) = OutStream::new();
        tokio::spawn(session::run(
            self.shared.clone(),
            request.into_inner(),
            tx,
            ctl,
            permit,
        ));
        Ok(Response::new(out))
    }
}

/// Readiness as last probed.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
    reason: std::sync::Mutex<String>,
}

impl Readiness {
    fn set(&self, r: Result<(), String>) {
        self.ready.store(r.is_ok(), Ordering::Release);
        if let Ok(mut g) = self.reason.lock() {
            *g = r.err().unwrap_or_default();
        }
    }
    fn get(&self) -> (bool, String) {
        (
            self.ready.load(Ordering::Acquire),
            self.reason.lock().map(|g| g.clone()).unwrap_or_default(),
        )
    }
}

#[derive(Clone)]
struct Admin {
    shared: Arc<Shared>,
    readiness: Arc<Readiness>,
}

fn admin_router(a: Admin) -> axum::Router {
    axum::Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(
                |axum::extract::State(a): axum::extract::State<Admin>| async move {
                    if *a.shared.drain.borrow() {
                        return (StatusCode::SERVICE_UNAVAILABLE, "draining".to_string());
                    }
                    match a.readiness.get() {
                        (true, _) => (StatusCode::OK, "ok".to_string()),
                        (false, why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                    }
                },
            ),
        )
        .route(
            "/metrics",
            get(
                |axum::extract::State(a): axum::extract::State<Admin>| async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        a.shared.metrics.encode(),
                    )
                        .into_response()
                },
            ),
        )
        .with_state(a)
}

/// Probes both backends every `every`; ready only when both answer.
async fn probe_loop(
    shared: Arc<Shared>,
    readiness: Arc<Readiness>,
    reporter: tonic_health::server::HealthReporter,
    every: Duration,
) {
    let mut was = None;
    loop {
        let timeout = Duration::from_secs(2);
        let (r, l) = tokio::join!(shared.riva.probe(timeout), shared.llm.probe(timeout));
        let res = match (r, l) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(a), Ok(())) | (Ok(()), Err(a)) => Err(a),
            (Err(a), Err(b)) => Err(format!("{a}; {b}")),
        };
        let ok = res.is_ok();
        if was != Some(ok) {
            match &res {
                Ok(()) => info!("backends answer: ready"),
                Err(e) => warn!(reason = %e, "not ready"),
            }
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status(SERVICE_NAME, status).await;
            was = Some(ok);
        }
        readiness.set(res);
        tokio::time::sleep(every).await;
    }
}

/// Builds the shared state from the configuration.
pub fn build_shared(config: Config, drain: watch::Receiver<bool>) -> anyhow::Result<Arc<Shared>> {
    let riva = Riva::with_ca(
        &config.riva_uri,
        config.riva_use_tls,
        config.riva_ca_pem()?,
        Metadata::parse(&config.riva_metadata)?,
        config.riva_timeout(),
    )?;
    let llm = LlmClient::new(LlmSettings {
        base_url: config.llm_service_url.clone(),
        api_key: config.llm_api_key.clone(),
        model: config.llm_model.clone(),
        temperature: config.llm_temperature,
        max_tokens: config.llm_max_tokens,
        include_usage: config.llm_include_usage,
        first_token_timeout: config.llm_first_token_timeout(),
        idle_timeout: config.llm_idle_timeout(),
    })?;
    Ok(Arc::new(Shared {
        config,
        metrics: Metrics::new(),
        riva,
        llm,
        drain,
    }))
}

/// The gRPC listener as tonic's incoming stream, every accepted socket with TCP_NODELAY.
pub fn grpc_incoming(l: TcpListener) -> TcpIncoming {
    TcpIncoming::from(l).with_nodelay(Some(true))
}

/// Serves until `shutdown` resolves, then drains: stop accepting, let active turns finish within
/// SHUTDOWN_GRACE_PERIOD, return.
pub async fn serve(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (drain_tx, drain_rx) = watch::channel(false);
    let grace = config.grace();
    let grpc_addr = SocketAddr::new(config.bind_address, config.grpc_port);
    let admin_addr = SocketAddr::new(config.bind_address, config.metrics_port);
    let shared = build_shared(config, drain_rx.clone())?;
    let grpc_l = TcpListener::bind(grpc_addr).await?;
    let admin_l = TcpListener::bind(admin_addr).await?;
    info!(grpc = %grpc_l.local_addr()?, admin = %admin_l.local_addr()?, riva = %shared.config.riva_uri,
          llm = %shared.config.llm_service_url, model = %shared.config.llm_model,
          max_streams = shared.config.max_concurrent_streams, "voice-gateway listening");

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    reporter
        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(voice_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let readiness = Arc::new(Readiness::default());
    let mut probe = tokio::spawn(probe_loop(
        shared.clone(),
        readiness.clone(),
        reporter.clone(),
        Duration::from_secs(2),
    ));
    let gateway = Gateway {
        shared: shared.clone(),
        limit: Arc::new(Semaphore::new(shared.config.max_concurrent_streams)),
    };
    let mut drain_wait = drain_rx.clone();
    // tonic drops the listener when the drain signal fires; this sender goes with it, so the
    // receiver learns that new connections are refused.
    let (listener_open, listener_closed) = tokio::sync::oneshot::channel::<()>();
    let incoming = grpc_incoming(grpc_l).map(move |conn| {
        let _held_until_the_listener_is_dropped = &listener_open;
        conn
    });
    // `Server::tcp_nodelay` is ignored by `serve_with_incoming*`: the accepted sockets get it
    // here. Without it Nagle holds each small response frame (audio chunk, event) until the
    // client's delayed ACK, ~5–40 ms per turn at low load.
    let grpc = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(u32::MAX))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(health)
        .add_service(reflection)
        .add_service(VoiceGatewayServer::new(gateway))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = drain_wait.wait_for(|d| *d).await;
        });
    let admin = axum::serve(
        admin_l.tap_io(|s| {
            let _ = s.set_nodelay(true);
        }),
        admin_router(Admin {
            shared: shared.clone(),
            readiness,
        }),
    );
    let admin = tokio::spawn(async move { admin.await });
    let mut grpc = tokio::spawn(grpc);

    tokio::select! {
        r = &mut grpc => {
            probe.abort();
            admin.abort();
            return Ok(r??);
        }
        _ = shutdown => {}
    }
    let active = shared.metrics.active_streams.get();
    info!(
        active_streams = active,
        grace_s = grace.as_secs_f64(),
        "shutdown: draining"
    );
    // Draining first, then the health status once the listener is closed and the probe loop has
    // stopped: whoever hears NOT_SERVING finds `/readyz` saying "draining" and a new connection
    // refused, and no probe result can say SERVING after it.
    let grace_ends = tokio::time::Instant::now() + grace;
    let _ = drain_tx.send(true);
    let _ = tokio::time::timeout_at(grace_ends, listener_closed).await;
    probe.abort();
    let _ = (&mut probe).await;
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
        .await;
    match tokio::time::timeout_at(grace_ends, &mut grpc).await {
        Ok(r) => {
            r??;
            info!("drained: every stream finished");
        }
        Err(_) => warn!(
            active_streams = shared.metrics.active_streams.get(),
            "grace period over: exiting with streams still open"
        ),
    }
    admin.abort();
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_grpc_sockets_have_nodelay() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut incoming = grpc_incoming(l);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
