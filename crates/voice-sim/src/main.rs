//! `voice-sim`: Riva-compatible ASR/TTS and OpenAI-compatible LLM, simulated. See the crate docs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use voice_sim::{SimState, codec, llm, profile};

#[derive(Debug, Parser)]
#[command(
    name = "voice-sim",
    about = "SIMULATOR of Riva ASR/TTS (gRPC) and an OpenAI-compatible LLM (HTTP)",
    after_help = "Deterministic faults by trigger word: [asr-error] in the speech; [llm-error], \
[llm-stall], [llm-disconnect], [llm-midstream-error] in the user's message; [tts-error], \
[tts-stall] in the text to synthesize (the default reply repeats the user's words)."
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Riva gRPC listen address (port 0: any free port; the bound one is printed).
    #[arg(long, default_value = "127.0.0.1:50052")]
    riva_addr: SocketAddr,
    /// LLM HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:8001")]
    llm_addr: SocketAddr,
    /// Latency profile: zero, seed, h100.
    #[arg(long, default_value = "zero")]
    profile: String,
    /// Override: ASR final-result delay after the end of speech, ms.
    #[arg(long)]
    asr_final_ms: Option<u64>,
    /// Override: LLM time to first token, ms.
    #[arg(long)]
    llm_ttft_ms: Option<u64>,
    /// Override: LLM delay between tokens, ms.
    #[arg(long)]
    llm_token_ms: Option<u64>,
    /// Override: TTS first-chunk delay, ms.
    #[arg(long)]
    tts_first_chunk_ms: Option<u64>,
    /// Override: TTS real-time factor (wall seconds per second of audio after the first chunk).
    #[arg(long)]
    tts_rtf: Option<f64>,
    /// Probability that a request fails at once.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Probability that a request never answers.
    #[arg(long, default_value_t = 0.0)]
    stall_rate: f64,
    /// Probability that a stream breaks off midway.
    #[arg(long, default_value_t = 0.0)]
    disconnect_rate: f64,
    /// Probability that a TTS call never answers (no headers, no audio); TTS only, ASR and LLM
    /// keep working. (`[tts-stall]` in the text to synthesize: headers, then no audio.)
    #[arg(long, default_value_t = 0.0)]
    tts_stall_rate: f64,
    /// Probability that an ASR call takes its config, then reads no audio and answers nothing
    /// (a hung server: the caller's HTTP/2 window fills); ASR only, LLM and TTS keep working.
    #[arg(long, default_value_t = 0.0)]
    asr_stall_rate: f64,
    /// Seed of the fault draw.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// JSON object of scripted replies: {"user text": "reply", "*": "fallback with {user}"}.
    #[arg(long)]
    script: Option<PathBuf>,
    /// Directory of NAME.wav + NAME.txt: the ASR answers NAME.txt for that audio.
    #[arg(long)]
    transcripts: Option<PathBuf>,
    /// Model name reported by /v1/models.
    #[arg(long, default_value = "voice-sim/llm-simulator")]
    model: String,
    /// Speak SSE with every quirk the gateway must tolerate.
    #[arg(long)]
    llm_quirks: bool,
    /// Answer LLM requests without `Authorization: Bearer KEY` with 401.
    #[arg(long, value_name = "KEY")]
    require_api_key: Option<String>,
    /// Fail Riva ASR/TTS calls without this gRPC metadata with UNAUTHENTICATED (repeatable;
    /// gRPC health stays open).
    #[arg(long, value_name = "KEY=VALUE", value_parser = metadata_entry)]
    require_metadata: Vec<(String, String)>,
    /// Serve the Riva gRPC listener (health included) over TLS with this PEM certificate chain,
    /// as a Riva behind cert-manager does (the certificate is the simulator's; the LLM stays
    /// plain HTTP).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Write the FileDescriptorSet of the simulator's protos to this file and exit.
    #[arg(long)]
    dump_descriptors: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write simulator speech for TEXT as a WAV file (input for voice-client --wav).
    Speak {
        /// What the speech says.
        #[arg(long)]
        text: String,
        /// Output WAV.
        #[arg(long)]
        out: PathBuf,
        /// Sample rate.
        #[arg(long, default_value_t = 16_000)]
        sample_rate: u32,
    },
}

/// `key=value` (the key lower-cased, as gRPC metadata keys are).
fn metadata_entry(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not key=value"))?;
    Ok((k.trim().to_ascii_lowercase(), v.trim().to_string()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(path) = &args.dump_descriptors {
        std::fs::write(path, voice_proto::FILE_DESCRIPTOR_SET)?;
        return Ok(());
    }
    if let Some(Cmd::Speak {
        text,
        out,
        sample_rate,
    }) = &args.cmd
    {
        let pcm = codec::encode_speech(text, *sample_rate);
        std::fs::write(out, codec::wav_file(*sample_rate, &pcm))?;
        return Ok(());
    }
    let mut p = profile::Profile::by_name(&args.profile)
        .ok_or_else(|| anyhow::anyhow!("unknown profile {:?} (zero, seed, h100)", args.profile))?;
    let ms = Duration::from_millis;
    if let Some(v) = args.asr_final_ms {
        p.asr_final_delay = ms(v);
    }
    if let Some(v) = args.llm_ttft_ms {
        p.llm_ttft = ms(v);
    }
    if let Some(v) = args.llm_token_ms {
        p.llm_token_delay = ms(v);
    }
    if let Some(v) = args.tts_first_chunk_ms {
        p.tts_first_chunk = ms(v);
    }
    if let Some(v) = args.tts_rtf {
        p.tts_rtf = v;
    }
    let script: llm::Script = match &args.script {
        Some(path) => serde_json::from_slice(&std::fs::read(path)?)?,
        None => Default::default(),
    };
    let sidecars = match &args.transcripts {
        Some(dir) => voice_sim::riva::load_sidecars(dir)?,
        None => Default::default(),
    };
    let mut faults = profile::Faults::new(
        args.error_rate,
        args.stall_rate,
        args.disconnect_rate,
        args.seed,
    );
    faults.tts_stall_rate = args.tts_stall_rate;
    faults.asr_stall_rate = args.asr_stall_rate;
    let state = Arc::new(SimState {
        profile: p,
        faults,
        script,
        sidecars,
        model: args.model.clone(),
        llm_quirks: args.llm_quirks,
        required: voice_sim::Required {
            api_key: args.require_api_key.clone(),
            metadata: args.require_metadata.clone(),
        },
    });
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tonic::transport::Identity::from_pem(
            std::fs::read(cert).with_context(|| format!("--tls-cert {}", cert.display()))?,
            std::fs::read(key).with_context(|| format!("--tls-key {}", key.display()))?,
        )),
        _ => None,
    };
    let riva_tls = tls.is_some();
    let (bound, handle) =
        voice_sim::start_with_tls(state, args.riva_addr, args.llm_addr, tls).await?;
    tracing::info!(riva = %bound.riva, riva_tls, llm = %bound.llm, profile = %args.profile, ?p, "voice-sim (SIMULATOR, not a real backend) listening");
    // Machine-readable line for tests and scripts.
    println!("voice-sim listening riva={} llm={}", bound.riva, bound.llm);
    tokio::select! {
        r = handle => r??,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
