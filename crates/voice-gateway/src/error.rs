//! Turn failures, by backend stage, with the `error_type` label they are counted under.

/// The backend a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Riva ASR.
    Asr,
    /// The LLM.
    Llm,
    /// Riva TTS.
    Tts,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Asr => "ASR",
            Stage::Llm => "LLM",
            Stage::Tts => "TTS",
        })
    }
}

/// Why a turn stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// A backend failed: counted in `voice_gateway_{stage}_errors_total{error_type}`.
    #[error("{stage} backend error ({error_type}): {message}")]
    Backend {
        /// Which backend.
        stage: Stage,
        /// Label value.
        error_type: String,
        /// For the client's ERROR event and the logs.
        message: String,
    },
    /// The client went away: nothing to report to anyone.
    #[error("client disconnected")]
    ClientGone,
    /// The client read nothing for CLIENT_STALL_TIMEOUT while its queue was full.
    #[error("client stopped reading")]
    ClientStalled,
}

impl TurnError {
    /// A backend failure.
    pub fn backend(
        stage: Stage,
        error_type: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Backend {
            stage,
            error_type: error_type.into(),
            message: message.into(),
        }
    }

    /// A gRPC status from Riva, labelled by its code (`unavailable`, `deadline_exceeded`, …).
    /// The message carries the status's causes too: for a call lost with its connection,
    /// tonic's own message ("h2 protocol error: error reading a body from connection") does
    /// not say why.
    pub fn from_status(stage: Stage, s: &tonic::Status) -> Self {
        let message = with_causes(s.message(), std::error::Error::source(s));
        Self::backend(stage, status_label(s.code()), message)
    }
}

/// `message`, then each cause of `source`'s chain that it does not say already, `: `-separated.
fn with_causes(message: &str, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut out = message.to_string();
    while let Some(e) = source {
        let cause = e.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
        source = e.source();
    }
    out
}

/// Snake-case name of a gRPC code, used as `error_type`.
pub fn status_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "timeout",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// An error that says `text` and has `source` as its cause.
    #[derive(Debug)]
    struct Cause {
        text: &'static str,
        source: Option<Box<Cause>>,
    }

    impl std::fmt::Display for Cause {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.text)
        }
    }

    impl std::error::Error for Cause {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.source.as_deref().map(|c| c as _)
        }
    }

    #[test]
    fn a_status_from_riva_carries_its_causes_once_each() {
        // What tonic makes of a TTS call whose connection broke: its message names the body
        // read, the cause under it says why.
        let mut s =
            tonic::Status::unknown("h2 protocol error: error reading a body from connection");
        s.set_source(Arc::new(Cause {
            text: "error reading a body from connection",
            source: Some(Box::new(Cause {
                text: "keep-alive timed out",
                source: None,
            })),
        }));
        assert_eq!(
            TurnError::from_status(Stage::Tts, &s).to_string(),
            "TTS backend error (unknown): h2 protocol error: error reading a body from connection: keep-alive timed out"
        );
        // A status of Riva's own has no cause: its message alone.
        let s = tonic::Status::unavailable("model not loaded");
        assert_eq!(
            TurnError::from_status(Stage::Asr, &s).to_string(),
            "ASR backend error (unavailable): model not loaded"
        );
    }
}
