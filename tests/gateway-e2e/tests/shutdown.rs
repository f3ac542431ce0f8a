//! What a gateway that is draining (SIGTERM, `SHUTDOWN_GRACE_PERIOD`) tells the world, and that
//! it exits when the grace period ends even with a turn still speaking.

use std::time::{Duration, Instant};

use gateway_e2e::{Gateway, Got, Sim, msg};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use voice_proto::voice::EventType;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_refuses_new_streams_reports_not_ready_and_ends_at_the_grace_period()
-> anyhow::Result<()> {
    // A long reply spoken at half real time: the turn outlasts the 2-s grace period.
    let reply = "This sentence is one of many in a long reply. ".repeat(20);
    let sim = Sim::replying(reply.trim(), &["--tts-rtf", "0.5"])?;
    let gw = Gateway::with_sim(&sim, &[("SHUTDOWN_GRACE_PERIOD", "2")])?;

    // A health watch on a connection of its own, as a load balancer keeps one.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", gw.grpc_port))?
            .connect()
            .await?;
    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    let first = watch.message().await?.expect("a first health status");
    assert_eq!(first.status(), ServingStatus::Serving);
    // And one on the readiness service, which turns SERVING once the backends answer.
    let mut ready_watch = health
        .watch(HealthCheckRequest {
            service: "voice_workflow.VoiceGateway".into(),
        })
        .await?
        .into_inner();
    loop {
        match next_status(&mut ready_watch, Duration::from_secs(10)).await? {
            Some(ServingStatus::Serving) => break,
            Some(_) => continue,
            None => anyhow::bail!("the readiness watch ended before SERVING"),
        }
    }

    let mut c = gw.open().await?;
    c.send(msg::config(16_000, false)).await?;
    c.send(msg::text("tell me a long story")).await?;
    c.until(|g| matches!(g, Got::Event(EventType::Speaking, _)))
        .await?;
    gw.sigterm()?;
    let signalled = Instant::now();

    // The watch hears NOT_SERVING; /readyz says draining, while /livez still answers.
    let five_s = Duration::from_secs(5);
    assert_eq!(
        next_status(&mut watch, five_s).await?,
        Some(ServingStatus::NotServing)
    );
    assert_eq!(
        next_status(&mut ready_watch, five_s).await?,
        Some(ServingStatus::NotServing),
        "the readiness service while draining"
    );
    let (status, body) = gw.http("/readyz")?;
    assert_eq!((status, body.as_str()), (503, "draining"));
    assert_eq!(gw.http("/livez")?.0, 200);

    // A new stream is refused: the listener is closed, and a refused connection is what a
    // gRPC client reports as UNAVAILABLE; a stream that gets through is refused by the gateway.
    let refused = match gw.open().await {
        Ok(mut late) => late.next().await.err().map(|s| s.code()),
        Err(e) => e
            .downcast_ref::<tonic::Status>()
            .map(|s| s.code())
            .or(Some(tonic::Code::Unavailable)),
    };
    assert_eq!(
        refused,
        Some(tonic::Code::Unavailable),
        "a new stream while draining"
    );

    // The grace period ends with the turn still speaking: the process exits by itself,
    // successfully, and the stream in flight is cut (no END_OF_TURN).
    let status = gw
        .wait_exit(Duration::from_secs(10).saturating_sub(signalled.elapsed()))
        .await;
    let exited_after = signalled.elapsed();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(
        exited_after >= Duration::from_secs(2),
        "exited {exited_after:?} after SIGTERM, before the grace period ended"
    );
    let rest = c.rest().await;
    let ended_turn = rest.as_ref().is_ok_and(|got| {
        got.iter()
            .any(|g| matches!(g, Got::Event(EventType::EndOfTurn, _)))
    });
    assert!(!ended_turn, "the long turn cannot have finished: {rest:?}");
    Ok(())
}

/// The next status a health watch reports within `within`; `None` when the watch ends or fails.
async fn next_status(
    watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
    within: Duration,
) -> anyhow::Result<Option<ServingStatus>> {
    let m = tokio::time::timeout(within, watch.message()).await?;
    Ok(m.ok().flatten().map(|m| m.status()))
}
