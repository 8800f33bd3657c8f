//! The auditors' commands: `inferno audit checkpoint | verify-export | verify-consistency |
//! state | keygen`. They work offline (a stopped server's data dir, or an export file and a
//! checkpoint) or against a server's API (`--url`, key in `INFERNO_API_KEY`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use super::ConfigArgs;
use crate::audit::checkpoint::{verify_checkpoint, write_new_key, CheckpointSigner};
use crate::audit::checkpointer::Checkpointer;
use crate::audit::state::{state_at, At};
use crate::events::admin::Progress;
use crate::events::merkle::{check_consistency, Hash};
use crate::events::{default_projections, Envelope, EventStore, StoreOptions};

/// A server to ask, for `--url` commands.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// Base URL of a running server; the API key (with `view_audit_logs`) comes from
    /// INFERNO_API_KEY.
    #[arg(long)]
    pub url: Option<String>,
    /// PEM file of the CA that signed the server's certificate (for a private CA).
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
}

impl Remote {
    fn client(&self) -> anyhow::Result<Option<(reqwest::blocking::Client, String, String)>> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let key = std::env::var("INFERNO_API_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty())
            .context("set INFERNO_API_KEY to an API key with the view_audit_logs permission")?;
        let mut builder = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60));
        if let Some(path) = &self.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading CA certificate {}", path.display()))?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(Some((
            builder.build()?,
            url.trim_end_matches('/').to_string(),
            key,
        )))
    }
}

fn get(client: &(reqwest::blocking::Client, String, String), path: &str) -> anyhow::Result<String> {
    let (http, base, key) = client;
    let resp = http
        .get(format!("{base}{path}"))
        .header("x-api-key", key)
        .send()
        .with_context(|| format!("connecting to {base}"))?;
    let status = resp.status();
    let text = resp.text()?;
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        bail!(
            "{} {}: {}",
            status.as_u16(),
            v["error"]["code"].as_str().unwrap_or(""),
            v["error"]["message"].as_str().unwrap_or("no error body")
        );
    }
    Ok(text)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `inferno audit checkpoint`: the latest signed checkpoint, of a server or of a stopped
