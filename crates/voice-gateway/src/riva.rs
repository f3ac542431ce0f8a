//! Riva clients: two lazily connected HTTP/2 channels shared by every session, one for ASR and
//! one for TTS (see [`Riva`]), optional TLS (web PKI roots, or the CA certificates of
//! RIVA_SSL_CERT), optional metadata (API keys) on every call.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use voice_proto::riva::AudioEncoding;
use voice_proto::riva::asr::riva_speech_recognition_client::RivaSpeechRecognitionClient;
use voice_proto::riva::asr::{
    RecognitionConfig, StreamingRecognitionConfig, StreamingRecognizeRequest,
    StreamingRecognizeResponse, streaming_recognize_request::StreamingRequest,
};
use voice_proto::riva::tts::riva_speech_synthesis_client::RivaSpeechSynthesisClient;
use voice_proto::riva::tts::{SynthesizeSpeechRequest, SynthesizeSpeechResponse};

/// Adds the configured metadata to every request.
#[derive(Debug, Clone, Default)]
pub struct Metadata(Arc<Vec<(AsciiMetadataKey, AsciiMetadataValue)>>);

impl Metadata {
    /// Parses `k=v,k2=v2` (keys lower-cased; values may contain `=`).
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let mut v = Vec::new();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, val) = pair
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("RIVA_METADATA entry {pair:?} is not key=value"))?;
            v.push((
                AsciiMetadataKey::from_bytes(k.trim().to_ascii_lowercase().as_bytes())?,
                AsciiMetadataValue::try_from(val.trim())?,
            ));
        }
        Ok(Self(Arc::new(v)))
    }
}

impl Interceptor for Metadata {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        for (k, v) in self.0.iter() {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        Ok(req)
    }
}

type Svc = InterceptedService<Channel, Metadata>;

/// HTTP/2 flow-control window of one Riva call (bytes): what a stalled stream can hold unread.
const RIVA_STREAM_WINDOW: u32 = 256 << 10;
/// HTTP/2 flow-control window of the connection to Riva: the protocol's maximum, 2^31 - 1.
const RIVA_CONNECTION_WINDOW: u32 = (1 << 31) - 1;
// Stalled streams cannot exhaust the connection window: at the default maximum of 1,000
// concurrent client streams, each with an ASR and a TTS call open, it still has room.
const _: () = assert!(RIVA_CONNECTION_WINDOW as u64 >= 2 * 1000 * RIVA_STREAM_WINDOW as u64);

/// Riva ASR + TTS + health, ASR and TTS each over a channel (an HTTP/2 connection) of its own.
///
/// Audio that Riva ASR has not read yet holds HTTP/2 flow-control window of its connection, up
/// to the whole of it: a Riva whose recognizers fall behind (or stop reading) leaves no window for
/// anything else sent on that connection. On a shared connection, the TTS requests of every
/// session would then wait behind it, and each turn would fail with "TTS stream stalled". With
/// TTS on its own connection, ASR backpressure stays with ASR.
#[derive(Debug, Clone)]
pub struct Riva {
    asr: Channel,
    tts: Channel,
    metadata: Metadata,
}

/// What one ASR request stream needs.
#[derive(Debug, Clone)]
pub struct AsrParams {
    /// BCP-47.
    pub language: String,
    /// Hz.
    pub sample_rate: i32,
    /// Interim results wanted.
    pub interim: bool,
}

impl Riva {
    /// Lazily connected channels to `uri` (`host:port`, `http://…` or `https://…`).
    pub fn new(
        uri: &str,
        tls: bool,
        metadata: Metadata,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::with_ca(uri, tls, None, metadata, timeout)
    }

    /// [`Riva::new`], with TLS trusting only the CA certificates in `ca_pem` (PEM) instead of
    /// the web PKI roots when it is given; it implies TLS.
    pub fn with_ca(
        uri: &str,
        tls: bool,
        ca_pem: Option<Vec<u8>>,
        metadata: Metadata,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let tls = tls || ca_pem.is_some() || uri.starts_with("https://");
        // tonic takes TLS from the scheme: an http:// URI would go in plain text, silently.
        anyhow::ensure!(
            !(tls && uri.starts_with("http://")),
            "RIVA_URI {uri:?} is http:// but TLS is asked for (RIVA_USE_TLS or RIVA_SSL_CERT): \
             use https:// or host:port"
        );
        let full = if uri.contains("://") {
            uri.to_string()
        } else if tls {
            format!("https://{uri}")
        } else {
            format!("http://{uri}")
        };
        let mut ep = Endpoint::from_shared(full)?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            // Every stream shares one HTTP/2 connection to Riva. A stream whose client stops
            // reading stops reading its TTS response, and the data Riva already sent holds
            // connection window until it is read: with a connection window smaller than the
            // streams' windows together, a few stalled clients would stall TTS for everyone.
            // So the connection window is HTTP/2's maximum (it never binds before the streams'
            // own do), and each stream may hold at most 256 KiB (~6 s of 22 kHz audio; far
            // more than a fast link needs) unread: that is the memory bound per stalled stream.
            .initial_stream_window_size(Some(RIVA_STREAM_WINDOW))
            .initial_connection_window_size(Some(RIVA_CONNECTION_WINDOW));
        if tls {
            let roots = match ca_pem {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_webpki_roots(),
            };
            ep = ep.tls_config(roots)?;
        }
        // Each `connect_lazy` is a channel of its own, with its own connection.
        Ok(Self {
            asr: ep.connect_lazy(),
            tts: ep.connect_lazy(),
            metadata,
        })
    }

