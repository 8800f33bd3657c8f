//! The secret-leak scan's side of the harness (`ops/leak_scan.py` does the scanning).
//!
//! When `INFERNO_LEAK_DIR` is set (`ops/test.sh` sets it for the whole run), the harness
//! records every secret it makes or learns (passwords, JWTs, API keys, emails) under
//! `secrets/`, and everything the servers produced under `artifacts/`: the log of every
//! in-process server (through the server's own redacting writer, at debug level), the
//! stderr log of every spawned `inferno serve`, every event of every data dir (as
//! `inferno audit export` writes them), and the stored jobs, results, stream chunks and
//! cached responses. Unset, all of this does nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use inferno::events::EventStore;

/// The side keyspaces that hold what requests and jobs produced.
const SIDE_STORES: [&str; 4] = [
    "job_payloads",
    "job_results",
    "job_tokens",
    "response_cache",
];

fn dir() -> Option<PathBuf> {
    std::env::var_os("INFERNO_LEAK_DIR").map(PathBuf::from)
}

/// A file name unique in the whole run.
fn unique(prefix: &str, ext: &str) -> Option<PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = dir()?.join("artifacts");
    std::fs::create_dir_all(&dir).ok()?;
    let n = N.fetch_add(1, Ordering::Relaxed);
    Some(dir.join(format!("{prefix}-{}-{n}.{ext}", std::process::id())))
}

/// Records a secret the tests used (`kind`: password, jwt, api_key, email).
pub fn secret(kind: &str, value: &str) {
    let Some(dir) = dir() else { return };
    if value.is_empty() {
        return;
    }
    let dir = dir.join("secrets");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{}.tsv", std::process::id()));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        // One write per line: tests write from several threads at once.
        let _ = f.write_all(format!("{kind}\t{value}\n").as_bytes());
    }
}

/// Installs the log writer of in-process servers: the server's redacting writer, into one
/// file per test process, at debug level.
pub fn install_log() {
    let Some(path) = unique("inprocess-log", "log") else {
        return;
    };
    let Ok(file) = std::fs::File::create(path) else {
        return;
    };
    let file = std::sync::Mutex::new(file);
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug,h2=info,hyper=info,rustls=info,fjall=info,lsm_tree=info")
        .with_ansi(false)
        .with_writer(inferno::logging::Redacting(file))
        .try_init();
}

/// Writes every event and every side-store record of `store`.
pub fn dump_store(store: &EventStore) {
    let Some(path) = unique("store", "bin") else {
        return;
    };
    let Ok(mut out) = std::fs::File::create(path) else {
        return;
    };
    let mut after = 0;
    while let Ok(batch) = store.export_after(after, 10_000) {
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for e in &batch {
            let _ = out.write_all(&e.line);
            let _ = out.write_all(b"\n");
        }
    }
    for ks in SIDE_STORES {
        let mut from = Vec::new();
        while let Ok(rows) = store.side_scan(ks, b"", &from, 10_000) {
            let Some((last, _)) = rows.last() else { break };
            from = last.clone();
            from.push(0);
            for (k, v) in &rows {
                let _ = out.write_all(k);
                let _ = out.write_all(b"\t");
                let _ = out.write_all(v);
                let _ = out.write_all(b"\n");
            }
        }
    }
}

/// After a spawned server exited: its stderr log, and the events of a copy of its data dir
/// (the copy, so that the next server on the same dir still recovers what this one left).
pub fn dump_spawned(stderr_log: &Path, data_dir: &Path) {
    if let Some(path) = unique("spawned-log", "log") {
        let _ = std::fs::copy(stderr_log, path);
    }
    let Some(path) = unique("spawned-events", "ndjson") else {
        return;
    };
    if std::fs::read_dir(data_dir).is_err() {
        return;
    }
    let Ok(copy) = tempfile::tempdir() else {
        return;
    };
    if copy_dir(data_dir, copy.path()).is_err() {
        return;
    }
    if let Ok(out) = std::process::Command::new(super::inferno_bin())
        .args(["audit", "export", "--data-dir"])
        .arg(copy.path())
        .output()
    {
        let _ = std::fs::write(path, out.stdout);
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        // Model files are large and hold nothing the server wrote.
        if kind.is_symlink() || entry.file_name() == "models" {
            continue;
        }
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
