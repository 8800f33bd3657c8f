//! # Inferno
//!
//! A self-hosted LLM inference server: real llama.cpp inference behind a secured,
//! documented API, with every action recorded in a tamper-evident event log.
//!
//! # Layout
//!
//! - [`config`]: one typed `Config` from defaults, a TOML file and `INFERNO_` variables.
//! - [`cli`]: the `inferno` command line; `main.rs` only parses and calls it.
//! - [`server`]: wiring of the shared state and the server's lifecycle.
//! - [`api`]: poem-openapi resources, the error body, middleware and TLS. Only this module
//!   knows HTTP.
//! - [`auth`]: users, argon2id passwords, JWTs, API keys, permissions, roles, `Principal`.
//! - [`ratelimit`]: limits per principal, throttling of failed logins and authentications,
//!   with header values.
//! - [`paging`]: cursor paging of the list routes.
//! - [`events`]: the hash-chained event log in fjall, projections, replay, upcasters.
//! - [`inference`]: the `Engine` trait, llama.cpp with continuous batching (all FFI in one
//!   file, on its own threads), GGUF models, the catalog and the request runner.
//! - [`queue`]: the durable job queue (every inference is a job) and its apalis workers.
//! - [`stream`]: numbered, stored token pieces of jobs and their live fan-out (SSE, NATS).
//! - [`audit`]: audit queries over the log; redaction rules for log lines.
//! - [`logging`]: tracing set-up with redaction on every line.
//! - [`nats`]: token and job lifecycle publishing to NATS, the log's copy in JetStream.
//! - [`cache`]: the response cache (answers of deterministic requests, kept in the data
//!   dir); the prompt-prefix KV cache is the model threads' own.
//! - [`metrics`]: Prometheus metric families, the process-wide recorder and the helpers
//!   that record; served by `GET /metrics`.
#![deny(unsafe_code)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod inference;
pub mod logging;
pub mod metrics;
pub mod nats;
pub mod paging;
pub mod queue;
pub mod ratelimit;
pub mod server;
pub mod stream;
