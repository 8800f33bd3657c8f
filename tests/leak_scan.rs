//! `ops/leak_scan.py`, the scan `ops/test.sh` runs over the whole test run, fails on a
//! planted leak of each kind and passes a clean run.

use std::path::Path;
use std::process::Command;

fn scan(dir: &Path) -> (bool, String) {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{root}/ops/leak_scan.py"))
        .arg(dir)
        .output()
        .expect("python3 runs the scan");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success(), text)
}

fn run_with(artifact: &str, extra_secrets: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    std::fs::create_dir_all(dir.path().join("artifacts")).unwrap();
    std::fs::write(
        dir.path().join("secrets/1.tsv"),
        format!(
            "password\tcorrect-horse-battery-staple\njwt\teyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJlLXBhcnQ\n{extra_secrets}"
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("artifacts/store-1-0.bin"), artifact).unwrap();
    std::fs::write(
        dir.path().join("artifacts/inprocess-log-1-1.log"),
        "INFO request done status=200\n",
    )
    .unwrap();
    scan(dir.path())
}

#[test]
fn a_clean_run_passes_and_every_kind_of_leak_fails() {
    let (ok, out) = run_with(r#"{"type":"auth.login_succeeded","user":"u1"}"#, "");
    assert!(ok, "{out}");
    assert!(out.contains("no secret found"), "{out}");

    let leaks = [
        (
            "a password",
            r#"{"password":"correct-horse-battery-staple"}"#,
            "",
        ),
        (
            "a registered JWT",
            "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJlLXBhcnQ here",
            "",
        ),
        (
            "an API key",
            "key=inf_Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVbNmQwErTyUiOpAsDf",
            "api_key\tinf_Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVbNmQwErTyUiOpAsDf\n",
        ),
        (
            "an email",
            "mail to carol@example.org",
            "email\tcarol@example.org\n",
        ),
    ];
    for (what, artifact, extra) in leaks {
        let (ok, out) = run_with(artifact, extra);
        assert!(!ok, "{what} was not caught: {out}");
        assert!(out.contains("FAILED"), "{out}");
        assert!(
            !out.contains("correct-horse-battery-staple") && !out.contains("carol@example.org"),
            "the scan prints secrets masked: {out}"
        );
    }
}

#[test]
fn anything_shaped_like_a_credential_in_a_log_fails_even_unregistered() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    std::fs::create_dir_all(dir.path().join("artifacts")).unwrap();
    std::fs::write(
        dir.path().join("secrets/1.tsv"),
        "password\tsome-password-123\njwt\teyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MiJ9.b3RoZXItc2lnbmF0dXJl\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("artifacts/spawned-log-1-0.log"),
        "WARN bad auth header=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MyJ9.dW5yZWdpc3RlcmVk\n",
    )
    .unwrap();
    let (ok, out) = scan(dir.path());
    assert!(!ok, "{out}");
    // A run that registered nothing is a broken harness, not a clean run.
    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(empty.path().join("artifacts")).unwrap();
    std::fs::write(empty.path().join("artifacts/store-1-0.bin"), "{}").unwrap();
    let (ok, out) = scan(empty.path());
    assert!(!ok && out.contains("no secrets were registered"), "{out}");
}
