//! Audit queries and export over the event log; redaction rules for logs.

pub mod redact;
