//! The redaction layer: whatever reaches a log line, secrets and emails do not.

use std::io::Write;
use std::sync::{Arc, Mutex};

use inferno::logging::Redacting;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = CaptureWriter;
    fn make_writer(&'a self) -> CaptureWriter {
        CaptureWriter(self.0.clone())
    }
}

const KEY: &str = "inf_Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVbNmQwErTyUiOpAsDf";
const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJlLXBhcnQ";
const PASSWORD: &str = "hunter2-hunter2";
const EMAIL: &str = "alice.smith@example.org";

fn emit(json: bool) -> String {
    let capture = Capture::default();
    let builder = tracing_subscriber::fmt()
        .with_writer(Redacting(capture.clone()))
        .with_ansi(false);
    let dispatch: tracing::Dispatch = if json {
        builder.json().into()
    } else {
        builder.into()
    };
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info!(key = KEY, "using key {KEY}");
        tracing::warn!("Authorization: Bearer {JWT}");
        tracing::error!(body = %format!(r#"{{"username":"alice","password":"{PASSWORD}"}}"#), "bad body");
        tracing::info!("password={PASSWORD} for {EMAIL}");
        tracing::info!(user = EMAIL, "mail");
    });
    let out = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(out.lines().count() >= 5, "all events were written: {out}");
    out
}

#[test]
fn text_lines_are_redacted() {
    let out = emit(false);
    for secret in [KEY, JWT, PASSWORD, EMAIL] {
        assert!(!out.contains(secret), "{secret} leaked into: {out}");
    }
    assert!(out.contains("[REDACTED"), "{out}");
    assert!(out.contains("alice"), "non-secret text is kept: {out}");
}

#[test]
fn json_lines_are_redacted() {
    let out = emit(true);
    for secret in [KEY, JWT, PASSWORD, EMAIL] {
        assert!(!out.contains(secret), "{secret} leaked into: {out}");
    }
    for line in out.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("still valid JSON");
    }
}
