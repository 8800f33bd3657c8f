//! `inferno audit verify|export|replay`: work on a stopped server's data dir; the
//! auditors' transparency commands are in `transparency.rs`.

use std::io::{IsTerminal, Write};

use clap::Subcommand;

use super::transparency::{self, Remote};
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
    /// Print the latest signed checkpoint (a C2SP signed note) of a stopped server's data
    /// dir, or of a server with --url; one of the current head is signed first when
    /// events came after the last.
    Checkpoint {
        #[command(flatten)]
        common: ConfigArgs,
        #[command(flatten)]
        remote: Remote,
    },
    /// Check an export (NDJSON from seq 1) against a signed checkpoint with nothing else:
    /// every hash, link and leaf, the root, the signature, and every checkpoint the export
    /// records. Exit 1 naming the first bad seq.
    VerifyExport {
        /// The export (`inferno audit export` or GET /api/v1/audit/export).
        file: std::path::PathBuf,
        /// A signed checkpoint kept by the auditor.
        #[arg(long)]
        checkpoint: std::path::PathBuf,
        /// The note verifier key (GET /api/v1/audit/public-key), kept by the auditor.
        #[arg(long)]
        public_key: std::path::PathBuf,
    },
    /// Check that a server's log still extends a checkpoint kept earlier (--old), up to
    /// --new or the server's current checkpoint. Exit 1 when its history was rewritten.
    VerifyConsistency {
        #[arg(long)]
        old: std::path::PathBuf,
        #[arg(long)]
        new: Option<std::path::PathBuf>,
        #[arg(long)]
        public_key: std::path::PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Users, API keys and models as they were after event <seq> or at an RFC 3339 time,
    /// as JSON: from a stopped server's data dir, an export (--export) or a server (--url).
    State {
        #[command(flatten)]
        common: ConfigArgs,
        /// An event seq or an RFC 3339 time.
        #[arg(long)]
        at: String,
        #[arg(long)]
        export: Option<std::path::PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Generate a checkpoint signing key for `[audit] signing_key` (keep it outside the
    /// data dir); prints the verifier key to give auditors.
    Keygen {
        /// The key's name, which becomes the checkpoints' origin, e.g. example.com/inferno.
        #[arg(long)]
        name: String,
        /// Where to write the private key (mode 0600; never overwritten).
        #[arg(long)]
        out: std::path::PathBuf,
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
                progress,
            )?;
            out.flush()?;
            eprintln!("exported {n} events");
            Ok(())
        }
        AuditCommand::Checkpoint { common, remote } => transparency::checkpoint(&common, &remote),
        AuditCommand::VerifyExport {
            file,
            checkpoint,
            public_key,
        } => transparency::verify_export(&file, &checkpoint, &public_key),
        AuditCommand::VerifyConsistency {
            old,
            new,
            public_key,
            remote,
        } => transparency::verify_consistency(&old, new.as_deref(), &public_key, &remote),
        AuditCommand::State {
            common,
            at,
            export,
            remote,
        } => transparency::state(&common, &at, export.as_deref(), &remote),
        AuditCommand::Keygen { name, out } => transparency::keygen(&name, &out),
        AuditCommand::Replay { common } => {
            let cfg = common.load()?;
            let report = crate::events::admin::replay(&cfg.storage.data_dir, progress)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}
