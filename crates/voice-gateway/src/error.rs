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
    pub fn from_status(stage: Stage, s: &tonic::Status) -> Self {
        Self::backend(stage, status_label(s.code()), s.message().to_string())
    }
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
