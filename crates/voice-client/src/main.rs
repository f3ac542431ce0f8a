//! `voice-client --target ADDR (--wav FILE | --text TEXT) [--out reply.wav]`: one turn through
//! the gateway; prints the transcript, the reply and the per-turn latency breakdown, and saves the
//! reply audio as a WAV.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use voice_proto::voice::voice_gateway_client::VoiceGatewayClient;
use voice_proto::voice::{
    ClientMessage, EventType, VoiceConfig, client_message::Content as C,
    server_message::Content as S,
};

#[derive(Debug, Parser)]
#[command(
    name = "voice-client",
    about = "Runs one voice turn through voice-gateway"
)]
struct Args {
    /// Gateway address, host:port or http://host:port.
    #[arg(long, default_value = "127.0.0.1:50051")]
    target: String,
    /// 16-bit mono PCM WAV to speak.
    #[arg(long, conflicts_with = "text", required_unless_present = "text")]
    wav: Option<PathBuf>,
    /// Text turn (skips ASR).
    #[arg(long)]
    text: Option<String>,
    /// Where to save the reply audio.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Sample rate of the reply audio (the gateway's TTS_SAMPLE_RATE).
    #[arg(long, default_value_t = 16_000)]
    reply_sample_rate: u32,
    /// Language.
    #[arg(long, default_value = "en-US")]
    language: String,
    /// Send the WAV at real-time pace (as a microphone would) instead of at once.
    #[arg(long)]
    realtime: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let target = if a.target.contains("://") {
        a.target.clone()
    } else {
        format!("http://{}", a.target)
    };
    let mut client = VoiceGatewayClient::connect(target).await?;
    let (tx, rx) = mpsc::channel(64);
    let (pcm, rate) = match &a.wav {
        Some(path) => {
            let wav = std::fs::read(path)?;
            let info = voice_sim::codec::parse_wav(&wav)
                .ok_or_else(|| anyhow::anyhow!("{} is not a WAV file", path.display()))?;
            anyhow::ensure!(
                info.format == 1 && info.bits == 16 && info.channels == 1,
                "need 16-bit mono PCM"
            );
            let end = (info.data_offset + info.data_len as usize).min(wav.len());
            (wav[info.data_offset..end].to_vec(), info.sample_rate)
        }
        None => (Vec::new(), 16_000),
    };
    let msg = |c| ClientMessage { content: Some(c) };
    tx.send(msg(C::Config(VoiceConfig {
        language_code: a.language.clone(),
        session_id: String::new(),
        sample_rate: rate as i32,
        enable_timings: true,
        tts_voice: String::new(),
    })))
    .await?;
    let mut inbound = client
        .stream_audio(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let text = a.text.clone();
    let realtime = a.realtime;
    let sent = tokio::spawn(async move {
        if let Some(t) = text {
            let _ = tx.send(msg(C::TextInput(t))).await;
        } else {
            let chunk = (rate as usize / 10) * 2; // 100 ms
            for c in pcm.chunks(chunk) {
                if tx
                    .send(msg(C::AudioChunk(c.to_vec().into())))
                    .await
                    .is_err()
                {
                    break;
                }
                if realtime {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        Instant::now()
        // tx dropped here: half-close, the gateway ends after the turn with END_OF_TURN.
    });
    // A text turn has no ASR: its transcript is the text itself.
    let mut transcript = a.text.clone().unwrap_or_default();
    let mut reply = String::new();
    let mut audio = Vec::new();
    let mut first_audio = None;
    let mut timings = None;
    while let Some(m) = inbound.message().await? {
        match m.content {
            Some(S::TranscriptChunk(t)) => transcript = t,
            Some(S::LlmResponseChunk(t)) => reply.push_str(&t),
            Some(S::AudioChunk(b)) => {
                first_audio.get_or_insert_with(Instant::now);
                audio.extend_from_slice(&b);
            }
            Some(S::Timings(t)) => timings = Some(t),
            Some(S::Event(e)) => {
                let t = EventType::try_from(e.r#type).unwrap_or(EventType::EventUnspecified);
                if t == EventType::Error {
                    anyhow::bail!("gateway error: {}", e.message);
                }
            }
            None => {}
        }
    }
    let done_sending = sent.await?;
    println!("transcript: {transcript}");
    println!("reply:      {reply}");
    if let Some(t) = timings {
        println!(
            "latency:    asr {:.1} ms | llm first token {:.1} ms | first audio (e2e) {:.1} ms | llm total {:.1} ms | turn {:.1} ms",
            t.asr_ms, t.llm_first_token_ms, t.first_audio_ms, t.llm_total_ms, t.turn_total_ms
        );
        println!(
            "            {} tokens, {} sentences, {} audio bytes",
            t.llm_tokens, t.sentences, t.audio_bytes
        );
    }
    if let Some(f) = first_audio {
        let d = f.saturating_duration_since(done_sending);
        println!(
            "client:     first audio {:.1} ms after the input was sent",
            d.as_secs_f64() * 1e3
        );
    }
    if let Some(out) = &a.out {
        std::fs::write(out, voice_sim::codec::wav_file(a.reply_sample_rate, &audio))?;
        println!(
            "saved:      {} ({} bytes of audio)",
            out.display(),
            audio.len()
        );
    }
    Ok(())
}
