//! `inferno audit verify|export|replay`: work on a stopped server's data dir.

use std::io::{IsTerminal, Write};

use clap::Subcommand;

use super::ConfigArgs;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the whole hash chain; exit 1 and name the first bad seq if it breaks.
    Verify {
        #[command(flatten)]
        common: ConfigArgs,
    },
    /// Write envelopes as NDJSON to stdout (oldest first).
    Export {
        #[command(flatten)]
        common: ConfigArgs,
        /// Only events with seq greater than this.
        #[arg(long)]
        after: Option<u64>,
        /// Only events of this type (repeatable), e.g. auth.login_failed.
        #[arg(long = "type")]
        types: Vec<String>,
    },
    /// Rebuild every projection (users, keys, models, config, jobs) from the log and swap
    /// them in.
    Replay {
        #[command(flatten)]
        common: ConfigArgs,
    },
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    let progress = std::io::stderr().is_terminal();
    match cmd {
        AuditCommand::Verify { common } => {
            let cfg = common.load()?;
            let report = crate::events::admin::verify_dir(&cfg.storage.data_dir, progress)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.ok {
                anyhow::bail!(
                    "the event chain is broken at seq {} ({})",
                    report.first_bad_seq.unwrap_or_default(),
                    report.first_bad_reason.as_deref().unwrap_or("unknown")
                );
            }
            Ok(())
        }
        AuditCommand::Export {
            common,
            after,
            types,
        } => {
            let cfg = common.load()?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let n = crate::events::admin::export(
                &cfg.storage.data_dir,
                after.unwrap_or(0),
                &types,
                &mut out,
            )?;
            out.flush()?;
            eprintln!("exported {n} events");
            Ok(())
        }
        AuditCommand::Replay { common } => {
            let cfg = common.load()?;
            let report = crate::events::admin::replay(&cfg.storage.data_dir, progress)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}
