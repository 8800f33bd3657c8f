//! Audit transparency (signed checkpoints of the log's Merkle tree, their schedule) and
//! the redaction rules for logs.

pub mod checkpoint;
pub mod checkpointer;
pub mod redact;
pub mod state;
pub mod verify_export;