    fn asr(&self) -> RivaSpeechRecognitionClient<Svc> {
        RivaSpeechRecognitionClient::with_interceptor(self.asr.clone(), self.metadata.clone())
            .max_decoding_message_size(64 << 20)
    }

    fn tts(&self) -> RivaSpeechSynthesisClient<Svc> {
        RivaSpeechSynthesisClient::with_interceptor(self.tts.clone(), self.metadata.clone())
            .max_decoding_message_size(64 << 20)
    }

    /// Opens `StreamingRecognize`: the config goes first, then every chunk sent on the returned
    /// channel; dropping the sender ends the audio.
    pub async fn streaming_recognize(
        &self,
        p: &AsrParams,
        audio: mpsc::Receiver<Bytes>,
    ) -> Result<tonic::Streaming<StreamingRecognizeResponse>, tonic::Status> {
        let config = StreamingRecognizeRequest {
            streaming_request: Some(StreamingRequest::StreamingConfig(
                StreamingRecognitionConfig {
                    config: Some(RecognitionConfig {
                        encoding: AudioEncoding::LinearPcm as i32,
                        sample_rate_hertz: p.sample_rate,
                        language_code: p.language.clone(),
                        max_alternatives: 1,
                        audio_channel_count: 1,
                        enable_automatic_punctuation: true,
                        ..Default::default()
                    }),
                    interim_results: p.interim,
                },
            )),
            ..Default::default()
        };
        let audio = ReceiverStream::new(audio).map(|chunk| StreamingRecognizeRequest {
            streaming_request: Some(StreamingRequest::AudioContent(chunk)),
            ..Default::default()
        });
        let requests = tokio_stream::once(config).chain(audio);
        Ok(self.asr().streaming_recognize(requests).await?.into_inner())
    }

    /// `SynthesizeOnline` of one sentence: the request is sent and the request side closed,
    /// which both the bidirectional (current) and server-streaming (older) Riva serve.
    pub async fn synthesize_online(
        &self,
        text: String,
        language: &str,
        voice: &str,
        sample_rate: i32,
    ) -> Result<tonic::Streaming<SynthesizeSpeechResponse>, tonic::Status> {
        let req = SynthesizeSpeechRequest {
            text,
            language_code: language.to_string(),
            encoding: AudioEncoding::LinearPcm as i32,
            sample_rate_hz: sample_rate,
            voice_name: voice.to_string(),
            ..Default::default()
        };
        Ok(self
            .tts()
            .synthesize_online(tokio_stream::once(req))
            .await?
            .into_inner())
    }

    /// Whether Riva answers `grpc.health.v1.Health/Check` with SERVING.
    pub async fn probe(&self, timeout: Duration) -> Result<(), String> {
        use tonic_health::pb::health_client::HealthClient;
        // On the TTS connection: the one a turn cannot do without once its transcript is final,
        // and the one ASR backpressure never holds up.
        let mut c = HealthClient::with_interceptor(self.tts.clone(), self.metadata.clone());
        let req = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        match tokio::time::timeout(timeout, c.check(req)).await {
            Err(_) => Err("Riva health check timed out".into()),
            Ok(Err(s)) => Err(format!("Riva health check failed: {}", s.message())),
            Ok(Ok(r)) if r.get_ref().status == 1 => Ok(()),
            Ok(Ok(r)) => Err(format!("Riva health status {}", r.get_ref().status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_with_an_http_uri_is_refused_rather_than_sent_in_plain_text() {
        let t = Duration::from_secs(1);
        let err = Riva::new("http://riva:50051", true, Metadata::default(), t).unwrap_err();
        assert!(
            err.to_string().contains("is http:// but TLS is asked for"),
            "{err}"
        );
        let err = Riva::with_ca(
            "http://riva:50051",
            false,
            Some(vec![]),
            Metadata::default(),
            t,
        )
        .unwrap_err();
        assert!(err.to_string().contains("RIVA_SSL_CERT"), "{err}");
    }
}
