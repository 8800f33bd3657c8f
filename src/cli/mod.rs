//! The command line: `serve`, `openapi`, and the offline administration commands.
//! Each command lives in its own file; this file holds the command enum.

mod audit;
mod queue;
mod serve;
mod transparency;
mod user;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Inferno: a self-hosted LLM inference server with a secured API and a tamper-evident
/// event log.
#[derive(Debug, Parser)]
#[command(name = "inferno", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API until SIGINT or SIGTERM.
    Serve(serve::ServeArgs),
    /// Print the OpenAPI specification as JSON.
    Openapi,
    /// Verify, export or replay the event log (server stopped); auditors' checkpoints,
    /// proofs and point-in-time state.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Manage users (server stopped).
    #[command(subcommand)]
    User(user::UserCommand),
    /// Inspect and steer a running server's job queue (API key in INFERNO_API_KEY).
    Queue(queue::QueueArgs),
}

/// Options every command that touches the data dir accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file (defaults < file < INFERNO_* environment variables).
    #[arg(long, short = 'c', env = "INFERNO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (event log, projections); overrides `[storage] data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl ConfigArgs {
    pub fn load(&self) -> anyhow::Result<crate::config::Config> {
        let mut cfg = crate::config::Config::load(self.config.as_deref())?;
        if let Some(dir) = &self.data_dir {
            cfg.storage.data_dir = dir.clone();
            cfg.sources
                .insert("storage.data_dir".into(), crate::config::Source::Cli);
        }
        Ok(cfg)
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Openapi => {
            println!("{}", crate::api::spec_json());
            Ok(())
        }
        Command::Audit(cmd) => audit::run(cmd),
        Command::User(cmd) => user::run(cmd),
        Command::Queue(args) => queue::run(args),
    }
}