/// server's data dir (signing one of the head first when events came after the last).
pub fn checkpoint(common: &ConfigArgs, remote: &Remote) -> anyhow::Result<()> {
    if let Some(client) = remote.client()? {
        print!("{}", get(&client, "/api/v1/audit/checkpoint")?);
        return Ok(());
    }
    let cfg = common.load()?;
    runtime()?.block_on(async {
        let store = EventStore::open(
            &cfg.storage.data_dir,
            default_projections(),
            StoreOptions::default(),
        )?;
        let signer = CheckpointSigner::load(
            cfg.audit.signing_key.as_deref(),
            &cfg.storage.data_dir,
            cfg.audit.origin.as_deref(),
        )?;
        let cps = Checkpointer::open(
            store.clone(),
            Arc::new(signer),
            cfg.audit.checkpoint_every,
            Duration::from_secs(cfg.audit.checkpoint_secs),
        )?;
        let result = cps.current().await;
        store.shutdown().await;
        print!("{}", result?.note);
        Ok(())
    })
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// `inferno audit verify-export`.
pub fn verify_export(file: &Path, checkpoint: &Path, public_key: &Path) -> anyhow::Result<()> {
    let note = read(checkpoint, "the checkpoint")?;
    let key = read(public_key, "the public key")?;
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let lines = data.iter().filter(|b| **b == b'\n').count() as u64;
    let mut p = Progress::new(std::io::stderr().is_terminal(), "verify-export", lines);
    let report =
        crate::audit::verify_export::verify_export(&data, &note, key.trim(), |n| p.set(n, lines));
    p.finish(lines);
    let report = report?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// `inferno audit verify-consistency`: both checkpoints must verify with the key, and the
/// server's consistency proof must show the newer tree extends the older.
pub fn verify_consistency(
    old: &Path,
    new: Option<&Path>,
    public_key: &Path,
    remote: &Remote,
) -> anyhow::Result<()> {
    let key = read(public_key, "the public key")?;
    let client = remote
        .client()?
        .context("--url is required: the proof comes from the server")?;
    let old_cp = verify_checkpoint(&read(old, "the old checkpoint")?, key.trim())
        .map_err(|e| anyhow::anyhow!("the old checkpoint: {e}"))?;
    let new_note = match new {
        Some(p) => read(p, "the new checkpoint")?,
        None => get(&client, "/api/v1/audit/checkpoint")?,
    };
    let new_cp = verify_checkpoint(&new_note, key.trim())
        .map_err(|e| anyhow::anyhow!("the new checkpoint: {e}"))?;
    if old_cp.origin != new_cp.origin {
        bail!(
            "the checkpoints are of different logs ({} and {})",
            old_cp.origin,
            new_cp.origin
        );
    }
    if old_cp.size > new_cp.size {
        bail!(
            "the old checkpoint ({}) is larger than the new one ({})",
            old_cp.size,
            new_cp.size
        );
    }
    let proof: serde_json::Value = serde_json::from_str(&get(
        &client,
        &format!(
            "/api/v1/audit/proof/consistency?from={}&to={}",
            old_cp.size, new_cp.size
        ),
    )?)?;
    let path = proof["path"]
        .as_array()
        .context("the proof has no path")?
        .iter()
        .map(|h| {
            h.as_str()
                .and_then(|s| hex::decode(s).ok())
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .map(Hash)
                .context("a proof hash is not 32 bytes of hex")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The roots come from the signed checkpoints, never from the server's answer.
    if !check_consistency(&path, new_cp.size, new_cp.root, old_cp.size, old_cp.root) {
        bail!(
            "the log of size {} does not extend the checkpoint of size {}: its history was \
             rewritten",
            new_cp.size,
            old_cp.size
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "ok": true,
            "origin": new_cp.origin,
            "old_size": old_cp.size,
            "new_size": new_cp.size,
            "new_root_hash": hex::encode(new_cp.root.0),
        })
    );
    Ok(())
}

/// `inferno audit state --at`: over a stopped server's data dir, an export file, or a
/// server (`--url`).
pub fn state(
    common: &ConfigArgs,
    at: &str,
    export: Option<&Path>,
    remote: &Remote,
) -> anyhow::Result<()> {
    let at_parsed: At = at.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    if let Some(client) = remote.client()? {
        let v: serde_json::Value = serde_json::from_str(&get(
            &client,
            &format!("/api/v1/audit/state?at={}", urlencode(at)),
        )?)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let progress = std::io::stderr().is_terminal();
    let state = match export {
        Some(file) => {
            let data =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let total = data.iter().filter(|b| **b == b'\n').count() as u64;
            let mut p = Progress::new(progress, "state", total);
            let lines = data
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .enumerate()
                .map(|(i, l)| Envelope::from_stored_bytes(i as u64 + 1, l));
            let s = state_at(lines, at_parsed, |n| p.set(n, total))?;
            p.finish(s.seq);
            s
        }
        None => {
            let cfg = common.load()?;
            let store = EventStore::open(
                &cfg.storage.data_dir,
                default_projections(),
                StoreOptions {
                    allow_broken_tail: true,
                    ..StoreOptions::default()
                },
            )?;
            let total = store.head().0;
            let mut p = Progress::new(progress, "state", total);
            let s = state_at(store.range(0), at_parsed, |n| p.set(n, total));
            p.finish(s.as_ref().map_or(0, |s| s.seq));
            runtime()?.block_on(store.shutdown());
            s?
        }
    };
    println!("{}", serde_json::to_string_pretty(&state)?);
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `inferno audit keygen`: a checkpoint signing key for `[audit] signing_key`.
pub fn keygen(name: &str, out: &Path) -> anyhow::Result<()> {
    let vkey = write_new_key(out, name)?;
    eprintln!("wrote the private key to {} (mode 0600)", out.display());
    println!("{vkey}");
    Ok(())
}
