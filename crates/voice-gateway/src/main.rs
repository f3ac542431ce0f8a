//! `voice-gateway` binary: configuration from the environment (seed names) and flags, logs, serve.

use clap::Parser;
use voice_gateway::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let directives = voice_gateway::config::log_directives(&config.log_level);
    let filter = tracing_subscriber::EnvFilter::new(directives.as_deref().unwrap_or("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_format == "text" {
        builder.init();
    } else {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    }
    if let Err(e) = directives {
        tracing::warn!("{e}: logging at info");
    }
    voice_gateway::server::serve(config, voice_gateway::server::shutdown_signal()).await
}
