//! The one error type of the `events` module.

/// Errors of the event log. Each variant says how it reaches a client; the API layer owns
/// the actual mapping to status codes and bodies.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The log could not durably commit (I/O error, disk full, store shut down). Nothing of
    /// the failed append became visible and the head did not move; the caller may retry.
    /// Reaches clients as 503 SERVICE_UNAVAILABLE.
    #[error("event log unavailable: {0}")]
    Unavailable(String),

    /// Another process holds the data directory. Refuses to start.
    #[error("data dir {0} is in use by a running inferno server")]
    Locked(String),

    /// The hash chain does not verify at `seq` (tampering or corruption). Refuses to start
    /// unless the operator explicitly allows a broken tail.
    #[error("event log hash chain is broken at seq {seq} ({reason}); run `inferno audit verify` (or start with allow_broken_tail to inspect)")]
    BrokenChain { seq: u64, reason: String },

    /// The stored layout was written by a newer Inferno. Refuses to start.
    #[error("data dir layout version {found} is newer than this build supports ({supported}); upgrade inferno")]
    UnknownLayoutVersion { found: u32, supported: u32 },

    /// A stored event or record could not be decoded (unknown type or version, bad JSON).
    /// Reaches clients as 500 INTERNAL_ERROR.
    #[error("cannot decode {what}: {reason}")]
    Decode { what: String, reason: String },

    /// Storage returned something that violates the store's invariants. 500 INTERNAL_ERROR.
    #[error("event store corrupt: {0}")]
    Corrupt(String),

    /// A caller passed an invalid argument (unknown keyspace, limit out of range).
    /// Reaches clients as 400 VALIDATION_ERROR when it comes from request input, else 500.
    #[error("invalid argument: {0}")]
    Invalid(String),

    /// Storage failure outside the append path (reads, start-up, admin). 500, or refuse to
    /// start when it happens at open.
    #[error("storage error: {0}")]
    Storage(String),

    /// File I/O outside fjall (lock file, export writer). 500.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<fjall::Error> for EventError {
    fn from(e: fjall::Error) -> Self {
        EventError::Storage(e.to_string())
    }
}

impl EventError {
    pub(crate) fn decode(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        EventError::Decode {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
